"""Word and character error rates, with the light normalisation used for FLEURS references.

FLEURS's ``transcription`` field is lower-cased with most punctuation removed; Whisper's output
is cased and punctuated. ``normalize_text`` maps both to the same form (Unicode NFKC, lower case,
punctuation and symbols dropped, whitespace collapsed) so that WER measures words, not style.
It does not spell out numbers or expand contractions (OpenAI's English normaliser does); say so
when comparing with published English WERs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] in "PS":  # punctuation and symbols
            kept.append(" ")
        elif cat[0] == "M" or cat[0] in "LN" or ch.isspace():
            kept.append(ch)
        else:
            kept.append(" ")
    return " ".join("".join(kept).split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance between two sequences (substitution, insertion, deletion cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str = "word", normalize: bool = True) -> float:
    """Corpus WER (``unit="word"``) or CER (``unit="char"``): total edits / total reference units."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    edits = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        if normalize:
            ref, hyp = normalize_text(ref), normalize_text(hyp)
        r, h = (
            (ref.split(), hyp.split()) if unit == "word" else (list(ref.replace(" ", "")), list(hyp.replace(" ", "")))
        )
        edits += edit_distance(r, h)
        total += len(r)
    if total == 0:
        raise ValueError("references are empty after normalisation")
    return edits / total


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "char")
