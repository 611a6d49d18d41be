"""wav2vec2-family checkpoints: a folder written by transformers' ``save_pretrained``, or a hub id, read with NumPy.

A folder holds ``config.json`` (``Wav2Vec2Config`` / ``HubertConfig``), the weights as ``model.safetensors`` (or
sharded, with ``model.safetensors.index.json``), else ``pytorch_model.bin`` (or sharded; read with
``torch.load(weights_only=True)`` only), and optionally ``preprocessor_config.json``, ``vocab.json`` and
``tokenizer_config.json``. Checkpoints of ``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ``Wav2Vec2ForPreTraining``,
``HubertModel`` and ``HubertForCTC`` load; keys may carry the ``wav2vec2.`` / ``hubert.`` prefix or not.

The state dict is canonical: transformers' base-model names without the prefix, plus ``lm_head.weight`` /
``lm_head.bias`` for a CTC head. The positional conv's weight norm (``weight_g`` / ``weight_v`` in older files,
``parametrizations.weight.original0`` / ``original1`` in newer ones) is folded into ``...conv.weight`` =
``g * v / |v|``, the norm taken over all but the kernel axis (``weight_norm(dim=2)``).

Every tensor the config implies must be present with its shape, or loading fails naming it. Tensors that do not
change the encoder are dropped and listed in ``Wav2Vec2Checkpoint.ignored``: pretraining ones (``masked_spec_embed``,
``quantizer.*``, ``project_q.*``, ``project_hid.*``) and other heads (``classifier.*``, ``projector.*``, ...). An
unknown tensor inside the encoder fails, naming it: it would be computation this package does not do.

MMS adapters: ``adapter=<lang>`` reads ``adapter.<lang>.safetensors`` (else ``adapter.<lang>.bin``) beside the model,
as transformers' ``load_adapter`` does: it must hold exactly the attention adapters of every layer
(``<prefix>.encoder.layers.<i>.adapter_layer.*``) and ``lm_head.*`` (whose row count is the language's vocabulary),
and replaces them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import file_sha256, read_json, read_torch_state_dict, some
from engine.models.common.prefixed import snapshot
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import WEIGHT_FILES, check_layer_claim, read_safetensors, read_weights
from engine.models.wav2vec2.config import Wav2Vec2Dims, dims_from_hf_config
from engine.models.wav2vec2.features import PREPROCESSOR_FILE, FeatureOptions

ADAPTER_FILES = ("adapter.{}.safetensors", "adapter.{}.bin")  # transformers' WAV2VEC2_ADAPTER_{SAFE,PT}_FILE
TEXT_FILES = ("config.json", PREPROCESSOR_FILE, "vocab.json", "tokenizer_config.json", "special_tokens_map.json")
TRAINING_ONLY = ("masked_spec_embed", "quantizer.", "project_q.", "project_hid.")  # SpecAugment and pretraining
_BASE = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed")
_WEIGHT_NORM = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Checkpoint:
    """A loaded checkpoint; equality and hashing ignore the arrays (compare ``sha256``)."""

    name: str  # the hub id or the folder name
    dims: Wav2Vec2Dims
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # canonical names
    sha256: str  # hex, of the weight files' bytes (all shards, in order), then the adapter file's
    adapter: str | None  # the MMS adapter language loaded, e.g. "fra"
    vocab_size: int | None  # rows of lm_head (the adapter's when one is loaded); None without a CTC head
    features: FeatureOptions
    ignored: tuple[str, ...]  # tensors read past, as named in the files
    path: pathlib.Path  # the folder

    @property
    def config(self) -> Wav2Vec2Dims:
        """``dims``, under the name the other families' checkpoints give their config (``LoadedConfig`` reads it)."""
        return self.dims


def load_checkpoint(source: str | os.PathLike, *, adapter: str | None = None) -> Wav2Vec2Checkpoint:
    """Load a wav2vec2 / HuBERT checkpoint from a local folder or a hub id ``org/name[@revision]``.

    ``adapter``: an MMS language (``"fra"``) whose ``adapter.<lang>.safetensors`` replaces the attention adapters and
    the CTC head.
    """
    path = pathlib.Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"wav2vec2 checkpoint '{path}' is a file; pass the folder holding config.json")
        return _load_folder(path, path.resolve().name, adapter)
    if isinstance(source, str) and _REPO_ID.fullmatch(source):
        repo_id, _, revision = source.partition("@")
        return _load_folder(download(repo_id, revision or None, adapter), source, adapter)
    raise CheckpointError(
        f"wav2vec2 checkpoint '{source}' is neither a folder nor a Hugging Face repo id like facebook/wav2vec2-base"
    )


def _load_folder(folder: pathlib.Path, name: str, adapter: str | None) -> Wav2Vec2Checkpoint:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint dir '{folder}' has no config.json; copy it with the weights")
    dims = dims_from_hf_config(read_json(config_file), str(config_file))
    files, raw = read_weights(folder)
    check_layer_claim(raw, "encoder.layers.", dims.num_hidden_layers, "num_hidden_layers", f"checkpoint '{folder}'")
    sd, origin, ignored = canonical_state_dict(raw, dims, f"checkpoint '{folder}'")
    if adapter is not None:
        adapter_file, adapter_sd = read_adapter(folder, adapter, dims)
        files = [*files, adapter_file]
        for k, v in adapter_sd.items():
            sd[k], origin[k] = v, f"{adapter_file.name}: {k}"
    head = sd.get("lm_head.weight")
    prefix = dims.model_type + "." if any(k.startswith(dims.model_type + ".") for k in raw) else ""
    check_state_dict(sd, dims, None if head is None else head.shape[0], f"checkpoint '{folder}'", origin, prefix)
    if ignored:
        logging.info("checkpoint %s: ignored %d tensors that do not change the encoder: %s", name, len(ignored),
                     some(ignored))  # fmt: skip
    return Wav2Vec2Checkpoint(
        name=name,
        dims=dims,
        state_dict=sd,
        sha256=file_sha256(files),
        adapter=adapter,
        vocab_size=None if head is None else int(head.shape[0]),
        features=FeatureOptions.from_folder(folder),
        ignored=tuple(sorted(ignored)),
        path=folder,
    )


# --- names and shapes -------------------------------------------------------------------------------------------


def expected_shapes(dims: Wav2Vec2Dims, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor ``dims`` imply; ``vocab_size`` adds the CTC head."""
    d, f = dims.hidden_size, dims.intermediate_size
    shapes = {}

    def norm(prefix, width):
        shapes.update({f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)})

    def linear(prefix, n_out, n_in):
        shapes.update({f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)})

    n_in = 1
    for i, (c, k) in enumerate(zip(dims.conv_dim, dims.conv_kernel, strict=True)):
        shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] = (c, n_in, k)
        if dims.conv_bias:
            shapes[f"feature_extractor.conv_layers.{i}.conv.bias"] = (c,)
        if dims.feat_extract_norm == "layer" or i == 0:
            norm(f"feature_extractor.conv_layers.{i}.layer_norm", c)
        n_in = c
    if dims.feat_proj_layer_norm:
        norm("feature_projection.layer_norm", n_in)
    linear("feature_projection.projection", d, n_in)
    pos = "encoder.pos_conv_embed"
    shapes[f"{pos}.conv.weight"] = (d, d // dims.num_conv_pos_embedding_groups, dims.num_conv_pos_embeddings)
    shapes[f"{pos}.conv.bias"] = (d,)
    if dims.conv_pos_batch_norm:
        norm(f"{pos}.batch_norm", d)
        shapes.update({f"{pos}.batch_norm.running_mean": (d,), f"{pos}.batch_norm.running_var": (d,)})
    norm("encoder.layer_norm", d)
    for i in range(dims.num_hidden_layers):
        p = f"encoder.layers.{i}"
        for proj in ("q", "k", "v", "out"):
            linear(f"{p}.attention.{proj}_proj", d, d)
        norm(f"{p}.layer_norm", d)
        norm(f"{p}.final_layer_norm", d)
        linear(f"{p}.feed_forward.intermediate_dense", f, d)
        linear(f"{p}.feed_forward.output_dense", d, f)
        if dims.has_adapter_layers:
            shapes.update(adapter_shapes(dims, i))
    if vocab_size is not None:
        linear("lm_head", vocab_size, d)
    return shapes


def adapter_shapes(dims: Wav2Vec2Dims, layer: int) -> dict[str, tuple[int, ...]]:
    p, d, a = f"encoder.layers.{layer}.adapter_layer", dims.hidden_size, dims.adapter_attn_dim
    return {f"{p}.norm.weight": (d,), f"{p}.norm.bias": (d,), f"{p}.linear_1.weight": (a, d),
            f"{p}.linear_1.bias": (a,), f"{p}.linear_2.weight": (d, a), f"{p}.linear_2.bias": (d,)}  # fmt: skip


def canonical_state_dict(
    raw: Mapping[str, np.ndarray], dims: Wav2Vec2Dims, source: str
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """(canonical state dict, canonical name -> name in the files, names ignored) of the tensors of a checkpoint."""
    prefix = dims.model_type + "."
    prefixed = any(k.startswith(prefix) for k in raw)
    sd, origin, ignored = {}, {}, []
    for key, value in raw.items():
        name = key.removeprefix(prefix) if prefixed else key
        in_base = key.startswith(prefix) if prefixed else name.startswith(_BASE)
        if name.startswith(TRAINING_ONLY) or (not in_base and not name.startswith("lm_head.")):
            ignored.append(key)
        elif name.endswith("num_batches_tracked"):
            ignored.append(key)  # a BatchNorm training counter
        else:
            sd[name], origin[name] = value, key
    for g_suffix, v_suffix in _WEIGHT_NORM.items():
        g_name = f"encoder.pos_conv_embed.conv.{g_suffix}"
        if g_name in sd:
            v_name = f"encoder.pos_conv_embed.conv.{v_suffix}"
            if v_name not in sd:
                raise CheckpointError(f"{source} has '{origin[g_name]}' but not its direction tensor '{v_suffix}'")
            g, v = sd.pop(g_name), sd.pop(v_name)
            sd["encoder.pos_conv_embed.conv.weight"] = fold_weight_norm(g, v, source)
            origin["encoder.pos_conv_embed.conv.weight"] = f"{origin.pop(g_name)} and {origin.pop(v_name)}"
    return sd, origin, ignored


def fold_weight_norm(g: np.ndarray, v: np.ndarray, source: str) -> np.ndarray:
    """``torch.nn.utils.weight_norm(dim=2)``'s weight: ``g * v / |v|``, ``|v|`` over axes 0 and 1, in float32."""
    g, v = np.asarray(g, np.float32), np.asarray(v, np.float32)
    if v.ndim != 3 or g.shape != (1, 1, v.shape[2]):
        raise CheckpointError(
            f"{source}: the positional conv's weight norm has magnitude {g.shape} and direction {v.shape}; "
            "expected [1, 1, kernel] and [out, in / groups, kernel] (weight_norm over dim 2)"
        )
    return g * v / np.sqrt(np.square(v).sum(axis=(0, 1), keepdims=True))


def check_state_dict(
    sd: Mapping[str, np.ndarray],
    dims: Wav2Vec2Dims,
    vocab_size: int | None,
    source: str,
    origin: Mapping[str, str],
    prefix: str = "",
) -> None:
    """Every tensor ``dims`` imply present with its shape and a float dtype, and none it does not. Missing tensors
    are named as the files would name them, with the base model's key ``prefix`` (``"wav2vec2."``) if they use it."""
    shapes = expected_shapes(dims, vocab_size)

    def named(k):
        return f"'{k}'" + (f" (from '{origin[k]}')" if origin.get(k, k) != k else "")

    missing = [f"'{k}'" if k.startswith("lm_head.") else f"'{prefix}{k}'" for k in shapes if k not in sd]
    unexpected = [named(k) for k in sd if k not in shapes]
    if missing or unexpected:
        # Both in one message: a misnamed tensor is one of each.
        lacks = f"lacks {len(missing)} tensors its config.json implies: {some(missing)}" if missing else ""
        extra = f"has encoder tensors its config.json does not imply: {some(unexpected)}" if unexpected else ""
        raise CheckpointError(
            f"{source} {'; and '.join(filter(None, [lacks, extra]))}; the file is incomplete or its tensors are "
            "misnamed, or config.json is not the one saved with these weights"
        )
    for k, want in shapes.items():
        if tuple(sd[k].shape) != want:
            raise CheckpointError(
                f"{source}: tensor {named(k)} has shape {tuple(sd[k].shape)}, config.json implies {want}"
            )
        if sd[k].dtype.kind != "f" and sd[k].dtype != ml_dtypes.bfloat16:
            raise CheckpointError(f"{source}: tensor {named(k)} is {sd[k].dtype}, not a float")


# --- adapters -----------------------------------------------------------------------------------------------------


def read_adapter(folder: pathlib.Path, lang: str, dims: Wav2Vec2Dims) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """The adapter file of ``lang`` beside the model and its tensors under canonical names (``lm_head.*`` too)."""
    if dims.adapter_attn_dim is None:
        raise CheckpointError(
            f"adapter {lang!r} asked for, but '{folder / 'config.json'}' has no adapter_attn_dim: this is not an MMS "
            "model with language adapters; load it without an adapter"
        )
    if not re.fullmatch(r"[\w-]+", lang):
        raise CheckpointError(f"adapter language {lang!r} is not a language code like 'fra' or 'cmn-script_simplified'")
    files = [folder / name.format(lang) for name in ADAPTER_FILES]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        found = sorted(p.name.split(".")[1] for p in folder.glob("adapter.*.safetensors"))
        have = f"adapters found: {some(found)}" if found else "no adapter.*.safetensors there"
        raise CheckpointError(f"checkpoint dir '{folder}' has no {files[0].name} or {files[1].name} ({have})")
    raw = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_state_dict(path)
    prefix = dims.model_type + "."
    got = {k.removeprefix(prefix): v for k, v in raw.items()}
    want = {k for i in range(dims.num_hidden_layers) if dims.has_adapter_layers for k in adapter_shapes(dims, i)}
    want |= {"lm_head.weight", "lm_head.bias"}
    # named as transformers' adapter files name them: the base model's prefix, lm_head without
    missing = [f"'{k}'" if k.startswith("lm_head.") else f"'{prefix}{k}'" for k in want - set(got)]
    unexpected = [f"'{k}'" for k in raw if k.removeprefix(prefix) not in want]
    if missing or unexpected:
        raise CheckpointError(
            f"adapter file '{path}' should hold the attention adapters of {dims.num_hidden_layers} layers and lm_head "
            f"exactly; it lacks {some(missing) or 'nothing'} and has unexpected {some(unexpected) or 'nothing'}"
        )
    return path, got


# --- files --------------------------------------------------------------------------------------------------------


def download(repo_id: str, revision: str | None, adapter: str | None = None) -> pathlib.Path:
    """Local folder of a hub repo's files (config, weights, vocabulary, the adapter asked for), cache or hub."""
    name = repo_id.lower()
    kind = next((k for k in ("mms", "hubert", "omni") if k in name), "wav2vec2").replace("omni", "omnilingual")
    local = (
        f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder (config.json + "
        f"model.safetensors, as save_pretrained writes it); {random_model_hint(kind)}"
    )
    extra = [] if adapter is None else [name.format(adapter) for name in ADAPTER_FILES]

    def get(patterns: list[str]) -> pathlib.Path:
        return snapshot(repo_id, revision, local, allow_patterns=patterns)

    folder = get([*TEXT_FILES, "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", *extra])
    # pytorch_model.bin only when there are no safetensors, so that a model is not downloaded twice
    if not any((folder / f).is_file() for f in WEIGHT_FILES[:2]):
        folder = get(
            [*TEXT_FILES, "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin", *extra]
        )
    return folder
