"""Hugging Face Whisper checkpoints: folders, safetensors, configs and the hub, read with NumPy.

A folder holds ``config.json`` (a ``WhisperConfig``), the weights as ``model.safetensors`` (or
sharded, with ``model.safetensors.index.json``), else ``pytorch_model.bin`` (or sharded), and
optionally ``generation_config.json`` and ``tokenizer.json``. Tensors are renamed to OpenAI's names
(``state_dict_from_hf``); ``engine.models.whisper.checkpoints.load`` checks their shapes and builds the ``Checkpoint``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import int_tuple, read_json, some, to_numpy
from engine.models.common.prefixed import snapshot
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import WEIGHT_FILES, read_weights
from engine.models.whisper.checkpoints import ct2
from engine.models.whisper.dims import ModelDimensions

_HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "model.bin", "model.bin.part*"]
_HUB_SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_HUB_TORCH = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]

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


# --- config.json and generation_config.json ---------------------------------------------------------


def dims_from_hf_config(config: Mapping) -> ModelDimensions:
    """``ModelDimensions`` from a Hugging Face ``WhisperConfig`` dict (``config.json``)."""
    missing = sorted({v for v in _HF_DIMS.values() if v not in config})
    if missing:
        raise CheckpointError(f"Hugging Face config lacks {', '.join(missing)}; is it a Whisper config.json?")
    try:
        return ModelDimensions(**{k: int(config[v]) for k, v in _HF_DIMS.items()})
    except ValueError as e:
        raise CheckpointError(f"Hugging Face config has inconsistent dimensions: {e}") from None


def read_config(folder: pathlib.Path) -> tuple[ModelDimensions, dict]:
    """Dims and the raw dict of ``folder/config.json``, checked to describe a Whisper model."""
    config_file = folder / "config.json"
    config = read_json(config_file)
    if config.get("model_type", "whisper") != "whisper":
        raise CheckpointError(f"'{config_file}' describes a {config['model_type']!r} model, not Whisper")
    if config.get("scale_embedding") or config.get("activation_function", "gelu") != "gelu":
        raise CheckpointError(
            f"'{config_file}' asks for scale_embedding={config.get('scale_embedding')} and activation_function="
            f"{config.get('activation_function')!r}; Whisper uses false and 'gelu'"
        )
    try:
        return dims_from_hf_config(config), config
    except CheckpointError as e:
        raise CheckpointError(f"'{config_file}': {e}") from None


def mlp_widths(config: Mapping, dims: ModelDimensions) -> tuple[int, int]:
    """Hidden widths of the encoder and decoder MLPs; absent from the config means OpenAI's 4x."""
    return (
        int(config.get("encoder_ffn_dim", 4 * dims.n_audio_state)),
        int(config.get("decoder_ffn_dim", 4 * dims.n_text_state)),
    )


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What babelgrid takes from ``generation_config.json``; all ``None`` when the file is absent."""

    file: pathlib.Path
    alignment_heads: object  # as written, [[layer, head], ...]; checked against the dims by the caller
    lang_ids: tuple[int, ...] | None  # sorted
    suppress_ids: tuple[int, ...] | None
    suppress_ids_begin: tuple[int, ...] | None


def read_generation_config(folder: pathlib.Path) -> GenerationConfig:
    gen_file = folder / "generation_config.json"
    gen = read_json(gen_file) if gen_file.is_file() else {}
    lang_to_id = gen.get("lang_to_id")
    return GenerationConfig(
        file=gen_file,
        alignment_heads=gen.get("alignment_heads"),
        lang_ids=tuple(sorted(int(i) for i in lang_to_id.values())) if lang_to_id else None,
        suppress_ids=int_tuple(gen.get("suppress_tokens")),
        suppress_ids_begin=int_tuple(gen.get("begin_suppress_tokens")),
    )


# --- weights ----------------------------------------------------------------------------------------


def state_dict_from_hf(hf: Mapping[str, object]) -> dict[str, np.ndarray]:
    """OpenAI-named state dict from a Hugging Face ``WhisperForConditionalGeneration`` or ``WhisperModel`` one.

    Names may carry the ``model.`` prefix or not; values may be NumPy arrays or torch tensors.
    ``proj_out.weight`` is dropped after checking that it equals the token embedding, and key
    biases (which Whisper does not have) after checking that they are zero.
    """
    return _map_hf(hf, "Hugging Face state dict")[0]


def read_state_dict(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, np.ndarray], dict[str, str]]:
    """The weight files read, the OpenAI-named state dict, and OpenAI name -> Hugging Face name."""
    files, hf = read_weights(folder)
    sd, origin = _map_hf(hf, f"checkpoint '{folder}'")
    return files, sd, origin


def _map_hf(hf: Mapping[str, object], source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    sd, origin, unknown = {}, {}, []
    projection = None
    for hf_name, value in hf.items():
        value = to_numpy(value)
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
            f"{source} has tensors that a Whisper model does not: {some(unknown)}; is it a "
            "WhisperForConditionalGeneration checkpoint?"
        )
    if projection is not None:
        embedding = sd.get("decoder.token_embedding.weight")
        if embedding is not None and not np.array_equal(projection, embedding):
            raise CheckpointError(
                f"{source}: proj_out.weight differs from the token embedding; babelgrid ties them as Whisper does"
            )
    return sd, origin


# --- hub --------------------------------------------------------------------------------------------


def download(repo_id: str, revision: str | None) -> pathlib.Path:
    """Local folder of a hub repo's Whisper files (CTranslate2 or Hugging Face), from the cache or the hub."""
    source = repo_id + (f"@{revision}" if revision else "")
    turbo = "turbo" in repo_id.lower()
    example = "whisper-large-v3-turbo" if turbo else "whisper-base"
    local = (
        f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, e.g. "
        f"load_checkpoint('/path/to/{example}') with config.json + model.safetensors, or a CTranslate2 folder; "
        + random_model_hint("whisper-turbo" if turbo else "whisper")
    )
    if "whisper" not in repo_id.lower():  # taken for Whisper only for want of a config.json or a family's name
        local += (
            f" (babelgrid took '{source}' for a Whisper model: its config.json is not cached and its name is no other "
            "family's; if it is another family's model, download it and pass the folder)"
        )

    def get(patterns: list[str]) -> pathlib.Path:
        return snapshot(repo_id, revision, local, allow_patterns=patterns)

    folder = get(_HUB_FILES + _HUB_SAFETENSORS)
    # pytorch_model.bin is fetched only when there are no safetensors, to avoid downloading the model twice.
    if not ct2.model_bin_files(folder) and not any((folder / f).is_file() for f in WEIGHT_FILES[:2]):
        folder = get(_HUB_FILES + _HUB_TORCH)
    return folder
