"""Greedy CTC decoding with a checkpoint's own vocabulary, as transformers' ``Wav2Vec2CTCTokenizer`` decodes.

The vocabulary is read from the folder's ``vocab.json`` (``{token: id}``, or MMS's nested ``{lang: {token: id}}``)
and ``tokenizer_config.json`` (pad, unk and word delimiter tokens, ``do_lower_case``, ``target_lang``, added tokens),
with plain ``json``: no tokenizer library is needed for a character vocabulary.

Decoding ids ``i32[frame]`` (the argmax of the CTC logits over an utterance's valid frames) follows
``Wav2Vec2CTCTokenizer.decode``: ids become token strings, runs of the same string collapse to one, the pad token
(the CTC blank) is dropped, the word delimiter (``|``) becomes a space, and the text is joined and stripped
(lowercased with ``do_lower_case``; transformers' ``clean_up_tokenization`` applied when the config asks for it).

The blank is whichever token ``tokenizer_config.json`` names ``pad_token``, as in transformers: ``<pad>`` for MMS and
the XLS-R fine-tunes, ``<s>`` (id 0, fairseq2's BOS) for the Omnilingual ASR conversions, whose word delimiter is
SentencePiece's ``▁``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import read_json
from engine.models.common.tokens import clean_up_tokenization

VOCAB_FILE = "vocab.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclasses.dataclass(frozen=True)
class CTCVocab:
    """A CTC vocabulary: id -> token string, and how ``Wav2Vec2CTCTokenizer`` turns tokens into text."""

    tokens: Mapping[int, str] = dataclasses.field(repr=False)  # vocabulary ids first, then added tokens
    pad_token: str = "<pad>"  # the CTC blank
    unk_token: str = "<unk>"  # what an id outside the vocabulary decodes to
    word_delimiter_token: str | None = "|"
    replace_word_delimiter_char: str = " "
    do_lower_case: bool = False
    clean_up_tokenization_spaces: bool = False

    @property
    def blank_id(self) -> int | None:
        return next((i for i, t in self.tokens.items() if t == self.pad_token), None)

    @classmethod
    def from_folder(cls, folder: pathlib.Path, lang: str | None = None) -> CTCVocab:
        """The vocabulary of ``folder``; ``lang`` picks one of an MMS nested vocabulary (default: the tokenizer
        config's ``target_lang``)."""
        vocab_file = folder / VOCAB_FILE
        if not vocab_file.is_file():
            raise CheckpointError(f"checkpoint dir '{folder}' has no {VOCAB_FILE}; CTC decoding needs its vocabulary")
        vocab = read_json(vocab_file)
        config_file = folder / TOKENIZER_CONFIG_FILE
        config = read_json(config_file) if config_file.is_file() else {}
        if vocab and all(isinstance(v, dict) for v in vocab.values()):  # MMS: one vocabulary per language
            lang = lang or config.get("target_lang")
            if lang not in vocab:
                raise CheckpointError(
                    f"'{vocab_file}' holds one vocabulary per language; pick one of {sorted(vocab)[:12]}... "
                    f"(the adapter language), got {lang!r}"
                )
            vocab = vocab[lang]
        try:
            tokens = {int(i): str(t) for t, i in vocab.items()}
        except (TypeError, ValueError):
            raise CheckpointError(f"'{vocab_file}' must map token strings to integer ids") from None
        for i, added in (config.get("added_tokens_decoder") or {}).items():
            tokens.setdefault(int(i), _content(added))  # vocabulary tokens take precedence, as transformers has it

        def token(name, default):
            value = config.get(name, default)
            return None if value is None else _content(value)

        return cls(
            tokens=tokens,
            pad_token=token("pad_token", "<pad>"),
            unk_token=token("unk_token", "<unk>"),
            word_delimiter_token=token("word_delimiter_token", "|"),
            replace_word_delimiter_char=str(config.get("replace_word_delimiter_char", " ")),
            do_lower_case=bool(config.get("do_lower_case", False)),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Greedy CTC text of one utterance's best ids ``i32[frame]``."""
        strings = [self.tokens.get(int(i), self.unk_token) for i in ids]
        chars = [t for t, _ in itertools.groupby(strings) if t != self.pad_token]
        chars = [self.replace_word_delimiter_char if c == self.word_delimiter_token else c for c in chars]
        text = "".join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text

    def decode_logits(self, logits: np.ndarray, frames: Sequence[int]) -> list[str]:
        """Greedy CTC texts of ``logits f32[batch, frame, vocab]`` over each utterance's ``frames[i]`` valid frames."""
        ids = np.asarray(logits).argmax(-1)
        return [self.decode(row[: int(n)]) for row, n in zip(ids, frames, strict=True)]


def _content(token) -> str:
    """A token as tokenizer_config.json writes it: a string, or an AddedToken dict with its ``content``."""
    return str(token["content"]) if isinstance(token, dict) else str(token)
