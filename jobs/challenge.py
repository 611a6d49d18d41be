r"""Pronunciation-controlled challenge sets: which translation pairs share a name, a number or a sound-alike word.

    python -m jobs.challenge --store /tmp/demo-store --out /tmp/challenge --pairs en:es,en:de,de:sv
    python -m jobs.retrieval --similarity /tmp/demo-sim --out /tmp/ret-challenge --subset /tmp/challenge

Writes OUT/<a>__<b>.csv (id, kept, reason, evidence), OUT/summary.csv (pairs kept per pair and threshold, and the
share of mismatched sentence pairs flagged) and OUT/challenge.json (the settings, and per pair the threshold used);
a rerun into OUT with other settings is refused, naming them. The sound rule's threshold is by default calibrated
per language pair against chance (--phone_threshold auto, --chance_flag_rate, --chance_pairs, --chance_seed).
Library and the rules: engine/pipelines/challenge/run.py, engine/text/soundalike.py; why: docs/challenge.md.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.challenge.run import ChallengeConfig, ChallengeError, parse_threshold, run_challenge
from engine.text.soundalike import (
    AUTO,
    DEFAULT_CHANCE_FLAG_RATE,
    DEFAULT_CHANCE_PAIRS,
    DEFAULT_MIN_PHONES,
    DEFAULT_PHONE_THRESHOLD,
    MIN_CHANCE_PAIRS,
)
from jobs import common

common.define_store_flag("layer store written by the encode job (its utterance tables give the texts)")
common.define_out_flag("output folder or TensorStore kvstore URL for the per-pair CSVs and summary.csv")
flags.DEFINE_string("pairs", "unordered", "'unordered' (every pair once) or a list like en:es,de:* ('*' = all others)")
common.define_langs_flag()
flags.DEFINE_string("phone_threshold", AUTO, f"phone distance below which two words sound alike: a number in [0, 1] "
                    f"for every pair, or '{AUTO}': per language pair the largest threshold (at most "
                    f"{DEFAULT_PHONE_THRESHOLD}) at which at most --chance_flag_rate of mismatched sentence pairs are "
                    f"flagged (the cap with fewer than {MIN_CHANCE_PAIRS} mismatched pairs)")  # fmt: skip
flags.DEFINE_float("chance_flag_rate", DEFAULT_CHANCE_FLAG_RATE, "with --phone_threshold auto: the share of mismatched "
                   "(different-id) sentence pairs the sound rule may flag by chance")  # fmt: skip
flags.DEFINE_integer("chance_pairs", DEFAULT_CHANCE_PAIRS, "mismatched sentence pairs drawn per language pair to "
                     "measure (and with auto, calibrate) the sound rule's chance flag rate")  # fmt: skip
flags.DEFINE_integer("chance_seed", 0, "seed of the mismatched-pair draw (with the language pair)")
flags.DEFINE_integer("min_phones", DEFAULT_MIN_PHONES, "shortest word (IPA segments) the sound rule compares")
flags.DEFINE_bool("ner", False, "also count spaCy's named entities as proper nouns (needs spaCy and a pipeline)")
flags.DEFINE_string("ner_models", "", "with --ner: spaCy pipeline per language where the <lang>_* package is not "
                    "the one, e.g. en=en_core_web_trf,de=/models/de_ner")  # fmt: skip
FLAGS = flags.FLAGS


def parse_models(text: str) -> tuple[tuple[str, str], ...]:
    """'en=a,de=/b' -> (('de', '/b'), ('en', 'a'))."""
    pairs = [item.split("=", 1) for item in common.parse_list(text) or ()]
    bad = [item for item in pairs if len(item) != 2 or not all(x.strip() for x in item)]
    if bad:
        raise ChallengeError(f"--ner_models must be a list of lang=pipeline, got {text!r}")
    return tuple(sorted((lang.strip(), model.strip()) for lang, model in pairs))


def main() -> int:
    given = {
        "langs": common.parse_list(FLAGS.langs),
        "ner_models": parse_models(FLAGS.ner_models),
        "phone_threshold": parse_threshold(FLAGS.phone_threshold),
    }
    result = run_challenge(common.config_from_flags(ChallengeConfig, **given))
    print(result.report())
    for path in result.outputs:
        print(path)
    return 0


if __name__ == "__main__":
    common.run(main)
