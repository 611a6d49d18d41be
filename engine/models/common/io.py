"""Readers every model family's checkpoint formats share: JSON, PyTorch pickles, tensors to NumPy, file hashes.

Every failure is a ``CheckpointError`` that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import re
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError

_HASH_CHUNK = 1 << 24  # bytes


def read_json(path: pathlib.Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"'{path}' is not valid JSON ({e}); download or convert it again") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"'{path}' holds a JSON {type(out).__name__}, not an object")
    return out


def torch_load(path: pathlib.Path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading '{path}' needs PyTorch: pip install torch (the CPU build is enough), or use a "
            "safetensors or CTranslate2 checkpoint"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = _plain_text(str(e))
        reason = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(
            f"'{path}' holds objects other than tensors and plain containers, which torch.load(weights_only=True) "
            f"refuses to unpickle for safety ({reason}); save only tensors, dicts and numbers in it"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors ... for damaged files
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch file ({type(e).__name__}: {_plain_text(str(e))}); download it again"
        ) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes, which torch puts in some messages


def _plain_text(message: str) -> str:
    return _ANSI.sub("", message).strip()


def read_torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    obj = torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state dict")
    return {k: to_numpy(v) for k, v in obj.items()}


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is imported only by whoever made it
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def file_sha256(files: Iterable[pathlib.Path]) -> str:
    """Hex SHA-256 of the files' bytes, concatenated in order."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def int_tuple(values) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def some(names, n: int = 8) -> str:
    """The first ``n`` names, sorted, for an error message."""
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")  # org/name[@revision]


SAVE_PRETRAINED = "pass the folder save_pretrained wrote (config.json + model.safetensors)"


def read_config(path: pathlib.Path, fix: str = "pass the model's folder") -> dict:
    """``path``'s ``config.json``, refused with ``fix`` when ``path`` is not a folder holding one."""
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a folder with config.json; {fix}")
    return read_json(path / "config.json")


def folder_or_hub(source, download: Callable, example: str) -> tuple[pathlib.Path, str]:
    """``(local path, name)`` of a ``--model``: an existing path (named by its folder), else a hub id
    ``org/name[@revision]`` fetched by ``download(repo_id, revision)`` (named by the id); anything else is refused,
    with ``example`` as a hub id of the family."""
    path = pathlib.Path(source).expanduser()
    if path.exists():
        return path, path.resolve().name
    if isinstance(source, str) and REPO_ID.fullmatch(source):
        repo_id, _, revision = source.partition("@")
        return pathlib.Path(download(repo_id, revision or None)), source
    raise CheckpointError(f"checkpoint '{source}' is neither a folder nor a Hugging Face repo id like {example}")
