"""Speech-LLM checkpoints: the audio tower and the projector out of the full model's Hugging Face folder.

A full model (``Qwen2AudioForConditionalGeneration``, ``VoxtralForConditionalGeneration``,
``AudioFlamingo3ForConditionalGeneration``) holds ``audio_tower.*``, ``multi_modal_projector.*`` and the language
model. Only the first two are read (``engine.models.common.prefixed``): of a sharded checkpoint only the shards
holding them, and from the hub only those are downloaded, so the 7B language model is never read. Hub files name
them at the top level; a folder transformers 5 saved may put them under ``model.`` (its conversion mapping), which
is accepted too. An audio tower saved alone (``*_encoder`` config) has its tensors without a prefix.

``sha256`` is the digest of the tensors read (names and bytes, in name order), not of whole files: the shards also
hold language-model weights that do not change what is stored.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.models.common.io import folder_or_hub, read_config
from engine.models.common.prefixed import download_prefixed, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.speechllm.config import HUB_IDS, TOWERS, SpeechLLMConfig, from_hf
from engine.models.speechllm.tower_checkpoints import TowerCheckpoint, cast, digest

TOWER, PROJECTOR = "audio_tower.", "multi_modal_projector."
PREFIXES = (TOWER, PROJECTOR, "model." + TOWER, "model." + PROJECTOR)
_UNUSED = re.compile(r"audio_tower\.embed_positions\._float_tensor")  # none today; a place for known extras


@dataclasses.dataclass(frozen=True)
class Checkpoint(TowerCheckpoint):
    config: SpeechLLMConfig


def state_shapes(c: SpeechLLMConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the tower (and projector) needs, by name, with its PyTorch shape."""
    t, w = TOWER, c.width
    shapes = {
        f"{t}conv1.weight": (w, c.n_mels, 3), f"{t}conv1.bias": (w,),
        f"{t}conv2.weight": (w, w, 3), f"{t}conv2.bias": (w,),
        f"{t}embed_positions.weight": (c.n_ctx, w),
        f"{t}layer_norm.weight": (w,), f"{t}layer_norm.bias": (w,),
    }  # fmt: skip
    for i in range(c.layers):
        p = f"{t}layers.{i}."
        for proj in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (w, w)
            if proj != "k":
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (w,)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (w,)
        shapes |= {f"{p}fc1.weight": (c.ffn, w), f"{p}fc1.bias": (c.ffn,), f"{p}fc2.weight": (w, c.ffn),
                   f"{p}fc2.bias": (w,)}  # fmt: skip
    if c.has_projector:
        d = c.text_width
        pieces = [("linear", w)] if c.projector_act is None else [("linear_1", w * c.group), ("linear_2", d)]
        for name, fan_in in pieces:
            shapes[f"{PROJECTOR}{name}.weight"] = (d, fan_in)
            if c.projector_bias:
                shapes[f"{PROJECTOR}{name}.bias"] = (d,)
    return shapes


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub repo's config and the shards holding the tower and projector only."""
    name = repo_id.lower()
    kind = "voxtral" if "voxtral" in name else "audioflamingo3" if "flamingo" in name else "qwen2_audio"
    hint = random_model_hint({"qwen2_audio": "qwen2-audio", "audioflamingo3": "audio-flamingo3"}.get(kind, kind))
    folder = HUB_IDS[kind].split("/")[1]
    local = f"load('/path/to/{folder}') with config.json and the model's safetensors shards; {hint}"
    return download_prefixed(repo_id, revision, lambda config, where: PREFIXES, local)


def load_checkpoint(source: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Read a speech LLM's (or an audio tower's) folder, or a hub id ``org/name[@revision]``; ``dtype``: cast to it."""
    path, name = folder_or_hub(source, _download, "Qwen/Qwen2-Audio-7B-Instruct")
    raw = read_config(path, "pass the folder save_pretrained wrote")
    config = from_hf(raw)
    alone = raw.get("model_type") in TOWERS
    _, stored = read_prefixed(path, ("",) if alone else PREFIXES)
    sd = _check(_renamed(stored, alone), config, str(path))
    sd = sd if dtype is None else cast(sd, dtype)
    return Checkpoint(name=name, config=config, state_dict=sd, sha256=digest(sd), path=path)


def _renamed(stored: Mapping[str, np.ndarray], alone: bool) -> dict:
    if alone:
        return {TOWER + k: v for k, v in stored.items()}
    return {k.removeprefix("model."): v for k, v in stored.items()}


def _check(stored: Mapping[str, np.ndarray], config: SpeechLLMConfig, source: str) -> dict[str, np.ndarray]:
    what = f"a {config.kind} tower of {config.layers} layers"
    check_layer_claim(stored, f"{TOWER}layers.", config.layers, "layer count", source)
    return checked_state(stored, state_shapes(config), source=source, what=what, unread=_UNUSED)
