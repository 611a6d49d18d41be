"""Random-weight Whisper folders in the hub's layout (``engine.models.common.random_weights``; ``babelgrid
random-model --kind whisper``), written with NumPy.

The files are a Hugging Face Whisper repository's: ``config.json`` (a ``WhisperConfig``), ``model.safetensors``
(``WhisperForConditionalGeneration``'s names, ``engine.models.whisper.checkpoints.export``), ``generation_config.json``
(language and task ids, alignment heads, the suppressed tokens) and ``tokenizer.json``. Two kinds:

- ``whisper`` (``openai/whisper-base``'s layout): 80 mel bins, the 99-language vocabulary of 51865 ids, as many
  decoder blocks as encoder blocks;
- ``whisper-turbo`` (``openai/whisper-large-v3-turbo``'s): 128 mel bins, the 100-language v3 vocabulary of 51866 ids
  (``<|yue|>`` moves every id from ``<|translate|>`` on by one), a 4-block decoder whatever the encoder's depth.

The tokenizer keeps OpenAI's id layout (50257 byte-level text tokens, then the special tokens in OpenAI's order,
``engine.models.whisper.vocab``) over a planted vocabulary: the 256 byte symbols, then pairs of them. Ids, specials
and timestamps are the real models'; the text of a random model's tokens is gibberish either way. The encoder's
positions are OpenAI's sinusoids, as the hub's files hold them; alignment heads are every head of the decoder's
second half.
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np
import tokenizers

from engine.languages import LANGUAGES
from engine.models.common.random_weights import RandomKind, Sizes, random_tensors
from engine.models.whisper.checkpoints.export import write_hf_folder
from engine.models.whisper.checkpoints.load import expected_shapes
from engine.models.whisper.dims import ModelDimensions, sinusoids
from engine.models.whisper.tokenizer import WhisperTokenizer
from engine.models.whisper.vocab import special_texts

N_TEXT = 50257  # byte-level BPE text tokens of every multilingual Whisper
TURBO_DECODER_LAYERS = 4


def dims_of(sizes: Sizes, *, n_mels: int, num_languages: int, text_layers: int | None) -> ModelDimensions:
    """The dims of a random Whisper: ``sizes`` on both sides (``text_layers`` decoder blocks where given)."""
    return ModelDimensions(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=sizes.width, n_audio_head=sizes.heads,
        n_audio_layer=sizes.layers, n_vocab=N_TEXT + len(special_texts(num_languages)), n_text_ctx=448,
        n_text_state=sizes.width, n_text_head=sizes.heads, n_text_layer=text_layers or sizes.layers,
    )  # fmt: skip


def write_tokenizer(path: pathlib.Path, num_languages: int) -> None:
    """A ``tokenizer.json`` with OpenAI's multilingual id layout over a planted byte-level vocabulary (the module
    docstring)."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    pairs = list(itertools.islice(itertools.product(alphabet, repeat=2), N_TEXT - len(alphabet)))
    vocab = {text: i for i, text in enumerate(alphabet + [a + b for a, b in pairs])}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, pairs))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    specials = special_texts(num_languages)
    tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True) for t in specials])
    tok.save(str(path))


def generation_config(tokenizer: WhisperTokenizer, dims: ModelDimensions) -> dict:
    """``generation_config.json`` as the hub's Whisper folders hold it, from the tokenizer's ids (what
    ``engine.models.whisper.checkpoints.export.generation_config`` writes for a loaded model)."""
    second_half = range(dims.n_text_layer // 2, dims.n_text_layer)
    return {
        "alignment_heads": [[layer, head] for layer in second_half for head in range(dims.n_text_head)],
        "begin_suppress_tokens": list(tokenizer.suppress_at_begin),
        "bos_token_id": tokenizer.eot,
        "decoder_start_token_id": tokenizer.sot,
        "eos_token_id": tokenizer.eot,
        "is_multilingual": True,
        "lang_to_id": {f"<|{c}|>": tokenizer.language_token(c) for c in list(LANGUAGES)[: dims.num_languages]},
        "max_length": dims.n_text_ctx,
        "no_timestamps_token_id": tokenizer.no_timestamps,
        "pad_token_id": tokenizer.eot,
        "prev_sot_token_id": tokenizer.sot_prev,
        "suppress_tokens": list(tokenizer.suppress_tokens),
        "task_to_id": {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate},
    }


def _writer(n_mels: int, num_languages: int, text_layers: int | None):
    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        dims = dims_of(sizes, n_mels=n_mels, num_languages=num_languages, text_layers=text_layers)
        sd = random_tensors(expected_shapes(dims), rng)
        sd["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        folder.mkdir(parents=True, exist_ok=True)
        write_tokenizer(folder / "tokenizer.json", num_languages)
        tokenizer = WhisperTokenizer.from_file(folder / "tokenizer.json", multilingual=True,
                                               num_languages=num_languages)  # fmt: skip
        write_hf_folder(folder, sd, dims, generation_config(tokenizer, dims))

    return write


KINDS = (
    RandomKind("whisper", "openai/whisper-base", Sizes(2, 64, 4), _writer(80, 99, None),
               note="a planted byte-level vocabulary in OpenAI's id layout"),
    RandomKind("whisper-turbo", "openai/whisper-large-v3-turbo", Sizes(2, 64, 4),
               _writer(128, 100, TURBO_DECODER_LAYERS),
               note="a 4-block decoder (turbo's) whatever --layers; the v3 ids over a planted vocabulary"),
)  # fmt: skip
