"""Text of Parakeet's and Canary's token ids, as transformers' tokenizers of these checkpoints decode them.

Both models' hub folders carry their SentencePiece vocabulary converted to a ``tokenizers`` file, ``tokenizer.json``
(transformers' ``ParakeetConverter`` / ``CanaryConverter``: a BPE model with byte fallback, the control and
user-defined pieces as added tokens, the ``▁`` word boundary undone by its decoder), and ``tokenizer_config.json``
(the pad token, ``clean_up_tokenization_spaces``). transformers' ``ParakeetTokenizer`` and Canary's
``TokenizersBackend`` decode through that file's own decoder; so does this module, with the ``tokenizers`` library
(a babelgrid dependency: no SentencePiece model is read).

``ctc_text(ids)`` is ``ParakeetProcessor.batch_decode(ids, skip_special_tokens=True)`` on the frames' best ids, as
transformers documents ``ParakeetForCTC.generate``'s output to be read: runs of one id collapse to one
(``group_tokens``), the blank (the tokenizer's pad token, ``pad_token_id`` in config.json) is dropped, and the rest is
decoded without special tokens. ``text(ids)`` is the same decoding without the CTC steps (Canary's generated tokens).
transformers' ``clean_up_tokenization`` is applied only where it applies it: asked for by ``tokenizer_config.json``
and the model not BPE (transformers skips it for BPE, which it would corrupt).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
from collections.abc import Sequence

import tokenizers

from engine.errors import CheckpointError
from engine.models.common.io import read_json
from engine.models.common.tokens import clean_up_tokenization

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A checkpoint's ``tokenizer.json`` and what ``tokenizer_config.json`` says of decoding."""

    backend: tokenizers.Tokenizer = dataclasses.field(repr=False)
    pad_id: int | None  # the tokenizer's pad token (Parakeet-CTC's blank), None where it names none
    clean_up: bool  # transformers' clean_up_tokenization applies (asked for, and the model is not BPE)

    @classmethod
    def from_folder(cls, folder: pathlib.Path, name: str) -> Tokenizer:
        file = folder / TOKENIZER_FILE
        if not file.is_file():
            raise CheckpointError(
                f"model {name!r} has no {TOKENIZER_FILE} in '{folder}': its token ids cannot be read as text; copy "
                "the hub folder's tokenizer.json and tokenizer_config.json beside the weights"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own Exception for a bad file
            raise CheckpointError(f"'{file}' cannot be read by the tokenizers library ({e}); fetch it again") from None
        config_file = folder / TOKENIZER_CONFIG_FILE
        config = read_json(config_file) if config_file.is_file() else {}
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = backend.token_to_id(str(pad)) if pad is not None else None
        if pad is not None and pad_id is None:
            raise CheckpointError(f"'{config_file}' names pad_token {pad!r}, which '{file}' does not hold")
        bpe = isinstance(backend.model, tokenizers.models.BPE)
        return cls(backend, pad_id, bool(config.get("clean_up_tokenization_spaces", False)) and not bpe)

    def text(self, ids: Sequence[int]) -> str:
        """``tokenizer.decode(ids, skip_special_tokens=True)``."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=True)
        return clean_up_tokenization(text) if self.clean_up else text

    def ctc_text(self, ids: Sequence[int], blank_id: int) -> str:
        """Greedy CTC text of one utterance's best ids ``i[frame]``: repeats collapsed, ``blank_id`` dropped, the rest
        decoded (``ParakeetProcessor.batch_decode``)."""
        kept = [int(i) for i, _ in itertools.groupby(int(i) for i in ids)]
        return self.text([i for i in kept if i != blank_id])

    def check_blank(self, blank_id: int, name: str) -> None:
        """Warns when config.json's ``pad_token_id`` (the blank the CTC head was trained with, dropped here) is not
        the tokenizer's pad token (the one transformers' ``ParakeetTokenizer`` drops)."""
        if self.pad_id is not None and self.pad_id != blank_id:
            log.warning(
                "model %r: config.json's pad_token_id=%d (the CTC blank, dropped from the lens's texts) is not the "
                "tokenizer's pad token (id %d), which transformers' ParakeetTokenizer drops; fix one of them if the "
                "transcripts show the blank", name, blank_id, self.pad_id,
            )  # fmt: skip
