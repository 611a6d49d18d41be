"""Voxtral Realtime checkpoints: the audio tower and the projector out of the full model's Hugging Face folder.

``VoxtralRealtimeForConditionalGeneration.save_pretrained`` writes ``audio_tower.*`` and ``multi_modal_projector.*``
at the top level beside ``language_model.*`` (transformers maps them under ``model.`` when loading, and a folder may
hold them there: both are read); a tower saved alone (``voxtral_realtime_encoder``) has its tensors without a prefix.
Only the tower's and projector's tensors are read, and from the hub only the shards holding them: the 3B language
model never is. ``sha256`` is the digest of the tensors read, in name order. The hub repository also holds Mistral's
own format (``consolidated.safetensors``, ``params.json``): not read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from engine.errors import CheckpointError
from engine.models.common.io import folder_or_hub, read_config
from engine.models.common.prefixed import read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.speechllm.realtime_config import HUB_IDS, HUB_NAMES, MODEL_TYPES, TOWER_TYPE, RealtimeConfig, from_hf
from engine.models.speechllm.tower_checkpoints import (
    TowerCheckpoint,
    digest,
    download_with_preprocessor,
    names_tower,
    read_preprocessor,
)

TOWER, PROJECTOR = "audio_tower.", "multi_modal_projector."
PREFIXES = (TOWER, PROJECTOR, "model." + TOWER, "model." + PROJECTOR)
RANDOM_KIND = "voxtral-realtime"


@dataclasses.dataclass(frozen=True)
class RealtimeCheckpoint(TowerCheckpoint):
    config: RealtimeConfig
    preprocessor: dict | None  # preprocessor_config.json, if the folder has one


def state_shapes(c: RealtimeConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the tower (and projector) needs, by name, with its PyTorch shape."""
    t, w, a, f = TOWER, c.width, c.attention_width, c.ffn
    shapes = {f"{t}embedder.conv1.weight": (w, c.n_mels, 3), f"{t}embedder.conv1.bias": (w,),
              f"{t}embedder.conv2.weight": (w, w, 3), f"{t}embedder.conv2.bias": (w,),
              f"{t}norm.weight": (w,)}  # fmt: skip
    for i in range(c.layers):
        p = f"{t}layers.{i}."
        shapes |= {f"{p}self_attn.q_proj.weight": (a, w), f"{p}self_attn.q_proj.bias": (a,),
                   f"{p}self_attn.k_proj.weight": (a, w), f"{p}self_attn.v_proj.weight": (a, w),
                   f"{p}self_attn.v_proj.bias": (a,), f"{p}self_attn.o_proj.weight": (w, a),
                   f"{p}self_attn.o_proj.bias": (w,), f"{p}self_attn_layer_norm.weight": (w,),
                   f"{p}final_layer_norm.weight": (w,), f"{p}mlp.gate_proj.weight": (f, w),
                   f"{p}mlp.up_proj.weight": (f, w), f"{p}mlp.down_proj.weight": (w, f),
                   f"{p}mlp.down_proj.bias": (w,)}  # fmt: skip
    if c.has_projector:
        d = c.text_width
        shapes |= {f"{PROJECTOR}linear_1.weight": (d, w * c.group), f"{PROJECTOR}linear_2.weight": (d, d)}
    return shapes


def is_voxtral_realtime(source) -> bool:
    """Whether a speech-LLM ``--model`` is Voxtral Realtime: a folder whose ``config.json`` names one of
    ``MODEL_TYPES``, or a hub id (not a local path) whose name says Voxtral and Realtime."""
    return names_tower(source, MODEL_TYPES, HUB_NAMES)


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub repo's config, its feature extractor's settings and the shards holding the tower and projector."""
    local = (f"load('/path/to/{repo_id.split('/')[1]}') with config.json and its safetensors; "
             f"{random_model_hint(RANDOM_KIND)}")  # fmt: skip
    return download_with_preprocessor(repo_id, revision, PREFIXES, local)


def load_checkpoint(source: str | os.PathLike) -> RealtimeCheckpoint:
    """Read a Voxtral Realtime folder (or its tower's own), or a hub id ``org/name[@revision]``."""
    path, name = folder_or_hub(source, _download, HUB_IDS[0])
    raw = read_config(path)
    config = from_hf(raw)
    alone = raw.get("model_type") == TOWER_TYPE
    _, stored = read_prefixed(path, ("",) if alone else PREFIXES)
    sd = {}
    for k, v in stored.items():
        k = TOWER + k if alone else k.removeprefix("model.")
        if k in sd:
            raise CheckpointError(f"the checkpoint holds {k!r} twice (under two prefixes); keep one layout")
        sd[k] = v
    what = f"a Voxtral Realtime audio tower of {config.layers} layers"
    check_layer_claim(sd, f"{TOWER}layers.", config.layers, "audio layer count", str(path))
    sd = checked_state(sd, state_shapes(config), source=str(path), what=what)
    return RealtimeCheckpoint(name, config, sd, digest(sd), path, read_preprocessor(path))
