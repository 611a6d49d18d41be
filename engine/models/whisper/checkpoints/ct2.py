"""CTranslate2 Whisper checkpoints, read with NumPy alone.

A CTranslate2 model folder holds ``model.bin`` (or ``model.bin.part1``, ``.part2``, ... to be
concatenated), ``config.json`` and the tokenizer. ``model.bin`` is little-endian, laid out by
``ctranslate2/specs/model_spec.py`` (``_serialize``) and read back by ``src/models/model.cc``::

    u32 binary_version                      # 6 today; 1-5 are read as model.cc reads them
    str spec_name, u32 spec_revision        # binary_version >= 2
    u32 n_variables, then each:
        str name, u8 rank, u32 dims[rank]
        u8 dtype_id, u32 n_bytes            # binary_version >= 4 (older: u8 item size, u32 n_items)
        n_bytes raw data
    u32 n_aliases, then each: str alias, str target    # binary_version >= 3

where ``str`` is a u16 length counting a trailing NUL, then the bytes and the NUL.

The converter writes every weight as Hugging Face holds it (checked in the tests: an exact
round trip, no query scaling, no transposition), except that it fuses projections and stores
any tensor equal to one earlier in alphabetical order as an alias of it (the tied output
projection, but in a fresh random model also every all-ones layer norm and all-zeros bias).
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import pathlib
import re
import struct
from collections.abc import Mapping, Sequence

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError
from engine.models.whisper.dims import ModelDimensions

MAX_BINARY_VERSION = 6
# Index = dtype id written by CTranslate2 (include/ctranslate2/types.h DataType).
DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.int8),
    np.dtype(np.int16),
    np.dtype(np.int32),
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
)
# Binary versions before 4 stored an item size instead of a dtype id (model.cc get_dtype_from_item_size).
_DTYPE_BY_ITEM_SIZE = {4: DTYPES[0], 2: DTYPES[2], 1: DTYPES[1]}
_GELU = 3  # common_spec.Activation.GELU
_HASH_CHUNK = 1 << 24  # bytes


@dataclasses.dataclass(frozen=True)
class Ct2Model:
    """The variables of one ``model.bin``, aliases resolved to the arrays they name."""

    spec: str  # e.g. "WhisperSpec"; "" before binary version 2
    spec_revision: int
    binary_version: int
    variables: Mapping[str, np.ndarray]  # aliases included, sharing the target's array
    aliases: Mapping[str, str]  # alias -> variable name
    sha256: str  # of the bytes of all parts, in order


def model_bin_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """``[folder/model.bin]``, or the ``model.bin.part<N>`` files in numeric order; ``[]`` if neither."""
    single = folder / "model.bin"
    parts = {}
    for path in folder.glob("model.bin.part*"):
        match = re.fullmatch(r"model\.bin\.part(\d+)", path.name)
        if match and path.is_file():
            parts[int(match[1])] = path
    if single.is_file() and parts:
        raise CheckpointError(f"CTranslate2 folder '{folder}' has both model.bin and model.bin.part*; keep one of them")
    if single.is_file():
        return [single]
    if not parts:
        return []
    first = min(parts)
    missing = [f"model.bin.part{i}" for i in range(first, max(parts) + 1) if i not in parts]
    if first not in (0, 1) or missing:
        raise CheckpointError(
            f"CTranslate2 folder '{folder}' has parts {sorted(p.name for p in parts.values())} but lacks "
            f"{missing or [f'model.bin.part{1 if first > 1 else 0}']}; copy every part of the model"
        )
    return [parts[i] for i in sorted(parts)]


def read_model_bin(files: Sequence[os.PathLike]) -> Ct2Model:
    """Parse a ``model.bin`` given as one file or as parts to concatenate in the given order.

    A single file is memory-mapped, so its arrays are read-only views that cost no copy; parts are
    read into one buffer because a tensor may straddle two of them.
    """
    files = [pathlib.Path(f) for f in files]
    if not files:
        raise CheckpointError("read_model_bin needs at least one file")
    source = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more parts)"
    digest = hashlib.sha256()
    if len(files) == 1:
        with open(files[0], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # mmap refuses empty files; an empty buffer then reports the file as truncated.
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        view = memoryview(buffer)
        for start in range(0, len(view), _HASH_CHUNK):
            digest.update(view[start : start + _HASH_CHUNK])
    else:
        sizes = [f.stat().st_size for f in files]
        buffer = np.empty(sum(sizes), np.uint8)
        view = memoryview(buffer)
        offset = 0
        for path, size in zip(files, sizes, strict=True):
            with open(path, "rb") as f:
                got = f.readinto(view[offset : offset + size])
            if got != size:
                raise CheckpointError(f"CTranslate2 part '{path}' changed while being read; read it again")
            digest.update(view[offset : offset + size])
            offset += size
    return _parse(buffer, source, digest.hexdigest())


class _Reader:
    """Sequential little-endian reads that check every length against the buffer."""

    def __init__(self, buffer, source: str):
        self.buffer = buffer
        self.size = len(buffer)
        self.source = source
        self.offset = 0

    def _need(self, n: int, what: str) -> int:
        start = self.offset
        if start + n > self.size:
            raise CheckpointError(
                f"CTranslate2 model file '{self.source}' is truncated: {what} needs {n} bytes at offset {start} "
                f"but the file ends at {self.size}; download or convert it again"
            )
        self.offset += n
        return start

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buffer, self._need(n, what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        start = self._need(n, what)
        raw = bytes(self.buffer[start : start + n])
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"CTranslate2 model file '{self.source}' is corrupt: {what} at offset {start}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(
                f"CTranslate2 model file '{self.source}' is corrupt: {what} at offset {start} is not UTF-8"
            ) from None

    def array(self, dtype: np.dtype, shape: tuple[int, ...], n_bytes: int, what: str) -> np.ndarray:
        start = self._need(n_bytes, what)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != n_bytes:
            raise CheckpointError(
                f"CTranslate2 model file '{self.source}' is corrupt: {what} has shape {shape} of {dtype} "
                f"but {n_bytes} bytes"
            )
        return np.frombuffer(self.buffer, dtype=dtype, count=count, offset=start).reshape(shape)


def _parse(buffer, source: str, sha256: str) -> Ct2Model:
    r = _Reader(buffer, source)
    version = r.u32("the binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CheckpointError(
            f"CTranslate2 model file '{source}' has binary version {version}; babelgrid reads versions 1 to "
            f"{MAX_BINARY_VERSION} (convert it with a CTranslate2 release of that era, or check it is a model.bin)"
        )
    spec, revision = "", 1
    if version >= 2:
        spec = r.string("the spec name")
        revision = r.u32("the spec revision")
    variables: dict[str, np.ndarray] = {}
    for i in range(r.u32("the variable count")):
        name = r.string(f"the name of variable {i}")
        rank = r.u8(f"the rank of '{name}'")
        shape = r.unpack(f"{rank}I", f"the shape of '{name}'") if rank else ()
        if version >= 4:
            dtype_id = r.u8(f"the dtype of '{name}'")
            n_bytes = r.u32(f"the size of '{name}'")
            if dtype_id >= len(DTYPES):
                raise CheckpointError(f"CTranslate2 model file '{source}' is corrupt: '{name}' has dtype id {dtype_id}")
            dtype = DTYPES[dtype_id]
        else:
            item_size = r.u8(f"the item size of '{name}'")
            n_bytes = r.u32(f"the size of '{name}'") * item_size
            if item_size not in _DTYPE_BY_ITEM_SIZE:
                raise CheckpointError(
                    f"CTranslate2 model file '{source}' is corrupt: '{name}' has item size {item_size}"
                )
            dtype = _DTYPE_BY_ITEM_SIZE[item_size]
        variables[name] = r.array(dtype, tuple(shape), n_bytes, f"the data of '{name}'")
    aliases: dict[str, str] = {}
    if version >= 3:
        for i in range(r.u32("the alias count")):
            alias = r.string(f"the name of alias {i}")
            aliases[alias] = r.string(f"the target of alias '{alias}'")
    if r.offset != r.size:
        raise CheckpointError(
            f"CTranslate2 model file '{source}' has {r.size - r.offset} bytes after its last record "
            "(parts out of order, or not a model.bin?)"
        )
    for alias, target in aliases.items():
        if target not in variables:
            raise CheckpointError(f"CTranslate2 model file '{source}' aliases '{alias}' to missing '{target}'")
        variables.setdefault(alias, variables[target])
    return Ct2Model(spec, revision, version, variables, aliases, sha256)


# --- Whisper ----------------------------------------------------------------------------------------

# Scalars a Whisper spec writes that do not change the weights' meaning (alibi is off; alignment
# heads are CTranslate2's own runtime setting). Any other scalar must be 0 unless checked below,
# so that a future converter flag that changes the maths is refused, not ignored.
_HARMLESS_SCALARS = {
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/alibi_use_positive_positions",
    "decoder/scale_alibi",
}


def whisper_state_dict(model: Ct2Model, source: str) -> tuple[ModelDimensions, dict[str, np.ndarray], dict[str, str]]:
    """Dimensions and OpenAI-named state dict of a CTranslate2 ``WhisperSpec`` model.

    Returns ``(dims, state_dict, origin)`` where ``origin`` maps each OpenAI name to the CTranslate2
    variable it came from (for error messages). Shapes are checked by the caller.
    """
    if model.spec and model.spec != "WhisperSpec":
        raise CheckpointError(f"CTranslate2 model '{source}' is a {model.spec}, not a WhisperSpec")
    v = dict(model.variables)
    _refuse_quantized(v, source)

    scalars = {name: v.pop(name) for name in list(v) if v[name].ndim == 0}
    heads = {}
    for side in ("encoder", "decoder"):
        if f"{side}/num_heads" not in scalars:
            raise CheckpointError(f"CTranslate2 model '{source}' lacks '{side}/num_heads'")
        heads[side] = int(scalars.pop(f"{side}/num_heads"))
    for name, value in scalars.items():
        if name == "decoder/pre_norm":
            ok, want = value == 1, "1 (pre-norm blocks)"
        elif name == "decoder/activation":
            ok, want = value == _GELU, f"{_GELU} (GELU)"
        elif name == "decoder/scale_embeddings":
            # Whisper's spec writes False; a converter that writes the embed scale would write 1.0.
            ok, want = value == 0 or (value.dtype.kind == "f" and value == 1), "False or 1.0"
        else:
            ok, want = name in _HARMLESS_SCALARS or value == 0, "0"
        if not ok:
            raise CheckpointError(
                f"CTranslate2 model '{source}' has {name} = {value.item()!r} where Whisper needs {want}; "
                "babelgrid cannot run this variant"
            )

    sd: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}

    def take(ct2_name: str, name: str):
        if ct2_name in v:
            sd[name] = v.pop(ct2_name)
            origin[name] = ct2_name

    def split(ct2_name: str, names: Sequence[str | None]):
        """Unfuse rows of a fused projection; ``None`` marks a key bias that must be zero."""
        if ct2_name not in v:
            return
        fused = v.pop(ct2_name)
        if fused.shape[0] % len(names):
            raise CheckpointError(
                f"CTranslate2 model '{source}': fused '{ct2_name}' has {fused.shape[0]} rows, "
                f"not a multiple of {len(names)}"
            )
        for name, part in zip(names, np.split(fused, len(names)), strict=True):
            if name is None:
                if np.any(part != 0):
                    raise CheckpointError(
                        f"CTranslate2 model '{source}': '{ct2_name}' has a non-zero key bias; Whisper's key "
                        "projections have none, so this is not a Whisper model babelgrid can load"
                    )
                continue
            sd[name] = part
            origin[name] = ct2_name

    for side, out in (("encoder", "encoder.ln_post"), ("decoder", "decoder.ln")):
        take(f"{side}/position_encodings/encodings", f"{side}.positional_embedding")
        for ct2, ours in (("gamma", "weight"), ("beta", "bias")):
            take(f"{side}/layer_norm/{ct2}", f"{out}.{ours}")
    for conv in ("conv1", "conv2"):
        for p in ("weight", "bias"):
            take(f"encoder/{conv}/{p}", f"encoder.{conv}.{p}")
    take("decoder/embeddings/weight", "decoder.token_embedding.weight")

    n_layers = {}
    for side in ("encoder", "decoder"):
        indices = {int(m[1]) for name in v if (m := re.match(rf"{side}/layer_(\d+)/", name))}
        n_layers[side] = max(indices) + 1 if indices else 0
        for i in range(n_layers[side]):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            blocks = [("self_attention", "attn"), ("ffn", "mlp")]
            if side == "decoder":
                blocks.append(("attention", "cross_attn"))
            for ct2, ours in blocks:
                for p, q in (("gamma", "weight"), ("beta", "bias")):
                    take(f"{src}/{ct2}/layer_norm/{p}", f"{dst}.{ours}_ln.{q}")
            a = f"{dst}.attn"
            split(
                f"{src}/self_attention/linear_0/weight", [f"{a}.query.weight", f"{a}.key.weight", f"{a}.value.weight"]
            )
            split(f"{src}/self_attention/linear_0/bias", [f"{a}.query.bias", None, f"{a}.value.bias"])
            for p in ("weight", "bias"):
                take(f"{src}/self_attention/linear_1/{p}", f"{a}.out.{p}")
                take(f"{src}/ffn/linear_0/{p}", f"{dst}.mlp.0.{p}")
                take(f"{src}/ffn/linear_1/{p}", f"{dst}.mlp.2.{p}")
            if side == "decoder":
                c = f"{dst}.cross_attn"
                split(f"{src}/attention/linear_1/weight", [f"{c}.key.weight", f"{c}.value.weight"])
                split(f"{src}/attention/linear_1/bias", [None, f"{c}.value.bias"])
                for p in ("weight", "bias"):
                    take(f"{src}/attention/linear_0/{p}", f"{c}.query.{p}")
                    take(f"{src}/attention/linear_2/{p}", f"{c}.out.{p}")

    # Whisper ties the output projection to the token embedding; we keep only the embedding.
    projection = v.pop("decoder/projection/weight", None)
    embedding = sd.get("decoder.token_embedding.weight")
    tied = projection is None or embedding is None or projection is embedding
    if not tied and not np.array_equal(projection, embedding):
        raise CheckpointError(
            f"CTranslate2 model '{source}': decoder/projection/weight differs from decoder/embeddings/weight; "
            "babelgrid ties them as Whisper does"
        )
    bias = v.pop("decoder/projection/bias", None)
    if bias is not None and np.any(bias != 0):
        raise CheckpointError(f"CTranslate2 model '{source}' has a non-zero decoder/projection/bias; Whisper has none")
    if v:
        raise CheckpointError(
            f"CTranslate2 model '{source}' has variables a Whisper model does not: {_some(v)}; "
            "is it a Whisper conversion?"
        )

    def shape(name: str, axis: int) -> int:
        if name not in sd:
            raise CheckpointError(f"CTranslate2 model '{source}' lacks '{_ct2_name(name)}'")
        return int(sd[name].shape[axis]) if sd[name].ndim > axis else 0

    try:
        dims = ModelDimensions(
            n_mels=shape("encoder.conv1.weight", 1),
            n_audio_ctx=shape("encoder.positional_embedding", 0),
            n_audio_state=shape("encoder.conv1.weight", 0),
            n_audio_head=heads["encoder"],
            n_audio_layer=n_layers["encoder"],
            n_vocab=shape("decoder.token_embedding.weight", 0),
            n_text_ctx=shape("decoder.positional_embedding", 0),
            n_text_state=shape("decoder.token_embedding.weight", 1),
            n_text_head=heads["decoder"],
            n_text_layer=n_layers["decoder"],
        )
    except ValueError as e:
        raise CheckpointError(f"CTranslate2 model '{source}' has inconsistent dimensions: {e}") from None
    return dims, sd, origin


def _refuse_quantized(variables: Mapping[str, np.ndarray], source: str) -> None:
    # Dequantizing int8 (w / scale per row) is easy, but the result is not the model the
    # references were measured on; a float16 conversion is a one-line command away.
    for name, value in variables.items():
        if value.ndim > 0 and (name.endswith("_scale") or value.dtype.kind in "iu"):
            raise CheckpointError(
                f"CTranslate2 model '{source}' is quantized ('{name}' is {value.dtype}); babelgrid needs float "
                "weights: convert it again with `ct2-transformers-converter --model openai/whisper-<size> "
                "--output_dir <dir> --quantization float16`"
            )


def _ct2_name(openai_name: str) -> str:
    return {
        "encoder.conv1.weight": "encoder/conv1/weight",
        "encoder.positional_embedding": "encoder/position_encodings/encodings",
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "decoder.positional_embedding": "decoder/position_encodings/encodings",
    }.get(openai_name, openai_name)


def _some(names, n: int = 8) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
