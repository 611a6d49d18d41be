"""Random-weight wav2vec2-family folders in the hub's layout (``engine.models.common.random_weights``; ``babelgrid
random-model --kind wav2vec2``), written with NumPy.

The files are those ``save_pretrained`` and the hub give: ``config.json`` (``Wav2Vec2Config`` / ``HubertConfig``),
``model.safetensors`` (the positional convolution's weight norm stored as ``parametrizations.weight.original0`` /
``original1``, as transformers 4.3x+ saves it), ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``) and, for
a CTC model, ``vocab.json`` and ``tokenizer_config.json`` (``Wav2Vec2CTCTokenizer``). Four kinds, one a layout the
loader tells apart:

- ``wav2vec2`` (``facebook/wav2vec2-base-960h``): ``Wav2Vec2ForCTC``, the base models' group norm and post-LN
  layers, an upper-case character vocabulary with ``<pad>`` (id 0) the blank and ``|`` between words;
- ``hubert`` (``facebook/hubert-large-ll60k``): ``HubertModel`` (no prefix, no head), the large models' layer norms
  and pre-LN layers;
- ``mms`` (``facebook/mms-1b-all``): ``Wav2Vec2ForCTC`` with an attention adapter in every layer
  (``adapter_attn_dim`` 16), one vocabulary per language nested in ``vocab.json`` (``target_lang`` eng), and an
  ``adapter.<lang>.safetensors`` for each of the demo set's languages (``--adapter deu``);
- ``omnilingual`` (``aadel4/omniASR-CTC-300M-v2``): ``Wav2Vec2ForCTC`` as the Omnilingual ASR conversions write it:
  pre-LN, ``pad_token_id`` 0, a SentencePiece character vocabulary whose id 0 ``<s>`` is the blank and ``▁`` the word
  delimiter.

The feature encoder keeps its seven convolutions' kernels and strides (20 ms frames) with ``--width`` channels each
(512 in the released models); the positional convolution keeps its 128 taps in 16 groups, so ``--width`` must be a
multiple of 16. The feed-forward is 4 x ``--width``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import (
    RandomKind,
    Sizes,
    random_tensors,
    save_weights,
    write_checkpoint,
    write_json,
)
from engine.models.wav2vec2.checkpoints import adapter_shapes, expected_shapes
from engine.models.wav2vec2.config import dims_from_hf_config
from engine.models.wav2vec2.features import PREPROCESSOR_FILE

POSITION = "encoder.pos_conv_embed.conv"
ADAPTER_DIM = 16  # mms-1b-all's adapter_attn_dim
# The demo set's languages (engine.data.synth.sentences.DEMO_LANGUAGES) as MMS names its adapters (ISO 639-3).
MMS_LANGUAGES = ("eng", "deu", "spa", "ita", "pol", "swe", "tur", "rus")
LATIN = tuple("abcdefghijklmnopqrstuvwxyz'")
EXTRA_LETTERS = {"deu": "äöüß", "spa": "áéíñóúü", "ita": "àèéìòù", "pol": "ąćęłńóśźż", "swe": "åäö", "tur": "çğıöşü"}
CYRILLIC = tuple(chr(c) for c in range(0x430, 0x450)) + ("ё",)


def _config(model_type: str, architecture: str, sizes: Sizes, large: bool, **extra) -> dict:
    """A ``Wav2Vec2Config`` / ``HubertConfig`` dict: the base models' layout (group norm, post-LN, no conv bias) or
    the large ones' (layer norms, pre-LN, conv bias)."""
    return {
        "model_type": model_type, "architectures": [architecture], "hidden_size": sizes.width,
        "num_hidden_layers": sizes.layers, "num_attention_heads": sizes.heads, "intermediate_size": 4 * sizes.width,
        "hidden_act": "gelu", "conv_dim": [sizes.width] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": large, "feat_extract_norm": "layer" if large else "group",
        "feat_extract_activation": "gelu", "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": large, "layer_norm_eps": 1e-5, **extra,
    }  # fmt: skip


def _weights(config: dict, vocab_size: int | None, rng: np.random.Generator, prefix: str) -> dict[str, np.ndarray]:
    """The model's tensors as the files name them: ``prefix`` (``wav2vec2.`` for a ``*ForCTC`` model) before the
    base model's, ``lm_head.*`` without it, the positional convolution's weight split into magnitude and direction."""
    groups = config["num_conv_pos_embedding_groups"]
    if config["hidden_size"] % groups:
        raise ValueError(f"the positional convolution has {groups} groups, as the released models': width "
                         f"{config['hidden_size']} must be a multiple of {groups}")  # fmt: skip
    dims = dims_from_hf_config(config)
    sd = random_tensors(expected_shapes(dims, vocab_size), rng)
    direction = sd.pop(f"{POSITION}.weight")
    magnitude = np.sqrt(np.square(direction).sum(axis=(0, 1), keepdims=True))  # weight_norm(dim=2): g * v / |v| = v
    sd[f"{POSITION}.parametrizations.weight.original0"] = magnitude.astype(np.float32)
    sd[f"{POSITION}.parametrizations.weight.original1"] = direction
    return {k if k.startswith("lm_head.") else prefix + k: v for k, v in sd.items()}


def _features(folder: pathlib.Path, attention_mask: bool) -> None:
    write_json(folder / PREPROCESSOR_FILE, {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": attention_mask,
    })  # fmt: skip


def _tokenizer(folder: pathlib.Path, vocab: dict, **config) -> None:
    write_json(folder / "vocab.json", vocab)
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "Wav2Vec2CTCTokenizer", "unk_token": "<unk>",
               "bos_token": "<s>", "eos_token": "</s>", "replace_word_delimiter_char": " ", **config})  # fmt: skip


def _write_wav2vec2(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *(c.upper() for c in LATIN)]
    config = _config("wav2vec2", "Wav2Vec2ForCTC", sizes, large=False, vocab_size=len(tokens), pad_token_id=0)
    write_checkpoint(folder, _weights(config, len(tokens), rng, "wav2vec2."), config)
    _features(folder, attention_mask=False)
    _tokenizer(folder, {t: i for i, t in enumerate(tokens)}, pad_token="<pad>", word_delimiter_token="|",
               do_lower_case=False)  # fmt: skip


def _write_hubert(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    config = _config("hubert", "HubertModel", sizes, large=True, feat_proj_layer_norm=True)
    write_checkpoint(folder, _weights(config, None, rng, ""), config)
    _features(folder, attention_mask=True)


def _mms_tokens(lang: str) -> list[str]:
    letters = CYRILLIC if lang == "rus" else LATIN + tuple(EXTRA_LETTERS.get(lang, ""))
    return ["<pad>", "<s>", "</s>", "<unk>", "|", *letters]


def _write_mms(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    vocabs = {lang: {t: i for i, t in enumerate(_mms_tokens(lang))} for lang in MMS_LANGUAGES}
    n_eng = len(vocabs["eng"])
    config = _config("wav2vec2", "Wav2Vec2ForCTC", sizes, large=True, adapter_attn_dim=ADAPTER_DIM,
                     vocab_size=n_eng, pad_token_id=0)  # fmt: skip
    write_checkpoint(folder, _weights(config, n_eng, rng, "wav2vec2."), config)
    dims = dims_from_hf_config(config)
    for lang, vocab in vocabs.items():  # what load_adapter(lang) replaces: every layer's adapter and lm_head
        shapes = {f"wav2vec2.{k}": s for i in range(dims.num_hidden_layers) for k, s in adapter_shapes(dims, i).items()}
        shapes |= {"lm_head.weight": (len(vocab), dims.hidden_size), "lm_head.bias": (len(vocab),)}
        save_weights(folder / f"adapter.{lang}.safetensors", random_tensors(shapes, rng))
    _features(folder, attention_mask=True)
    _tokenizer(folder, vocabs, pad_token="<pad>", word_delimiter_token="|", do_lower_case=False, target_lang="eng")


def _write_omnilingual(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", *LATIN, *"-.,?!", *CYRILLIC]
    config = _config("wav2vec2", "Wav2Vec2ForCTC", sizes, large=True, vocab_size=len(tokens), pad_token_id=0,
                     bos_token_id=0, eos_token_id=2)  # fmt: skip
    write_checkpoint(folder, _weights(config, len(tokens), rng, "wav2vec2."), config)
    _features(folder, attention_mask=False)
    _tokenizer(folder, {t: i for i, t in enumerate(tokens)}, pad_token="<s>", word_delimiter_token="\u2581",
               do_lower_case=False)  # fmt: skip


SIZES = Sizes(2, 64, 4)
KINDS = (
    RandomKind("wav2vec2", "facebook/wav2vec2-base-960h", SIZES, _write_wav2vec2),
    RandomKind("hubert", "facebook/hubert-large-ll60k", SIZES, _write_hubert),
    RandomKind("mms", "facebook/mms-1b-all", SIZES, _write_mms,
               note=f"adapters for {', '.join(MMS_LANGUAGES)} (--adapter LANG)"),
    RandomKind("omnilingual", "aadel4/omniASR-CTC-300M-v2", SIZES, _write_omnilingual),
)  # fmt: skip
