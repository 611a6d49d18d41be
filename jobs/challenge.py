r"""Pronunciation-controlled challenge sets: which translation pairs share a name, a number or a sound-alike word.

    python -m jobs.challenge --store /tmp/demo-store --out /tmp/demo-challenge --pairs en:es,en:de,de:sv
    python -m jobs.challenge --store /tmp/demo-store --out /tmp/demo-challenge --plan          # its cost first
    python -m jobs.retrieval --similarity /tmp/demo-sim --out /tmp/demo-ret-challenge --subset /tmp/demo-challenge

Writes OUT/<a>__<b>.csv (id, kept, reason, evidence), OUT/summary.csv (pairs kept per pair and threshold, and the
share of mismatched sentence pairs flagged) and OUT/challenge.json (the settings, and per pair the threshold used);
a rerun into OUT with other settings is refused, naming them. The sound rule's threshold is by default calibrated
per language pair against chance (--phone_threshold auto, --chance_flag_rate, --chance_pairs, --chance_seed).
Library: engine/pipelines/challenge/run.py; the rules: engine/pipelines/challenge/rules.py, engine/text/soundalike.py;
the files: engine/stores/challenge.py; why: docs/challenge.md.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from engine.pipelines.challenge.config import ChallengeConfig, parse_threshold
from engine.runtime.options import parse_list
from engine.stores.challenge import ChallengeError
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.challenge.plan``), imported only when asked."""
    from engine.pipelines.challenge.plan import plan_challenge_run

    return plan_challenge_run(config, device)


common.define_config_flags(
    ChallengeConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout"),
    required=("out",),
    plan=plan,
    help={
        "out": "output folder or TensorStore kvstore URL for the per-pair CSVs and summary.csv",
        "progress": common.NO_LONG_STAGES.format(
            job="challenge", why="it compares the transcriptions of the pairs' sentences"
        ),
    },
    skip=("ner_models",),
)
# A tuple of (language, pipeline) pairs in the config, text on the command line (parse_models).
_NER_MODELS = {f.name: f for f in dataclasses.fields(ChallengeConfig)}["ner_models"]
flags.DEFINE_string("ner_models", "", _NER_MODELS.metadata["help"])
FLAGS = flags.FLAGS


def parse_models(text: str) -> tuple[tuple[str, str], ...]:
    """'en=a,de=/b' -> (('de', '/b'), ('en', 'a'))."""
    pairs = [item.split("=", 1) for item in parse_list(text) or ()]
    bad = [item for item in pairs if len(item) != 2 or not all(x.strip() for x in item)]
    if bad:
        raise ChallengeError(f"--ner_models must be a list of lang=pipeline, got {text!r}")
    return tuple(sorted((lang.strip(), model.strip()) for lang, model in pairs))


def main() -> int:
    from engine.pipelines.challenge.run import run_challenge  # loads JAX: after the flags, so that --help stays quick

    given = {"ner_models": parse_models(FLAGS.ner_models), "phone_threshold": parse_threshold(FLAGS.phone_threshold)}
    result = run_challenge(common.config_from_flags(ChallengeConfig, **given))
    print(result.report())
    for path in result.outputs:
        print(path)
    return 0


if __name__ == "__main__":
    common.run(main)
