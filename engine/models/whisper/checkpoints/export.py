"""Write a Whisper as a Hugging Face folder: ``model.safetensors``, ``config.json``, ``generation_config.json``.

The inverse of ``engine.models.whisper.checkpoints.hf``: our model -> OpenAI names and PyTorch layouts
(``openai_state_dict``) -> ``WhisperForConditionalGeneration`` names (``hf_state_dict``). The folder loads with
``load_whisper(folder)`` and with transformers' ``from_pretrained`` (``tests/jobs/test_finetune.py`` checks both
give the same logits). The mapping is written out name by name, separately from the reader's regexes in ``hf.py``,
so that a round trip checks one against the other.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
from flax import nnx

from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.model import Whisper

_TOP = {
    "encoder.ln_post": "encoder.layer_norm",
    "decoder.ln": "decoder.layer_norm",
    "encoder.positional_embedding": "encoder.embed_positions.weight",
    "decoder.positional_embedding": "decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "decoder.embed_tokens.weight",
}
_PARTS = {
    "attn": "self_attn",
    "cross_attn": "encoder_attn",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp_ln": "final_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
}
_PROJECTIONS = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
_MODULES = {"mlp_in": "mlp.0", "mlp_out": "mlp.2"}


def hf_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OpenAI names -> ``WhisperForConditionalGeneration`` names (``model.`` prefix; ``proj_out`` stays tied)."""
    out = {}
    for name, value in sd.items():
        side, rest = name.split(".", 1)
        if rest.startswith("blocks."):
            _, i, rest = rest.split(".", 2)
            module, param = rest.rsplit(".", 1)
            if module.endswith(tuple(f".{p}" for p in _PROJECTIONS)):
                attn, proj = module.rsplit(".", 1)
                module = f"{_PARTS[attn]}.{_PROJECTIONS[proj]}"
            else:
                module = _PARTS[module]
            hf = f"{side}.layers.{i}.{module}.{param}"
        else:
            hf = next((hf + name[len(ours) :] for ours, hf in _TOP.items() if name.startswith(ours)), name)
        out[f"model.{hf}"] = np.ascontiguousarray(value)
    return out


def openai_state_dict(model: Whisper) -> dict[str, np.ndarray]:
    """Our model's weights with OpenAI's names and PyTorch layouts (linear ``[out, in]``, conv ``[out, in, 3]``)."""
    _, state = nnx.split(model)
    sd = {}
    for path, var in nnx.to_flat_state(state):
        parts = [_MODULES.get(str(p), str(p)) for p in path]
        value = np.asarray(var[...])
        leaf = parts[-1]
        if leaf == "kernel":
            parts[-1] = "weight"
            value = np.transpose(value, (2, 1, 0)) if value.ndim == 3 else value.T  # WIO -> [out, in, w]; [in, out]
        elif leaf == "scale":
            parts[-1] = "weight"
        elif leaf == "token_embedding":
            parts.append("weight")
        sd[".".join(parts)] = np.ascontiguousarray(value)
    return sd


def hf_config(dims: ModelDimensions) -> dict:
    """A ``WhisperConfig`` dict for ``dims`` (OpenAI's 4x MLPs, exact GELU, no embedding scale)."""
    return {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "vocab_size": dims.n_vocab,
        "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
    }


def write_hf_folder(folder, sd: dict[str, np.ndarray], dims: ModelDimensions, generation: dict | None = None,
                    tokenizer_file: pathlib.Path | None = None) -> pathlib.Path:  # fmt: skip
    """Write an OpenAI-named state dict ``sd`` as a Hugging Face folder (created); returns the folder."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(sd), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(dims), indent=2))
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
    return folder


def generation_config(whisper) -> dict:
    """``generation_config.json`` of a ``LoadedWhisper``: what ``load_whisper`` and transformers' ``generate`` read,
    alignment heads (the checkpoint's, else the last half of decoder layers), language and task ids, suppressed
    tokens. Cheap: no weights are read (the finetune job builds it before training to know that export will work)."""
    tok, ckpt = whisper.tokenizer, whisper.checkpoint
    lang_ids = whisper.lang_ids
    return {
        "alignment_heads": np.asarray(whisper.alignment_heads()).tolist(),
        "decoder_start_token_id": tok.sot,
        "eos_token_id": tok.eot,
        "pad_token_id": tok.eot,
        "is_multilingual": whisper.dims.is_multilingual,
        "lang_to_id": {f"<|{tok.language_code(i)}|>": int(i) for i in lang_ids},
        "task_to_id": {"transcribe": tok.transcribe, "translate": tok.translate},
        "no_timestamps_token_id": tok.no_timestamps,
        "suppress_tokens": [int(i) for i in (ckpt.suppress_ids or tok.suppress_tokens)],
        "begin_suppress_tokens": [int(i) for i in (ckpt.suppress_ids_begin or (*tok.encode(" "), tok.eot))],
        "max_length": whisper.dims.n_text_ctx,
    }


def export_hf(whisper, folder) -> pathlib.Path:
    """Write a ``LoadedWhisper`` (model, tokenizer, checkpoint config) as a Hugging Face folder, with its
    ``generation_config``."""
    return write_hf_folder(folder, openai_state_dict(whisper.model), whisper.dims, generation_config(whisper),
                           whisper.checkpoint.tokenizer_file)  # fmt: skip
