"""Arrow columns of speech datasets as the audio ``Utterance`` takes, without copying or decoding a clip.

A ``datasets`` ``Audio`` column is stored as a struct ``{bytes: binary, path: string}`` whether or not it decodes
(``Audio(decode=False)`` only changes what ``datasets`` hands back); FLEURS's Parquet export, ``save_to_disk``
folders and the Hub's Parquet files all hold it so. Some datasets keep a plain binary column, or a string column of
file paths instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from engine.data.utterance import DatasetError


def binary_views(array: pa.Array) -> list[memoryview | None]:
    """Zero-copy views of a (large) binary array's values; ``array[i].as_buffer()`` would copy each one."""
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise DatasetError(f"audio bytes have Arrow type {array.type}, expected binary")
    _, offsets, values = array.buffers()
    values = values if values is not None else pa.py_buffer(b"")  # arrow may omit the buffer when all are empty
    dtype = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(offsets, dtype)[array.offset : array.offset + len(array) + 1]
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return [
        memoryview(values.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i]))) if valid[i] else None
        for i in range(len(array))
    ]


def audio_kind(arrow_type: pa.DataType, column: str, where: str) -> str:
    """``struct`` (``{bytes, path}``), ``binary`` or ``path`` (strings): how a column holds its audio."""
    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(k).name for k in range(arrow_type.num_fields)}
        if names & {"bytes", "path"}:
            return "struct"
    elif pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    elif pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    raise DatasetError(
        f"{where}: column {column!r} has Arrow type {arrow_type}, which holds no audio; the audio column is an "
        "Audio feature ({bytes, path}), binary, or a string path: pass the right one with --audio_column"
    )


def struct_fields(chunk: pa.Array) -> dict[str, pa.Array]:
    """A struct chunk's children by name; flatten() (not .field()) honours the chunk's slice offset."""
    names = [chunk.type.field(k).name for k in range(chunk.type.num_fields)]
    return dict(zip(names, chunk.flatten(), strict=True))


def audio_values(column: pa.ChunkedArray, resolve: Callable[[str], str]) -> tuple[list, list[str | None]]:
    """(audio, file name) per row of an audio column: the encoded bytes as zero-copy views where the row holds them,
    else its path through ``resolve`` (relative paths of a local dataset resolve against its folder); None where it
    holds neither."""
    audio: list = []
    names: list[str | None] = []
    for chunk in column.chunks:
        kind = audio_kind(chunk.type, "", "")
        if kind == "struct":
            fields = struct_fields(chunk)
            data = binary_views(fields["bytes"]) if "bytes" in fields else [None] * len(chunk)
            paths = fields["path"].to_pylist() if "path" in fields else [None] * len(chunk)
        elif kind == "binary":
            data, paths = binary_views(chunk), [None] * len(chunk)
        else:
            data, paths = [None] * len(chunk), chunk.to_pylist()
        for b, p in zip(data, paths, strict=True):
            audio.append(b if b is not None else (resolve(p) if p else None))
            names.append(os.path.basename(p) if p else None)
    return audio, names
