"""A random-weight Whisper large-v3-turbo as a Hugging Face folder, for the turbo tests (``tests/conftest.py``'s
``turbo_model_dir`` fixture writes it once per session).

What is turbo's: ``config.json`` as openai/whisper-large-v3-turbo's (a ``WhisperConfig``: 128 mel bins, width 1280,
20 heads, 5120-wide MLPs, a 4-layer decoder, 51866 ids, the v3 special ids), ``generation_config.json`` as its
(the v3 language and task ids, OpenAI's published alignment heads for large-v3-turbo, the suppressed tokens) and a v3
``tokenizer.json``. What is not: the weights are random (``random_state_dict``) and the encoder has
``TURBO_ENCODER_LAYERS`` blocks instead of 32, so that a test runs in seconds; nothing in the folder names the size,
so whatever babelgrid finds it finds from the files.

The v3 vocabulary is v2's byte-level BPE (50257 text ids, unchanged) with one more language, ``<|yue|>`` after
``<|su|>``: every special token from ``<|translate|>`` on moves up by one (``<|transcribe|>`` 50359 -> 50360,
``<|notimestamps|>`` 50363 -> 50364, ``<|0.00|>`` 50364 -> 50365), 51866 ids in all. No v3 ``tokenizer.json`` is at
hand offline, so it is made from the packaged whisper-base one (the same BPE, HF's format): its added tokens are
replaced by the special tokens of OpenAI's own 100-language encoding (``whisper.tokenizer.get_encoding``, tiktoken),
ids included, so the ids come from OpenAI's code, not from babelgrid's.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from engine.models.whisper.checkpoints.alignment_heads import openai_alignment_heads
from engine.models.whisper.checkpoints.export import write_hf_folder
from engine.models.whisper.dims import PRESETS
from engine.models.whisper.random_weights import random_state_dict

TURBO_ENCODER_LAYERS = 2
TURBO_DIMS = dataclasses.replace(PRESETS["large-v3-turbo"], n_audio_layer=TURBO_ENCODER_LAYERS)
TURBO_SEED = 5

# openai/whisper-large-v3-turbo's special ids, as its config files state them (checked against OpenAI's tiktoken
# encoding in tests/models/whisper/test_turbo.py).
V3_IDS = {"eot": 50257, "sot": 50258, "yue": 50358, "translate": 50359, "transcribe": 50360, "sot_lm": 50361,
          "sot_prev": 50362, "no_speech": 50363, "no_timestamps": 50364, "timestamp_begin": 50365}  # fmt: skip


def openai_v3_tokenizer():
    """OpenAI's own tokenizer for the 100-language vocabulary (openai-whisper's ``get_tokenizer``, tiktoken)."""
    from whisper.tokenizer import get_tokenizer

    return get_tokenizer(True, num_languages=100, language="en", task="transcribe")


def packaged_tokenizer_json() -> pathlib.Path:
    """The packaged whisper-base ``tokenizer.json`` (the v2 vocabulary, Hugging Face's format)."""
    from engine.models.whisper.checkpoints.load import _default_files

    return _default_files()[1] / "tokenizer.json"


def write_v3_tokenizer(path: pathlib.Path) -> pathlib.Path:
    """A v3 ``tokenizer.json`` (51866 ids): the packaged v2 file's BPE with OpenAI's 100-language special tokens."""
    base = json.loads(packaged_tokenizer_json().read_text(encoding="utf-8"))
    specials = openai_v3_tokenizer().encoding._special_tokens  # text -> id, OpenAI's order
    flags = {t["content"]: {k: v for k, v in t.items() if k not in ("id", "content")} for t in base["added_tokens"]}
    assert set(specials) - set(flags) == {"<|yue|>"}, "the v2 file should lack exactly <|yue|>"
    flags["<|yue|>"] = flags["<|su|>"]
    in_order = sorted(specials.items(), key=lambda kv: kv[1])
    base["added_tokens"] = [{"id": i, "content": text, **flags[text]} for text, i in in_order]
    for text, entry in base["post_processor"]["special_tokens"].items():
        entry["ids"] = [specials[text]]
    path.write_text(json.dumps(base, ensure_ascii=False), encoding="utf-8")
    return path


def turbo_config(dims=TURBO_DIMS) -> dict:
    """openai/whisper-large-v3-turbo's ``config.json`` (a ``WhisperConfig``), with ``dims``' encoder depth."""
    return {
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "apply_spec_augment": False,
        "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0,
        "begin_suppress_tokens": [220, V3_IDS["eot"]],
        "bos_token_id": V3_IDS["eot"],
        "d_model": dims.n_audio_state,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "decoder_layerdrop": 0.0,
        "decoder_layers": dims.n_text_layer,
        "decoder_start_token_id": V3_IDS["sot"],
        "dropout": 0.0,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "encoder_layerdrop": 0.0,
        "encoder_layers": dims.n_audio_layer,
        "eos_token_id": V3_IDS["eot"],
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "median_filter_width": 7,
        "model_type": "whisper",
        "num_hidden_layers": dims.n_audio_layer,
        "num_mel_bins": dims.n_mels,
        "pad_token_id": V3_IDS["eot"],
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_weighted_layer_sum": False,
        "vocab_size": dims.n_vocab,
    }


def turbo_generation_config() -> dict:
    """openai/whisper-large-v3-turbo's ``generation_config.json``: ids from OpenAI's tokenizer, OpenAI's alignment
    heads for large-v3-turbo, and the suppressed tokens of OpenAI's ``suppress_tokens="-1"``."""
    tok = openai_v3_tokenizer()
    specials = tok.encoding._special_tokens
    suppress = sorted({*tok.non_speech_tokens, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech, tok.translate,
                       tok.transcribe})  # fmt: skip
    return {
        "alignment_heads": openai_alignment_heads("large-v3-turbo").tolist(),
        "begin_suppress_tokens": [220, tok.eot],
        "bos_token_id": tok.eot,
        "decoder_start_token_id": tok.sot,
        "eos_token_id": tok.eot,
        "forced_decoder_ids": None,
        "is_multilingual": True,
        "lang_to_id": {f"<|{code}|>": specials[f"<|{code}|>"] for code in tok.all_language_codes},
        "language": None,
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "no_timestamps_token_id": tok.no_timestamps,
        "pad_token_id": tok.eot,
        "prev_sot_token_id": tok.sot_prev,
        "return_timestamps": False,
        "suppress_tokens": suppress,
        "task": None,
        "task_to_id": {"transcribe": tok.transcribe, "translate": tok.translate},
    }


def write_turbo_folder(folder: pathlib.Path, seed: int = TURBO_SEED) -> pathlib.Path:
    """The random-weight turbo as a Hugging Face folder in ``folder`` (created); returns it."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_v3_tokenizer(folder / "v3-tokenizer.json")
    write_hf_folder(folder, random_state_dict(TURBO_DIMS, seed=seed), TURBO_DIMS, turbo_generation_config(), tokenizer)
    tokenizer.unlink()
    (folder / "config.json").write_text(json.dumps(turbo_config(), indent=2))
    return folder
