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
import hashlib
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import folder_or_hub, read_json
from engine.models.common.prefixed import download_prefixed, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.speechllm.realtime_config import HUB_IDS, HUB_NAMES, MODEL_TYPES, TOWER_TYPE, RealtimeConfig, from_hf

TOWER, PROJECTOR = "audio_tower.", "multi_modal_projector."
PREFIXES = (TOWER, PROJECTOR, "model." + TOWER, "model." + PROJECTOR)
RANDOM_KIND = "voxtral-realtime"


@dataclasses.dataclass(frozen=True)
class RealtimeCheckpoint:
    name: str  # the hub id as given, or the folder's name
    config: RealtimeConfig
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # audio_tower.* names
    sha256: str
    path: pathlib.Path
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
    path = pathlib.Path(str(source)).expanduser()
    if path.exists():
        config = path / "config.json"
        return config.is_file() and read_json(config).get("model_type") in MODEL_TYPES
    return bool(re.search(HUB_NAMES, str(source).lower()))


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub repo's config, its feature extractor's settings and the shards holding the tower and projector."""
    local = (f"load('/path/to/{repo_id.split('/')[1]}') with config.json and its safetensors; "
             f"{random_model_hint(RANDOM_KIND)}")  # fmt: skip
    folder = download_prefixed(repo_id, revision, lambda config, where: PREFIXES, local)
    try:
        import huggingface_hub  # lazy: only hub ids need it

        huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=["preprocessor_config.json"])
    except Exception:  # noqa: BLE001 - the extractor's settings default to transformers' for the model
        pass
    return folder


def load_checkpoint(source: str | os.PathLike) -> RealtimeCheckpoint:
    """Read a Voxtral Realtime folder (or its tower's own), or a hub id ``org/name[@revision]``."""
    path, name = folder_or_hub(source, _download, HUB_IDS[0])
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a folder with config.json; pass the model's folder")
    raw = read_json(path / "config.json")
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
    pre = path / "preprocessor_config.json"
    return RealtimeCheckpoint(name, config, sd, _digest(sd), path, read_json(pre) if pre.is_file() else None)


def _digest(sd: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode() + b"\0" + str(sd[k].dtype).encode() + b"\0")
        h.update(np.ascontiguousarray(sd[k]).tobytes())
    return h.hexdigest()
