"""The challenge job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.pipelines.challenge.rules import FilterConfig
from engine.runtime.options import ConfigError, RunOptions, option, validate
from engine.stores.challenge import ChallengeError
from engine.text.soundalike import (
    AUTO,
    DEFAULT_CHANCE_FLAG_RATE,
    DEFAULT_CHANCE_PAIRS,
    DEFAULT_MIN_PHONES,
    DEFAULT_PHONE_THRESHOLD,
    MIN_CHANCE_PAIRS,
    Calibration,
)


@dataclasses.dataclass(frozen=True)
class ChallengeConfig:
    """store: layer store URL; run.out: output folder or kvstore URL; pairs: ``resolve_pairs`` spec (``unordered`` =
    every pair of the store's languages once, or ``en:es,de:*``); langs: restrict to these (None = all).
    phone_threshold: ``AUTO`` (per language pair, the largest threshold, at most DEFAULT_PHONE_THRESHOLD, at which
    at most ``chance_flag_rate`` of up to ``chance_pairs`` mismatched sentence pairs drawn with ``chance_seed`` are
    flagged: ``engine.text.soundalike``) or a number used for every pair; the rest: ``rules.FilterConfig``."""

    store: str = option(help="layer store written by the encode job (its utterance tables give the texts)",
                        required=True, reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    pairs: str = option("unordered", "'unordered' (every pair once) or a list like en:es,de:* ('*' = all others)")
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    # A number or AUTO: the job's flag text goes through parse_threshold.
    phone_threshold: float | str = option(
        AUTO,
        f"phone distance below which two words sound alike: a number in [0, 1] for every pair, or '{AUTO}': per "
        f"language pair the largest threshold (at most {DEFAULT_PHONE_THRESHOLD}) at which at most "
        f"--chance_flag_rate of mismatched sentence pairs are flagged (the cap with fewer than {MIN_CHANCE_PAIRS} "
        "mismatched pairs)",
    )
    min_phones: int = option(DEFAULT_MIN_PHONES, "shortest word (IPA segments) the sound rule compares")
    ner: bool = option(False, "also count spaCy's named entities as proper nouns (needs spaCy and a pipeline)")
    # (language, pipeline) pairs; the job's flag is text, lang=pipeline,... (jobs/challenge.py parses it).
    ner_models: tuple[tuple[str, str], ...] = option(
        (), "with --ner: spaCy pipeline per language where the <lang>_* package is not the one, e.g. "
        "en=en_core_web_trf,de=/models/de_ner",
    )  # fmt: skip
    chance_flag_rate: float = option(DEFAULT_CHANCE_FLAG_RATE, "with --phone_threshold auto: the share of mismatched "
                                     "(different-id) sentence pairs the sound rule may flag by chance")  # fmt: skip
    chance_pairs: int = option(DEFAULT_CHANCE_PAIRS, "mismatched sentence pairs drawn per language pair to measure "
                               "(and with auto, calibrate) the sound rule's chance flag rate")  # fmt: skip
    chance_seed: int = option(0, "seed of the mismatched-pair draw (with the language pair)")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ConfigError("challenge needs an output folder: run.out (--out)")
        self.calibration  # noqa: B018  (validates the threshold settings now, not after the store is read)
        self.filter  # noqa: B018

    @property
    def calibration(self) -> Calibration:
        try:
            return Calibration(self.phone_threshold, DEFAULT_PHONE_THRESHOLD, self.chance_flag_rate,
                               self.chance_pairs, self.chance_seed, MIN_CHANCE_PAIRS)  # fmt: skip
        except ValueError as e:
            raise ChallengeError(str(e)) from None

    @property
    def filter(self) -> FilterConfig:
        """The filter with the cap as threshold: ``run_challenge`` replaces it by each pair's ``ThresholdChoice``."""
        threshold = DEFAULT_PHONE_THRESHOLD if self.phone_threshold == AUTO else self.phone_threshold
        return FilterConfig(threshold, self.min_phones, self.ner, tuple(sorted(self.ner_models)))


def parse_threshold(text: str | float) -> float | str:
    """``--phone_threshold``: ``"auto"`` or a number in [0, 1]."""
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise ChallengeError(f"--phone_threshold must be {AUTO!r} or a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise ChallengeError(f"--phone_threshold must be {AUTO!r} or a number in [0, 1], got {text!r}")
    return value
