"""Whisper's tokenizer: special tokens and byte-level BPE (languages and FLEURS codes: ``engine.languages``).

Token id layout (OpenAI's; ``WhisperTokenizer`` checks it when built and fails loudly otherwise):

- ``0 .. eot-1``: byte-level BPE text tokens (GPT-2's 50256 for English-only models, 50257 multilingual).
- ``eot`` ``<|endoftext|>``, then ``sot = eot + 1`` ``<|startoftranscript|>``.
- ``sot + 1 .. sot + num_languages``: ``<|en|>``, ``<|zh|>``, ... in ``LANGUAGES`` order.
- ``translate, transcribe, sot_lm, sot_prev, no_speech, no_timestamps``: consecutive.
- ``timestamp_begin = no_timestamps + 1``: ``<|0.00|>``, then one token per 0.02 s up to ``<|30.00|>``.

So ``id >= eot`` means "special" and ``id >= timestamp_begin`` means "timestamp", as OpenAI's decoder assumes.
Ids are looked up by their text in the checkpoint's vocabulary, never hard-coded.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import string
import types
from collections.abc import Iterable, Sequence

import tokenizers

from engine.errors import CheckpointError, LanguageError
from engine.languages import LANGUAGES, NO_SPACE_LANGUAGES
from engine.models.whisper.vocab import (
    TASKS,
    bytes_to_token_text,
    check_num_languages,
    special_ids,
    special_texts,
    token_bytes,
)

_SPECIAL_PATTERN = re.compile(r"<\|[^|<>]*\|>")


class WhisperTokenizer:
    """Whisper's tokenizer for one checkpoint: special ids, SOT sequences, encode/decode, word splits.

    Immutable: built once from a ``tokenizers.Tokenizer`` (copied, so later changes to it do not leak in).
    Decoding follows OpenAI's tiktoken semantics: token bytes are joined and decoded as UTF-8 with
    U+FFFD for incomplete characters.
    """

    __slots__ = (
        "_encoder",
        "_token_bytes",
        "_special_texts",
        "_multilingual",
        "_num_languages",
        "_ids",
        "_language_ids",
        "_language_codes",
        "_non_speech",
    )

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, *, multilingual: bool, num_languages: int, source: str = "tokenizer"
    ):
        """``num_languages``: 99, or 100 from large-v3 on (``ModelDimensions.num_languages``); ``source`` names the
        tokenizer in error messages."""
        self._setup(tokenizers.Tokenizer.from_str(tokenizer.to_str()), multilingual, num_languages, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, multilingual: bool, num_languages: int) -> WhisperTokenizer:
        """From a Hugging Face ``tokenizer.json`` (or a checkpoint directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise CheckpointError(f"no tokenizer.json at {path!r}; pass the checkpoint's tokenizer.json or its folder")
        try:
            encoder = tokenizers.Tokenizer.from_file(path)
        except Exception as e:
            raise CheckpointError(f"{path!r} is not a Hugging Face tokenizers file: {e}") from e
        return cls._from_owned(encoder, multilingual, num_languages, repr(path))

    @classmethod
    def from_tiktoken(cls, path: str | os.PathLike, *, multilingual: bool, num_languages: int) -> WhisperTokenizer:
        """From OpenAI's ``multilingual.tiktoken`` / ``gpt2.tiktoken`` (``base64-token rank`` per line).

        The ranks become an equivalent ``tokenizers`` BPE; the special tokens are appended in OpenAI's order.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="ascii") as f:
                lines = [line for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read tiktoken file {path!r}: {e}") from e
        ranks: dict[bytes, int] = {}
        for line in lines:
            try:
                token, rank = line.split()
                # Not validate=True: multilingual.tiktoken holds the empty token "=" (rank 50256), as OpenAI reads it.
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise CheckpointError(f"{path!r}: line {line.strip()[:40]!r} is not 'base64-token rank': {e}") from e
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise CheckpointError(f"{path!r}: ranks are not 0..{len(ranks) - 1}, each once; is it a tiktoken file?")

        # tiktoken may merge any adjacent pair whose concatenation is a token, lowest rank of the concatenation
        # first. A tokenizers BPE holding every such split, ordered by that rank, merges the same way.
        merges = []
        for token, rank in ranks.items():
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in ranks and right in ranks:
                    merges.append((rank, ranks[left], ranks[right], left, right))
        merges.sort()
        model = tokenizers.models.BPE(
            vocab={bytes_to_token_text(token): rank for token, rank in ranks.items()},
            merges=[(bytes_to_token_text(left), bytes_to_token_text(right)) for *_, left, right in merges],
        )
        encoder = tokenizers.Tokenizer(model)
        # GPT-2's split pattern, which is also OpenAI's pat_str for both Whisper encodings.
        encoder.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        encoder.decoder = tokenizers.decoders.ByteLevel()
        specials = special_texts(check_num_languages(num_languages))
        encoder.add_special_tokens([tokenizers.AddedToken(text, normalized=False) for text in specials])
        return cls._from_owned(encoder, multilingual, num_languages, repr(path))

    @classmethod
    def _from_owned(cls, encoder, multilingual, num_languages, source) -> WhisperTokenizer:
        self = cls.__new__(cls)
        self._setup(encoder, multilingual, num_languages, source)
        return self

    def _setup(self, encoder: tokenizers.Tokenizer, multilingual: bool, num_languages: int, source: str) -> None:
        check_num_languages(num_languages)
        # encode() passes add_special_tokens=False, which skips the file's sot/notimestamps/eot template.
        encoder.no_padding()
        encoder.no_truncation()
        vocab = encoder.get_vocab(with_added_tokens=True)
        ids, language_ids = special_ids(vocab, num_languages, source)
        added = {i: t.content for i, t in encoder.get_added_tokens_decoder().items()}
        table = token_bytes(vocab, added, ids["timestamp_begin"], source)
        codes = tuple(LANGUAGES)[:num_languages]

        set_ = functools.partial(object.__setattr__, self)
        set_("_encoder", encoder)
        set_("_token_bytes", table)
        set_("_special_texts", frozenset(b.decode() for b in table[ids["eot"] :]) | set(added.values()))
        set_("_multilingual", bool(multilingual))
        set_("_num_languages", num_languages)
        set_("_ids", types.MappingProxyType(ids))
        set_("_language_ids", types.MappingProxyType(dict(zip(codes, language_ids, strict=True))))
        set_("_language_codes", types.MappingProxyType(dict(zip(language_ids, codes, strict=True))))
        set_("_non_speech", self._compute_non_speech_tokens())

    def __setattr__(self, name, value):
        raise AttributeError(f"WhisperTokenizer is immutable; cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"WhisperTokenizer is immutable; cannot delete {name!r}")

    def __reduce__(self):
        # Default slot pickling goes through __setattr__; rebuild from the encoder instead (for worker processes).
        return _restore, (self._encoder.to_str(), self._multilingual, self._num_languages)

    def __repr__(self) -> str:
        return (
            f"WhisperTokenizer(multilingual={self._multilingual}, num_languages={self._num_languages}, "
            f"n_vocab={self.n_vocab})"
        )

    # -- special ids --------------------------------------------------------------------------------

    @property
    def multilingual(self) -> bool:
        return self._multilingual

    @property
    def num_languages(self) -> int:
        return self._num_languages

    @property
    def n_vocab(self) -> int:
        """Size of the model's output layer: text tokens, specials and 1501 timestamps."""
        return len(self._token_bytes)

    @property
    def eot(self) -> int:
        return self._ids["eot"]

    @property
    def sot(self) -> int:
        return self._ids["sot"]

    @property
    def sot_prev(self) -> int:
        return self._ids["sot_prev"]

    @property
    def sot_lm(self) -> int:
        return self._ids["sot_lm"]

    @property
    def no_speech(self) -> int:
        return self._ids["no_speech"]

    @property
    def no_timestamps(self) -> int:
        return self._ids["no_timestamps"]

    @property
    def transcribe(self) -> int:
        return self._ids["transcribe"]

    @property
    def translate(self) -> int:
        return self._ids["translate"]

    @property
    def timestamp_begin(self) -> int:
        return self._ids["timestamp_begin"]

    @property
    def language_tokens(self) -> tuple[int, ...]:
        """Ids of ``<|en|>``, ``<|zh|>``, ... for the first ``num_languages`` entries of ``LANGUAGES``.

        English-only vocabularies carry them too (OpenAI's layout), but those models never saw them in training.
        """
        return tuple(self._language_ids.values())

    def language_token(self, code: str) -> int:
        """Id of ``<|code|>``; ``LanguageError`` for unknown codes and for ``yue`` in 99-language models."""
        try:
            return self._language_ids[code]
        except (KeyError, TypeError):
            raise LanguageError(self._unknown_language_message(code)) from None

    def language_code(self, token_id: int) -> str:
        """Inverse of ``language_token``."""
        try:
            return self._language_codes[int(token_id)]
        except (KeyError, TypeError, ValueError):
            first, last = self.language_tokens[0], self.language_tokens[-1]
            raise LanguageError(f"token id {token_id!r} is not a language token (those are {first}..{last})") from None

    def _unknown_language_message(self, code) -> str:
        if code in LANGUAGES:
            return (
                f"language {code!r} ({LANGUAGES[code]}) is not in this {self._num_languages}-language model; "
                "use a checkpoint with more languages (Cantonese needs large-v3 or later)"
            )
        hint = ""
        if isinstance(code, str):
            names = {name: c for c, name in LANGUAGES.items()}
            if code.lower() in names:
                hint = f" (did you mean {names[code.lower()]!r}?)"
            elif "_" in code or "-" in code:
                hint = " (for FLEURS codes such as 'en_us' use fleurs_to_whisper first)"
        return f"unknown Whisper language code {code!r}{hint}; known: {', '.join(self._language_ids)}"

    def sot_sequence(
        self, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> tuple[int, ...]:
        """The decoder prompt: ``sot, <|lang|>, <|task|>[, notimestamps]``, or ``sot[, notimestamps]`` for
        English-only models (which take ``language`` None or ``"en"`` and only transcribe)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
        if not self._multilingual:
            if language not in (None, "en"):
                raise LanguageError(f"English-only model cannot take language {language!r}; use a multilingual one")
            if task != "transcribe":
                raise ValueError("English-only model cannot translate; use a multilingual checkpoint")
            sequence: tuple[int, ...] = (self.sot,)
        else:
            if language is None:
                raise LanguageError(
                    "a multilingual model needs a language in its SOT sequence; pass a code such as 'en', "
                    "or detect it from the logits after (sot,) over language_tokens"
                )
            sequence = (self.sot, self.language_token(language), self._ids[task])
        return sequence if timestamps else (*sequence, self.no_timestamps)

    # -- text -------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, with no special tokens added. Text spelling a special token is refused."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if "<|" in text:
            for match in _SPECIAL_PATTERN.findall(text):
                if match in self._special_texts:
                    raise ValueError(
                        f"text contains the special token {match}; build prompts with sot_sequence() and "
                        "concatenate ids instead of encoding special tokens as text"
                    )
        return self._encoder.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``. ``skip_special`` drops every id >= eot; otherwise specials are written out
        (``<|en|>``) and only timestamps are dropped, as OpenAI's ``Tokenizer.decode`` does."""
        limit = self.eot if skip_special else self.timestamp_begin
        return self._decode_bytes([i for i in self._check_ids(ids) if i < limit])

    def decode_with_timestamps(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with every special written out, timestamps as ``<|1.08|>``."""
        return self._decode_bytes(self._check_ids(ids))

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        checked = [int(i) for i in ids]
        bad = [i for i in checked if not 0 <= i < len(self._token_bytes)]
        if bad:
            raise ValueError(f"token ids {bad[:10]} are outside 0..{len(self._token_bytes) - 1}; strip padding first")
        return checked

    def _decode_bytes(self, ids: Sequence[int]) -> str:
        return b"".join(self._token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    # -- suppression sets ----------------------------------------------------------------------------

    @property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Ids of speaker tags, music notes and brackets (OpenAI's ``Tokenizer.non_speech_tokens``), sorted."""
        return self._non_speech

    @property
    def suppress_tokens(self) -> tuple[int, ...]:
        """OpenAI's default ``suppress_tokens="-1"`` set: non-speech tokens plus the specials that must never be
        sampled (task, sot, sot_prev, sot_lm, no_speech), sorted."""
        specials = {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech}
        return tuple(sorted(set(self._non_speech) | specials))

    @property
    def suppress_at_begin(self) -> tuple[int, ...]:
        """Ids suppressed at the first sampled position (OpenAI's ``SuppressBlank``): a lone space and eot."""
        return (*self.encode(" "), self.eot)

    def _compute_non_speech_tokens(self) -> tuple[int, ...]:
        # OpenAI's recipe, kept verbatim so that the set matches theirs token for token.
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # U+2640..U+267F symbols share their first two UTF-8 bytes, so suppressing the first token is safe
        # even where a symbol takes several tokens.
        miscellaneous = set("♩♪♫♬♭♮♯")
        # Hyphens and apostrophes stay allowed inside words, not at the start of one.
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # -- word splitting (word timestamps) --------------------------------------------------------------

    def split_to_word_tokens(
        self, tokens: Sequence[int], language: str | None = None
    ) -> tuple[list[str], list[list[int]]]:
        """Group ``tokens`` into words, as OpenAI's ``Tokenizer.split_to_word_tokens``.

        zh/ja/th/lo/my/yue split wherever the decoded text is complete UTF-8; other languages (and
        ``language=None``, English-only models) split at spaces and punctuation. Returns ``(words, word_tokens)``.
        """
        if language in NO_SPACE_LANGUAGES:
            return self._split_tokens_on_unicode(tokens)
        return self._split_tokens_on_spaces(tokens)

    def _split_tokens_on_unicode(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        tokens = self._check_ids(tokens)
        decoded_full = self.decode_with_timestamps(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = self.decode_with_timestamps(current)
            replacement = decoded.find("\ufffd")
            # A U+FFFD that is also in the full text is a real invalid byte, not a half-decoded character.
            # The bounds check is faster-whisper's: OpenAI's code would raise IndexError there instead.
            if replacement < 0 or (
                offset + replacement < len(decoded_full) and decoded_full[offset + replacement] == "\ufffd"
            ):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens

    def _split_tokens_on_spaces(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        subwords, subword_tokens_list = self._split_tokens_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, subword_tokens in zip(subwords, subword_tokens_list, strict=True):
            special = subword_tokens[0] >= self.eot
            with_space = subword.startswith(" ")
            punctuation = subword.strip() in string.punctuation
            if special or with_space or punctuation or not words:
                words.append(subword)
                word_tokens.append(subword_tokens)
            else:
                words[-1] += subword
                word_tokens[-1].extend(subword_tokens)
        return words, word_tokens


def _restore(encoder_json: str, multilingual: bool, num_languages: int) -> WhisperTokenizer:
    encoder = tokenizers.Tokenizer.from_str(encoder_json)
    return WhisperTokenizer._from_owned(encoder, multilingual, num_languages, "unpickled tokenizer")
