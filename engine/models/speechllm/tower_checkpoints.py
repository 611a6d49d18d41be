"""What every speech-LLM tower's checkpoint module (``checkpoints``, ``qwen3_checkpoints``, ``usm_checkpoints``,
``realtime_checkpoints``) reads the same way: the checkpoint's record (``TowerCheckpoint``), the folder's
``config.json`` and ``preprocessor_config.json``, whether a ``--model`` names the tower, the hub download with the
feature extractor's settings, and ``sha256``: the digest of the tensors read (names, dtypes and bytes, in name order),
not of whole files, since the shards also hold language-model weights that do not change what is stored."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import read_json
from engine.models.common.prefixed import download_prefixed


@dataclasses.dataclass(frozen=True)
class TowerCheckpoint:
    name: str  # the hub id as given, or the folder's name
    config: Any  # the tower's config (each tower's module narrows it)
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # canonical names
    sha256: str
    path: pathlib.Path


def audio_value(d: dict, name: str, default=None):
    """``d[name]`` (a config.json's audio config), else ``default``; refused when both are None."""
    if d.get(name) is not None:
        return d[name]
    if default is not None:
        return default
    raise CheckpointError(f"config.json's audio config lacks {name!r}; restore the model's config.json")


def read_preprocessor(path: pathlib.Path) -> dict | None:
    """``path``'s ``preprocessor_config.json``, or None if the folder has none."""
    pre = path / "preprocessor_config.json"
    return read_json(pre) if pre.is_file() else None


def names_tower(source, model_types, hub_names: str) -> bool:
    """Whether a speech-LLM ``--model`` is one of a tower's models: a folder whose ``config.json`` names one of
    ``model_types``, or a hub id (not a local path) whose lower-cased name matches the regex ``hub_names``."""
    path = pathlib.Path(str(source)).expanduser()
    if path.exists():
        config = path / "config.json"
        return config.is_file() and read_json(config).get("model_type") in model_types
    return bool(re.search(hub_names, str(source).lower()))


def download_with_preprocessor(repo_id: str, revision: str | None, prefixes, local: str) -> pathlib.Path:
    """The hub repo's config, its feature extractor's settings and the shards holding ``prefixes``; ``local``: how to
    load a folder instead, for the error when the hub cannot be reached."""
    folder = download_prefixed(repo_id, revision, lambda config, where: prefixes, local)
    try:
        import huggingface_hub  # lazy: only hub ids need it

        huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=["preprocessor_config.json"])
    except Exception:  # noqa: BLE001 - the extractor's settings default to transformers' for the model
        pass
    return folder


def cast(sd: Mapping[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """``sd`` with every tensor in ``dtype`` (those already in it kept as they are)."""
    return {k: v if v.dtype == np.dtype(dtype) else v.astype(dtype) for k, v in sd.items()}


def digest(sd: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode() + b"\0" + str(sd[k].dtype).encode() + b"\0")
        h.update(np.ascontiguousarray(sd[k]).tobytes())
    return h.hexdigest()
