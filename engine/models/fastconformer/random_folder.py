"""Random-weight Parakeet and Canary folders in the hub's layout (``engine.models.common.random_weights``;
``babelgrid random-model --kind parakeet``), written with NumPy.

- ``parakeet`` (``nvidia/parakeet-ctc-0.6b``): ``config.json`` of a ``ParakeetForCTC`` (80 mel bins, inputs scaled by
  sqrt(width)), ``encoder.*`` and ``ctc_head.*`` in ``model.safetensors``, a ``tokenizer.json`` whose pad token
  ``<pad>``, the last id, is the CTC blank (``pad_token_id``);
- ``canary`` (``nvidia/canary-1b-v2``): ``config.json`` of a ``CanaryForConditionalGeneration`` (128 mel bins, no
  input scale), ``model.encoder.*``, ``model.decoder.*`` and ``proj_out.bias`` (the output weight tied to the
  embedding), ``generation_config.json`` and a ``tokenizer.json`` with Canary's control tokens in its order
  (``<|startofcontext|>`` 7 starts the prompt, ``<|endoftext|>`` 3 ends it) and the 25 languages' ``<|xx|>`` tokens,
  so that decode runs on its stores. The decoder has ``--layers`` blocks of the encoder's width;
- ``cohere-asr`` (``CohereLabs/cohere-transcribe-03-2026``): ``config.json`` of a ``CohereAsrForConditionalGeneration``
  (128 mel bins, no input scale; the decoder's sizes at the top level, ``proj_out`` untied), every tensor under the
  NeMo names ``save_pretrained`` writes (``engine.models.fastconformer.cohere``), the decoder's position table a
  fixed sinusoid (Canary's ``decoder.positions``; the released model stores NeMo's fixed sinusoids there, trained
  as a parameter in transformers) rather than noise, and a ``tokenizer.json``
  with Canary's control tokens and Cohere's 14 languages. The decoder has ``--layers`` blocks of the encoder's width
  (the released one is 1024 wide against the encoder's 1280: ``model.decoder.proj`` maps between them either way).

Both carry ``preprocessor_config.json`` (``ParakeetFeatureExtractor``) and ``tokenizer_config.json``. The tokenizers
are BPE models over single letters and ``▁`` + letter pieces (the hub's are SentencePiece BPEs of 1024 and 16384
pieces): the ids a random model emits decode to letters. The encoder keeps the real numerics (8x subsampling by three
stride-2 convolutions, depthwise kernel 9, silu) with ``--width`` subsampling channels (256 in the released models)
and a feed-forward 4 x ``--width``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tokenizers

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint, write_json
from engine.models.fastconformer import cohere
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.config import CANARY, CTC, ENCODER, HUB_IDS, PREFIX, config_from_hf
from engine.models.fastconformer.decoder import decoder_config, decoder_shapes, positions
from engine.models.fastconformer.model import state_shapes

LETTERS = tuple("abcdefghijklmnopqrstuvwxyz'")
PIECES = (*LETTERS, *(f"\u2581{c}" for c in LETTERS))
# Canary-1B v2's control tokens, in its order from id 1 (<unk> is 0): pad 2, eos 3, bos 4, decoder start 7.
CANARY_SPECIAL = ("<|nospeech|>", "<pad>", "<|endoftext|>", "<|startoftranscript|>", "<|pnc|>", "<|nopnc|>",
                  "<|startofcontext|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>",
                  "<|nodiarize|>", "<|emo:undefined|>")  # fmt: skip
CANARY_LANGUAGES = ("bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "hr", "hu", "it", "lt", "lv", "mt",
                    "nl", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "uk")  # fmt: skip


def _encoder(sizes: Sizes, n_mels: int, scale_input: bool) -> dict:
    return {
        "model_type": ENCODER, "hidden_size": sizes.width, "num_hidden_layers": sizes.layers,
        "num_attention_heads": sizes.heads, "intermediate_size": 4 * sizes.width, "hidden_act": "silu",
        "attention_bias": True, "convolution_bias": True, "conv_kernel_size": 9, "subsampling_factor": 8,
        "subsampling_conv_channels": sizes.width, "subsampling_conv_kernel_size": 3, "subsampling_conv_stride": 2,
        "num_mel_bins": n_mels, "scale_input": scale_input,
    }  # fmt: skip


def _tokenizer(folder: pathlib.Path, tokens: list[str], special: list[str], **config) -> None:
    """``tokenizer.json`` (a BPE over ``tokens``, ``▁`` + letter merged, ``special`` as added special tokens) and
    ``tokenizer_config.json`` (``config``)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [("\u2581", c) for c in LETTERS if "\u2581" in vocab and f"\u2581{c}" in vocab]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True) for t in special])
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {"clean_up_tokenization_spaces": False, "unk_token": "<unk>",
                                                  **config})  # fmt: skip


def _features(folder: pathlib.Path, n_mels: int) -> None:
    extractor = {"feature_extractor_type": "ParakeetFeatureExtractor", "feature_size": n_mels, "padding_value": 0.0,
                 "return_attention_mask": True, **feats.EXTRACTOR}  # fmt: skip
    write_json(folder / "preprocessor_config.json", extractor)


def _write_parakeet(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    tokens = ["<unk>", "\u2581", *PIECES, "<pad>"]
    config = {"model_type": CTC, "architectures": ["ParakeetForCTC"], "encoder_config": _encoder(sizes, 80, True),
              "vocab_size": len(tokens), "pad_token_id": len(tokens) - 1}  # fmt: skip
    shapes = state_shapes(config_from_hf(config))
    tensors = {k if k.startswith("ctc_head.") else PREFIX[CTC] + k: v for k, v in random_tensors(shapes, rng).items()}
    write_checkpoint(folder, tensors, config)
    _features(folder, 80)
    _tokenizer(folder, tokens, ["<unk>", "<pad>"], pad_token="<pad>")


def _write_canary(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    languages = [f"<|{code}|>" for code in CANARY_LANGUAGES]
    tokens = ["<unk>", *CANARY_SPECIAL, *languages, "\u2581", *PIECES]
    decoder = {"vocab_size": len(tokens), "hidden_size": sizes.width, "intermediate_size": 4 * sizes.width,
               "num_hidden_layers": sizes.layers, "num_attention_heads": sizes.heads,
               "num_key_value_heads": sizes.heads, "head_dim": sizes.width // sizes.heads, "hidden_act": "relu",
               "max_position_embeddings": 1024, "attention_bias": True}  # fmt: skip
    ids = {"pad_token_id": 2, "eos_token_id": 3, "bos_token_id": 4, "decoder_start_token_id": 7}
    config = {"model_type": CANARY, "architectures": ["CanaryForConditionalGeneration"],
              "encoder_config": _encoder(sizes, 128, False), "decoder_config": decoder, "vocab_size": len(tokens),
              "tie_word_embeddings": True, **ids}  # fmt: skip
    encoder = {PREFIX[CANARY] + k: v for k, v in random_tensors(state_shapes(config_from_hf(config)), rng).items()}
    tensors = encoder | random_tensors(decoder_shapes(decoder_config(config)), rng)
    write_checkpoint(folder, tensors, config, {"generation_config.json": {**ids, "max_length": 1024}})
    _features(folder, 128)
    _tokenizer(folder, tokens, ["<unk>", *CANARY_SPECIAL, *languages], bos_token="<|startoftranscript|>",
               eos_token="<|endoftext|>", pad_token="<pad>")  # fmt: skip


def _write_cohere(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    languages = [f"<|{code}|>" for code in cohere.LANGUAGES]
    tokens = ["<unk>", *CANARY_SPECIAL, *languages, "\u2581", *PIECES]
    decoder = {"vocab_size": len(tokens), "hidden_size": sizes.width, "intermediate_size": 4 * sizes.width,
               "num_hidden_layers": sizes.layers, "num_attention_heads": sizes.heads,
               "num_key_value_heads": sizes.heads, "head_dim": sizes.width // sizes.heads, "hidden_act": "relu",
               "max_position_embeddings": 1024, "attention_bias": True}  # fmt: skip
    ids = {k: v for k, v in cohere.IDS.items() if k != "tie_word_embeddings"}
    config = {"model_type": cohere.COHERE, "architectures": ["CohereAsrForConditionalGeneration"],
              "encoder_config": _encoder(sizes, 128, False), **decoder, "is_encoder_decoder": True,
              "tie_word_embeddings": False, **ids}  # fmt: skip
    shapes = {PREFIX[cohere.COHERE] + k: v for k, v in state_shapes(config_from_hf(config)).items()}
    shapes |= decoder_shapes(decoder_config(config))
    tensors = random_tensors(shapes, rng)
    tensors["model.decoder.pos_emb.weight"] = positions(decoder["max_position_embeddings"], sizes.width)
    tensors = {cohere.stored_name(k): v for k, v in tensors.items()}
    write_checkpoint(folder, tensors, config, {"generation_config.json": {**ids, "max_length": 1024}})
    _features(folder, 128)
    _tokenizer(folder, tokens, ["<unk>", *CANARY_SPECIAL, *languages], bos_token="<|startoftranscript|>",
               eos_token="<|endoftext|>", pad_token="<pad>")  # fmt: skip


KINDS = (
    RandomKind("parakeet", HUB_IDS[0], Sizes(2, 64, 4), _write_parakeet),
    RandomKind("canary", HUB_IDS[2], Sizes(2, 64, 4), _write_canary,
               note="a decoder of --layers blocks; a letters tokenizer with Canary's control and language tokens"),
    RandomKind("cohere-asr", cohere.HUB_ID, Sizes(2, 64, 4), _write_cohere,
               note="a decoder of --layers blocks; a letters tokenizer with Cohere's control and 14 language tokens"),
)  # fmt: skip
