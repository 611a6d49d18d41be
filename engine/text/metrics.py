"""Word and character error rates (``jiwer``), after OpenAI Whisper's basic text normaliser.

FLEURS's ``transcription`` field is lower-cased with most punctuation removed; Whisper's output
is cased and punctuated. ``normalize_text`` maps both to the same form with Whisper's
``BasicTextNormalizer`` (the one its paper uses for non-English WER, from ``whisper-normalizer``):
Unicode NFKC, lower case, phrases in brackets or parentheses dropped, punctuation and symbols
replaced by spaces, whitespace collapsed. ``preserve_marks=True`` keeps combining marks (Brahmic
vowel signs, viramas) that the default would strip. It does not spell out numbers or expand
contractions (``EnglishTextNormalizer`` does, for English only); say so when comparing with
published English WERs.

The decode job scores with ``normalizer_for(lang)``, Whisper's choice per language: ``EnglishTextNormalizer`` for
English (numbers, spellings, contractions), ``BasicTextNormalizer`` otherwise; ``bleu`` and ``chrf`` are sacrebleu's
corpus scores with the tokeniser ``bleu_tokenizer(lang)`` picks for the target language.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer

_BASIC = BasicTextNormalizer(preserve_marks=True)
# sacrebleu's tokenisers for languages written without spaces; everything else gets its default, 13a.
BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}


def normalize_text(text: str) -> str:
    return _BASIC(text).strip()


@functools.cache
def _english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalizer_for(lang: str) -> Callable[[str], str]:
    """Whisper's normaliser for text in Whisper language ``lang``: English's for "en", the basic one otherwise."""
    if lang == "en":
        english = _english()
        return lambda text: english(text).strip()
    return normalize_text


def bleu_tokenizer(lang: str) -> str:
    """sacrebleu's tokeniser for a target in Whisper language ``lang``: zh, ja-mecab, ko-mecab, else 13a."""
    return BLEU_TOKENIZERS.get(lang, "13a")


def bleu(refs: Sequence[str], hyps: Sequence[str], lang: str) -> float:
    """sacrebleu corpus BLEU (0..100) of ``hyps`` against one reference each, tokenised for target ``lang``."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=bleu_tokenizer(lang)).score)


def chrf(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """sacrebleu corpus chrF (0..100; character n-grams, no tokeniser)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def error_rate(
    refs: Sequence[str],
    hyps: Sequence[str],
    unit: str = "word",
    normalize: bool | Callable[[str], str] = True,
) -> float:
    """Corpus WER (``unit="word"``) or CER (``unit="char"``): total edits / total reference units.

    CER ignores spaces, so that a word-segmentation difference is not counted as a character error. ``normalize``:
    True (``normalize_text``), False, or the normaliser to apply (``normalizer_for(lang)``).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if normalize:
        norm = normalize_text if normalize is True else normalize
        refs, hyps = [norm(r) for r in refs], [norm(h) for h in hyps]
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
