"""Qwen3 audio tower checkpoints (Qwen3-ASR, Qwen3-Omni): the tower and its output projection out of the full model's
Hugging Face folder, read into one canonical form (``audio_tower.*``, the projection as ``audio_tower.proj1`` and
``proj2``).

Three layouts hold the same tensors:

- the released folders (``Qwen/Qwen3-ASR-1.7B``, ``Qwen/Qwen3-Omni-30B-A3B-Instruct``): ``config.json`` with
  ``thinker_config.audio_config``, tensors ``thinker.audio_tower.*`` (the projection inside the tower);
- transformers' conversion of Qwen3-ASR (``Qwen3ASRForConditionalGeneration.save_pretrained``): a top-level
  ``audio_config``, tensors ``audio_tower.*`` (or ``model.audio_tower.*``) and the projection as
  ``multi_modal_projector.linear_1`` / ``linear_2``;
- a tower saved alone (``qwen3_asr_encoder``, ``qwen3_omni_moe_audio_encoder``): its tensors without a prefix
  (transformers' Qwen3-ASR tower has no projection).

Only the tower's (and projection's) tensors are read, and from the hub only the shards holding them: the language
model (and Omni's talker and code2wav) never are. ``sha256`` is the digest of the tensors read, in name order.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import folder_or_hub, read_config
from engine.models.common.prefixed import download_prefixed, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.speechllm.qwen3_config import ASR, HUB_IDS, MODEL_TYPES, TOWER_TYPES, Qwen3AudioConfig, from_hf
from engine.models.speechllm.tower_checkpoints import TowerCheckpoint, cast, digest, names_tower

TOWER = "audio_tower."
PROJECTOR = {"multi_modal_projector.linear_1.": "proj1.", "multi_modal_projector.linear_2.": "proj2."}
HUB_NAMES = r"qwen3-asr|qwen3-omni|qwen2\.5-omni"  # hub repositories of these towers, by name (lower case)
# Qwen2.5-Omni's tower holds the LLM's audio begin/end embeddings, which its thinker reads, not the tower
_UNREAD = re.compile(r"audio_tower\.audio_bos_eos_token\.weight")
PREFIXES = ("thinker.audio_tower.", TOWER, "model." + TOWER, *PROJECTOR, *("model." + p for p in PROJECTOR))


@dataclasses.dataclass(frozen=True)
class Qwen3Checkpoint(TowerCheckpoint):
    config: Qwen3AudioConfig


def state_shapes(c: Qwen3AudioConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the tower needs, by canonical name, with its PyTorch shape."""
    t, w, ch = TOWER, c.width, c.conv_channels
    if ch:  # Qwen3's Conv2d downsampler
        shapes = {f"{t}conv2d1.weight": (ch, 1, 3, 3), f"{t}conv2d1.bias": (ch,)}
        for i in (2, 3):
            shapes |= {f"{t}conv2d{i}.weight": (ch, ch, 3, 3), f"{t}conv2d{i}.bias": (ch,)}
        shapes[f"{t}conv_out.weight"] = (w, ch * c.conv_mels)
    else:  # Qwen2.5-Omni's Conv1d stem
        shapes = {f"{t}conv1.weight": (w, c.n_mels, 3), f"{t}conv1.bias": (w,), f"{t}conv2.weight": (w, w, 3),
                  f"{t}conv2.bias": (w,)}  # fmt: skip
    shapes |= {f"{t}ln_post.weight": (w,), f"{t}ln_post.bias": (w,)}
    for i in range(c.layers):
        p = f"{t}layers.{i}."
        for proj in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (w, w)
            if proj != "k" or c.key_bias:
                shapes[f"{p}self_attn.{proj}_proj.bias"] = (w,)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (w,)
        shapes |= {f"{p}fc1.weight": (c.ffn, w), f"{p}fc1.bias": (c.ffn,), f"{p}fc2.weight": (w, c.ffn),
                   f"{p}fc2.bias": (w,)}  # fmt: skip
    if c.has_projector and c.pooled:  # Qwen2.5-Omni: one linear
        shapes |= {f"{t}proj.weight": (c.output_dim, w), f"{t}proj.bias": (c.output_dim,)}
    elif c.has_projector:
        shapes |= {f"{t}proj1.weight": (w, w), f"{t}proj1.bias": (w,), f"{t}proj2.weight": (c.output_dim, w),
                   f"{t}proj2.bias": (c.output_dim,)}  # fmt: skip
    return shapes


def is_qwen3(source) -> bool:
    """Whether a speech-LLM ``--model`` is a Qwen3 audio model: a folder whose ``config.json`` names one of
    ``MODEL_TYPES``, or a hub id (not a local path) whose name says Qwen3-ASR or Qwen3-Omni."""
    return names_tower(source, MODEL_TYPES, HUB_NAMES)


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub repo's config and the shards holding the tower only."""
    name = repo_id.lower()
    kind = "qwen2.5-omni" if "qwen2.5-omni" in name else "qwen3-omni" if "omni" in name else "qwen3-asr"
    local = f"load('/path/to/{repo_id.split('/')[1]}') with config.json and its safetensors; {random_model_hint(kind)}"
    return download_prefixed(repo_id, revision, lambda config, where: PREFIXES, local)


def load_checkpoint(source: str | os.PathLike, *, dtype=None) -> Qwen3Checkpoint:
    """Read a Qwen3-ASR or Qwen3-Omni folder (or a tower's own), or a hub id ``org/name[@revision]``."""
    path, name = folder_or_hub(source, _download, HUB_IDS[ASR][1])
    raw = read_config(path)
    config = from_hf(raw)
    alone = raw.get("model_type") in TOWER_TYPES
    _, stored = read_prefixed(path, ("",) if alone else PREFIXES)
    sd = _renamed(stored, alone)
    what = f"a {config.kind} audio tower of {config.layers} layers"
    check_layer_claim(sd, f"{TOWER}layers.", config.layers, "layer count", str(path))
    sd = checked_state(sd, state_shapes(config), source=str(path), what=what, unread=_UNREAD)
    sd = sd if dtype is None else cast(sd, dtype)
    return Qwen3Checkpoint(name=name, config=config, state_dict=sd, sha256=digest(sd), path=path)


def _renamed(stored: Mapping[str, np.ndarray], alone: bool) -> dict:
    """Canonical names: ``audio_tower.*``, the projection as ``audio_tower.proj1`` / ``proj2``."""
    if alone:
        return {TOWER + k: v for k, v in stored.items()}
    out = {}
    for k, v in stored.items():
        k = k.removeprefix("thinker.").removeprefix("model.")
        for theirs, ours in PROJECTOR.items():
            if k.startswith(theirs):
                k = TOWER + ours + k[len(theirs) :]
        if k in out:
            raise CheckpointError(f"the checkpoint holds {k!r} twice (under two prefixes); keep one layout")
        out[k] = v
    return out
