"""The decode job's settings (``DecodeConfig``) and the one-line error of a value it cannot run with."""

from __future__ import annotations

import dataclasses
import pathlib

from engine.errors import BabelgridError
from engine.models.whisper.decoding import TASKS
from engine.runtime.claims import DEFAULT_CLAIM_TTL
from engine.runtime.options import check_choice

SOURCES = ("audio",)
LN_POST = ("on", "off", "both")
LANGUAGE_MODES = ("forced", "detect")
COMPUTE_DTYPES = ("float32", "bfloat16")


class DecodeError(BabelgridError, ValueError):
    """The store, model, settings or output folder cannot be used for decoding."""


def parse_decoding(decoding: str) -> int:
    """'greedy' -> 1, 'beam:5' -> 5 (the beam size)."""
    if decoding == "greedy":
        return 1
    head, _, n = decoding.partition(":")
    if head == "beam" and n.isdigit() and int(n) >= 2:
        return int(n)
    raise DecodeError(f"decoding must be 'greedy' or 'beam:N' with N >= 2 (e.g. beam:5), got {decoding!r}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    store: str  # layer store URL written by the encode job
    out: str  # output folder or kvstore URL
    model: str | None = None  # checkpoint source; None = the packaged whisper-base. Must be the store's model.
    langs: tuple[str, ...] | None = None  # None = every language of the store
    layers: tuple[int, ...] | None = None  # None = every layer of the store
    tasks: tuple[str, ...] = ("transcribe",)
    ln_post: str = "both"  # apply ln_post to intermediate layers: on, off or both (layer L+1 has it already)
    decodings: tuple[str, ...] = ("greedy",)  # greedy and/or beam:N
    patience: float = 1.0  # beam search (Whisper / CTranslate2 semantics)
    length_penalty: float = 1.0
    language: str = "forced"  # forced: the store language's Whisper code; detect: per window
    decode_as: tuple[tuple[str, str], ...] = ()  # (store language, Whisper code) for languages Whisper lacks
    max_new_tokens: int = 224
    source: str = "audio"
    references: str | None = None  # TSV (id, text) of English references for translate; else the store's English
    batch_size: int = 8  # windows per decoder call
    compute_dtype: str = "float32"
    report_samples: int = 3  # utterances per language shown in report.md
    claim_ttl: float = DEFAULT_CLAIM_TTL  # seconds until a dead process's (language, layer) claims may be taken over
    break_lease: bool = False
    progress: bool = True

    def __post_init__(self):
        check_choice("source", self.source, SOURCES)
        check_choice("ln_post", self.ln_post, LN_POST)
        check_choice("language", self.language, LANGUAGE_MODES)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        for task in self.tasks:
            check_choice("task", task, TASKS)
        for decoding in self.decodings:
            parse_decoding(decoding)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be >= 1, got {self.batch_size}, {self.max_new_tokens}"
            )
        if self.claim_ttl <= 0:
            raise ValueError(f"claim_ttl must be positive seconds, got {self.claim_ttl}")


def references_path(path: str | None) -> str | None:
    if path is not None and not pathlib.Path(path).is_file():
        raise DecodeError(f"--references {path!r} is not a file; pass a TSV of id<TAB>English text")
    return path
