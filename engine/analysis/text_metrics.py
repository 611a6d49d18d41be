"""Word and character error rates (``jiwer``), after OpenAI Whisper's basic text normaliser.

FLEURS's ``transcription`` field is lower-cased with most punctuation removed; Whisper's output
is cased and punctuated. ``normalize_text`` maps both to the same form with Whisper's
``BasicTextNormalizer`` (the one its paper uses for non-English WER, from ``whisper-normalizer``):
Unicode NFKC, lower case, phrases in brackets or parentheses dropped, punctuation and symbols
replaced by spaces, whitespace collapsed. ``preserve_marks=True`` keeps combining marks (Brahmic
vowel signs, viramas) that the default would strip. It does not spell out numbers or expand
contractions (``EnglishTextNormalizer`` does, for English only); say so when comparing with
published English WERs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer

_BASIC = BasicTextNormalizer(preserve_marks=True)


def normalize_text(text: str) -> str:
    return _BASIC(text).strip()


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str = "word", normalize: bool = True) -> float:
    """Corpus WER (``unit="word"``) or CER (``unit="char"``): total edits / total reference units.

    CER ignores spaces, so that a word-segmentation difference is not counted as a character error.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if normalize:
        refs, hyps = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    if unit == "char":
        refs, hyps = ["".join(r.split()) for r in refs], ["".join(h.split()) for h in hyps]
    # jiwer scores an empty reference corpus as edits / 1; refuse it instead of returning a count.
    if not any(r.split() for r in refs):
        raise ValueError("references are empty after normalisation")
    measure = jiwer.wer if unit == "word" else jiwer.cer
    return float(measure(list(refs), list(hyps)))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "char")
