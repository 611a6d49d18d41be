"""Hugging Face weight files, for every model family: a folder's ``model.safetensors`` (or its shards), else its
``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, never unpickled freely).

Safetensors files are parsed here rather than with ``safetensors.numpy``, which reads the whole file into memory and
has no bfloat16: the tensors are read-only views of a memory map, so a 1B-parameter model is not copied.
"""

from __future__ import annotations

import json
import pathlib
import re
import struct
from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import read_json, read_torch_state_dict, some

# Weight files of a folder, in order of preference (safetensors first).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SAFETENSORS_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),  # BatchNorm's num_batches_tracked (HuBERT's conv_pos_batch_norm): read, then dropped
}


def read_weights(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, np.ndarray]]:
    """The weight files read (in order) and their tensors; safetensors first, PyTorch pickles only without them."""
    for single, index, read in (
        ("model.safetensors", "model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", read_torch_state_dict),
    ):
        if (folder / single).is_file():
            return [folder / single], read(folder / single)
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"'{folder / index}' has no weight_map; download it again")
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"checkpoint dir '{folder}' lacks shards {some(missing)} listed in {index}")
            out = {}
            for f in files:
                out.update(read(f))
            return files, out
    raise CheckpointError(f"checkpoint dir '{folder}' has config.json but none of {', '.join(WEIGHT_FILES)}")


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file as read-only views of a memory map (bfloat16 included)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"safetensors file '{path}' is truncated ({size} bytes); download it again")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"safetensors file '{path}' is truncated in its header; download it again")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"'{path}' is not a safetensors file (its header is not JSON)") from None
        data = np.memmap(f, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.empty(0, np.uint8)
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' is not a safetensors file (its header is not a JSON object)")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not _is_entry(info):
            raise CheckpointError(
                f"safetensors file '{path}' is corrupt: its header's entry for tensor '{name}' is not a dtype, shape "
                f"and data offsets ({str(info)[:200]}); download it again"
            )
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(
                f"'{path}': tensor '{name}' is {info['dtype']}; babelgrid reads {', '.join(SAFETENSORS_DTYPES)}"
            )
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end > len(data) or end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"safetensors file '{path}' is truncated or corrupt at tensor '{name}'")
        out[name] = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start).reshape(shape)
    return out


def _is_entry(info) -> bool:
    """Whether a safetensors header entry has the fields its format gives every tensor, of their types."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return False
    return (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
            and 0 <= offsets[0] <= offsets[1])  # fmt: skip


FLOATS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def checked_state(
    stored: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    what: str,
    local: Callable[[str], str] = lambda name: name,
    stored_name: Callable[[str], str] = lambda name: name,
    unread: re.Pattern | None = None,
    config_file: str = "config.json",
    floats: tuple[np.dtype, ...] = FLOATS,
) -> dict[str, np.ndarray]:
    """The model's state dict from a checkpoint's tensors, every family's checks in one place.

    ``stored``: the tensors as the file names them; ``local(name)``: the model's name of a stored tensor (a prefix
    dropped), ``stored_name`` its inverse, for messages; ``shapes``: the model's names and the shapes its config
    requires. A stored tensor the model does not have (and ``unread`` does not match, by its local name), one it
    lacks, a wrong shape or a dtype outside ``floats`` is a ``CheckpointError`` naming the tensor and ``what`` the
    config describes (``"a w2vbert encoder of 24 layers"``)."""
    sd, unknown = {}, []
    for name, value in stored.items():
        key = local(name)
        if key in shapes:
            sd[key] = np.asarray(value)
        elif unread is None or not unread.fullmatch(key):
            unknown.append(name)
    if unknown:
        raise CheckpointError(
            f"checkpoint '{source}' has tensors {what} does not: {some(unknown)}; is {config_file} the one saved with "
            "these weights?"
        )
    missing = [stored_name(k) for k in shapes if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint '{source}' lacks {len(missing)} tensors its {config_file} ({what}) requires: {some(missing)}"
        )
    for k, want in shapes.items():
        if tuple(sd[k].shape) != tuple(want):
            raise CheckpointError(
                f"checkpoint '{source}': tensor '{stored_name(k)}' has shape {tuple(sd[k].shape)}, but its "
                f"{config_file} requires {tuple(want)}"
            )
        if sd[k].dtype not in floats:
            names = ", ".join(str(f) for f in floats)
            raise CheckpointError(
                f"checkpoint '{source}': tensor '{stored_name(k)}' is {sd[k].dtype}; weights must be one of {names}"
            )
    return sd


def check_layer_claim(names, block: str, claimed: int, what: str, source: str) -> None:
    """Refuses a config that claims more layers than the checkpoint's tensors hold (``names``: the tensor names;
    ``block``: the prefix of a layer's tensors before its index, such as ``"encoder.layers."``), before anything is
    built or counted per claimed layer: a config.json of 1000000 layers made the expected-shapes table alone take 5
    GB before the missing tensors were named. Fewer claimed than held is left to the tensor check (unexpected
    tensors)."""
    pattern = re.compile(rf"(?:^|\.){re.escape(block)}(\d+)\.")
    held = {int(m.group(1)) for name in names if (m := pattern.search(name))}
    count = max(held) + 1 if held else 0
    if claimed > count:
        raise CheckpointError(
            f"{source}: config.json's {what} is {claimed}, but the checkpoint's tensors hold {count} such layers "
            f"({block}0 .. {block}{max(count - 1, 0)}): config.json is not the one saved with these weights"
        )
