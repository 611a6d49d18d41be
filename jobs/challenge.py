r"""Pronunciation-controlled challenge sets: which translation pairs share a name, a number or a sound-alike word.

    python -m jobs.challenge --store /tmp/demo-store --out /tmp/challenge --pairs en:es,en:de,de:sv
    python -m jobs.retrieval --similarity /tmp/demo-sim --out /tmp/ret-challenge --subset /tmp/challenge

Writes OUT/<a>__<b>.csv (id, kept, reason, evidence) and OUT/summary.csv (pairs kept per pair and threshold).
Library and the rules: engine/analysis/challenge.py; the threshold's justification: docs/challenge.md.
"""

from __future__ import annotations

from absl import flags

from engine.analysis.challenge import DEFAULT_MIN_PHONES, DEFAULT_PHONE_THRESHOLD, ChallengeConfig, run_challenge
from jobs import common

common.define_store_flag("layer store written by the encode job (its utterance tables give the texts)")
common.define_out_flag("output folder or TensorStore kvstore URL for the per-pair CSVs and summary.csv")
flags.DEFINE_string("pairs", "unordered", "'unordered' (every pair once) or a list like en:es,de:* ('*' = all others)")
common.define_langs_flag()
flags.DEFINE_float("phone_threshold", DEFAULT_PHONE_THRESHOLD, "phone distance below which two words sound alike")
flags.DEFINE_integer("min_phones", DEFAULT_MIN_PHONES, "shortest word (IPA segments) the sound rule compares")
flags.DEFINE_bool("ner", False, "also count spaCy's named entities as proper nouns (needs a spaCy pipeline)")
FLAGS = flags.FLAGS


def main() -> int:
    result = run_challenge(common.config_from_flags(ChallengeConfig, langs=common.parse_list(FLAGS.langs)))
    print(result.report())
    for path in result.outputs:
        print(path)
    return 0


if __name__ == "__main__":
    common.run(main)
