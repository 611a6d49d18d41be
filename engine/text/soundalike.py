"""The sound-alike rule of the challenge sets, and its threshold calibrated against chance.

Two sentences *sound alike* when a word of one and a word of the other, both at least ``min_phones`` IPA segments
long (espeak-ng via phonemizer), lie closer than a threshold in normalised phone feature edit distance
(``engine.text.phones.phone_distance``). ``sound_alike`` judges one sentence pair at a given threshold.

Why a threshold must be calibrated: the rule compares every word of one sentence with every word of the other, so
its chance of a false alarm grows with sentence length. At 0.16, 29% of the demo's short mismatched sentence pairs
(different ids: not translations) are flagged, and 62-94% of FLEURS-length ones (~20 words, ~400 word pairs).
``chance_threshold`` therefore picks, per language pair, the largest threshold at which at most ``flag_rate`` of
mismatched pairs (``mismatched_pairs``: seeded random pairs of sentences with different ids) would be flagged,
never above a fixed cap (0.16, the threshold justified on the demo's cognates in docs/challenge.md). With fewer
than ``min_pairs`` mismatched pairs the chance rate cannot be estimated and the cap is used, saying so.

Glossary: a *mismatched pair* is (sentence ``i`` of language a, sentence ``j`` of language b) with ``i != j``; its
*min distance* is the smallest phone distance over its eligible word pairs (NaN when none is eligible: such a pair
is never flagged); at threshold ``t`` it is flagged when ``min distance < t``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from engine.text.phones import PhonesError, covers, phone_distance, phonemize_words

DEFAULT_PHONE_THRESHOLD = 0.16  # the cap of the calibrated threshold, and the explicit default of the library filter
DEFAULT_MIN_PHONES = 4
AUTO = "auto"  # phone_threshold: calibrated per language pair against mismatched pairs
DEFAULT_CHANCE_FLAG_RATE = 0.05  # share of mismatched pairs the sound rule may flag
DEFAULT_CHANCE_PAIRS = 200  # mismatched pairs drawn per language pair
MIN_CHANCE_PAIRS = 20  # fewer mismatched pairs than this: a 5% rate is under one pair, so the cap is used
# How a pair's threshold was chosen (summary.csv's ``threshold_rule``):
FIXED, CHANCE, CAP, CAP_TOO_FEW = "fixed", "chance", "cap", "cap_too_few_mismatched"


def require_voices(langs: Iterable[str]) -> None:
    """Raises ``PhonesError`` naming the languages espeak-ng speaks when one of ``langs`` has no voice."""
    missing = [lang for lang in langs if not covers(lang)]
    if missing:
        from phonemizer.backend import EspeakBackend

        have = sorted(EspeakBackend.supported_languages())
        raise PhonesError(
            f"espeak-ng has no voice for {missing}, so their words cannot be phonemised. Languages espeak-ng has "
            f"(`espeak-ng --voices`): {', '.join(have)}. Leave these languages out (--pairs / --langs), or map "
            "their codes to a voice in engine.text.phones.ESPEAK_VOICES"
        )


def fold_case(token: str) -> str:
    # Case only: accents change the sound (es "si" / "sí" do not, it "pero" / "però" do), so espeak keeps them.
    return token.casefold()


class PhoneBook:
    """Phones of every word met so far, per language: each (language, word) is phonemised once."""

    def __init__(self):
        self._phones: dict[str, dict[str, tuple[str, ...]]] = {}

    def add(self, lang: str, tokens: Iterable[str]) -> None:
        """Phonemises the tokens of ``lang`` not seen yet, in one espeak-ng call."""
        known = self._phones.setdefault(lang, {})
        todo = sorted({fold_case(t) for t in tokens} - known.keys())
        if todo:
            require_voices([lang])
            known.update(zip(todo, phonemize_words(lang, todo), strict=True))

    def phones(self, lang: str, token: str) -> tuple[str, ...]:
        self.add(lang, [token])
        return self._phones[lang][fold_case(token)]


@functools.lru_cache(maxsize=1 << 18)
def _distance(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    return phone_distance(a, b)


def sound_alike(
    lang_a: str,
    words_a: Sequence[str],
    lang_b: str,
    words_b: Sequence[str],
    book: PhoneBook,
    threshold: float,
    min_phones: int,
    distance: Callable[[tuple, tuple], float] = _distance,
) -> tuple[list[str], float]:
    """(evidence ``"wa~wb 0.07"`` for the word pairs closer than ``threshold``, closest first; the smallest distance
    over eligible word pairs, NaN when none is eligible). ``words_*``: the sentences' letter tokens."""
    words_a, words_b = sorted(set(map(fold_case, words_a))), sorted(set(map(fold_case, words_b)))
    book.add(lang_a, words_a)
    book.add(lang_b, words_b)
    eligible_a = [(w, book.phones(lang_a, w)) for w in words_a if len(book.phones(lang_a, w)) >= min_phones]
    eligible_b = [(w, book.phones(lang_b, w)) for w in words_b if len(book.phones(lang_b, w)) >= min_phones]
    found, smallest = [], math.nan
    for (wa, pa), (wb, pb) in itertools.product(eligible_a, eligible_b):
        d = distance(pa, pb)
        smallest = d if math.isnan(smallest) else min(smallest, d)
        if d < threshold:
            found.append((d, f"{wa}~{wb} {d:.2f}"))
    return [e for _, e in sorted(found)], smallest


# --- the threshold calibrated against chance ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How a language pair's threshold is chosen. threshold: a number in [0, 1] (fixed; 0 turns the sound rule off)
    or ``AUTO``; cap: the most ``AUTO`` may pick; flag_rate: the share of mismatched pairs ``AUTO`` lets the rule
    flag; max_pairs: mismatched pairs drawn per language pair (``seed`` and the pair seed the draw); min_pairs:
    fewer mismatched pairs fall back to the cap."""

    threshold: float | str = AUTO
    cap: float = DEFAULT_PHONE_THRESHOLD
    flag_rate: float = DEFAULT_CHANCE_FLAG_RATE
    max_pairs: int = DEFAULT_CHANCE_PAIRS
    seed: int = 0
    min_pairs: int = MIN_CHANCE_PAIRS

    def __post_init__(self):
        if self.threshold != AUTO and not (
            isinstance(self.threshold, int | float)
            and not isinstance(self.threshold, bool)
            and 0 <= self.threshold <= 1
        ):
            raise ValueError(f"phone_threshold must be a number in [0, 1] or {AUTO!r}, got {self.threshold!r}")
        if not 0 < self.cap <= 1:
            raise ValueError(f"the threshold cap must be in (0, 1], got {self.cap!r}")
        if not 0 <= self.flag_rate < 1:
            raise ValueError(f"chance_flag_rate must be in [0, 1), got {self.flag_rate!r}")
        if self.max_pairs < 1 or self.min_pairs < 1:
            raise ValueError(f"chance_pairs must be >= 1, got {self.max_pairs!r} (min_pairs {self.min_pairs!r})")


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    """A language pair's threshold. rule: FIXED, CHANCE (below the cap), CAP (the chance threshold was at or above
    the cap) or CAP_TOO_FEW (fewer than ``min_pairs`` mismatched pairs); mismatched_distances: the min distance of
    each mismatched pair drawn (NaN: no eligible word pair), from which the flag rate at any threshold follows."""

    threshold: float
    rule: str
    mismatched_distances: tuple[float, ...]

    @property
    def mismatched_pairs(self) -> int:
        return len(self.mismatched_distances)

    def mismatched_flagged(self, threshold: float | None = None) -> float:
        """Share of the mismatched pairs the sound rule flags at ``threshold`` (None: this one); NaN without any."""
        t = self.threshold if threshold is None else threshold
        n = len(self.mismatched_distances)
        return sum(d < t for d in self.mismatched_distances) / n if n else math.nan  # NaN < t is False

    def describe(self) -> str:
        n, rate = self.mismatched_pairs, self.mismatched_flagged()
        chance = f"{rate:.1%} of {n} mismatched pairs flagged" if n else "no mismatched pair"
        return {
            FIXED: f"fixed; {chance}",
            CHANCE: f"calibrated on chance; {chance}",
            CAP: f"the cap (chance allows more); {chance}",
            CAP_TOO_FEW: f"the cap: too few mismatched pairs to calibrate on; {chance}",
        }[self.rule]


def chance_threshold(distances: Sequence[float], calibration: Calibration) -> ThresholdChoice:
    """The pair's threshold from the min distances of its mismatched pairs.

    ``AUTO``: with ``n`` pairs and ``k = floor(flag_rate * n)``, a threshold ``t`` flags ``#{d < t}`` pairs, which
    is at most ``k`` exactly when ``t <= d_(k+1)`` (the (k+1)-th smallest distance; NaN counts as never flagged).
    So the largest allowed threshold is ``d_(k+1)``, capped at ``calibration.cap``; infinite (the cap) when fewer
    than ``k + 1`` pairs have a distance."""
    distances = tuple(float(d) for d in distances)
    if calibration.threshold != AUTO:
        return ThresholdChoice(float(calibration.threshold), FIXED, distances)
    if len(distances) < calibration.min_pairs:
        return ThresholdChoice(calibration.cap, CAP_TOO_FEW, distances)
    ordered = sorted(math.inf if math.isnan(d) else d for d in distances)
    k = math.floor(calibration.flag_rate * len(ordered) + 1e-9)  # 0.05 * 200 is 10.000000000000002 in floats
    allowed = ordered[k] if k < len(ordered) else math.inf
    if allowed >= calibration.cap:
        return ThresholdChoice(calibration.cap, CAP, distances)
    return ThresholdChoice(allowed, CHANCE, distances)


def mismatched_pairs(
    ids_a: Iterable[str], ids_b: Iterable[str], max_pairs: int, seed: int, lang_a: str, lang_b: str
) -> list[tuple[str, str]]:
    """Up to ``max_pairs`` (id_a, id_b) with ``id_a != id_b``, drawn without replacement, uniformly, reproducible from
    ``seed`` and the language pair; all of them, in sorted order, when there are no more than ``max_pairs``. One draw
    per unordered pair: ``b, a`` gets ``a, b``'s pairs swapped, so that a pair's threshold and kept set do not depend
    on the order ``--pairs`` names it in (a probe's de:en kept 15 where en:de kept 14)."""
    import numpy as np

    if lang_b < lang_a:
        return [(a, b) for b, a in mismatched_pairs(ids_b, ids_a, max_pairs, seed, lang_b, lang_a)]

    ids_a, ids_b = sorted(set(ids_a)), sorted(set(ids_b))
    shared = len(set(ids_a) & set(ids_b))
    total = len(ids_a) * len(ids_b)
    if total - shared <= max_pairs:
        return [(a, b) for a, b in itertools.product(ids_a, ids_b) if a != b]
    rng = np.random.default_rng([seed, zlib.crc32(f"{lang_a}|{lang_b}".encode())])
    # Draw enough cells of the id grid that, after dropping the <= `shared` matched ones, max_pairs remain.
    cells = rng.choice(total, size=min(total, max_pairs + shared), replace=False)
    pairs = [(ids_a[c // len(ids_b)], ids_b[c % len(ids_b)]) for c in cells.tolist()]
    return [(a, b) for a, b in pairs if a != b][:max_pairs]


def choose_threshold(
    words_a: Mapping[str, Sequence[str]],
    words_b: Mapping[str, Sequence[str]],
    lang_a: str,
    lang_b: str,
    book: PhoneBook,
    calibration: Calibration,
    min_phones: int,
    distance: Callable[[tuple, tuple], float] = _distance,
) -> ThresholdChoice:
    """The threshold of (lang_a, lang_b) from the mismatched pairs of ``words_*`` (id -> the sentence's letter
    tokens); drawn and measured for a fixed threshold too, so that every run reports its chance flag rate.
    ``distance``: the phone distance (a stand-in in tests)."""
    drawn = mismatched_pairs(words_a, words_b, calibration.max_pairs, calibration.seed, lang_a, lang_b)
    distances = [
        sound_alike(lang_a, words_a[i], lang_b, words_b[j], book, 0.0, min_phones, distance)[1]  # 0.0: no evidence
        for i, j in drawn
    ]
    return chance_threshold(distances, calibration)
