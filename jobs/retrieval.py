"""Cross-lingual retrieval from a similarity store: R@k and MRR per directed pair, layer and measure, and figures.

    python -m jobs.retrieval --similarity /tmp/demo-sim        # retrieval.csv, asymmetry.csv + figures in /tmp/demo-sim
    python -m jobs.retrieval --similarity /tmp/demo-sim --out /tmp/demo-ret --measure seqsim,mean --layers 4-7 --ks 1,10
    python -m jobs.retrieval --similarity /tmp/demo-sim --out /tmp/demo-ret-challenge --subset /tmp/demo-challenge

The CSV's columns and the figures: docs/outputs.md; the subset comparison (--subset, a jobs.challenge --out):
docs/challenge.md.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.retrieval.config import RetrievalConfig
from engine.runtime.options import parse_list
from jobs import common

common.define_config_flags(
    RetrievalConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout"),
    required=("similarity",),
    help={
        "out": "output folder (default: the similarity store itself when it is local)",
        "progress": common.NO_LONG_STAGES.format(job="retrieval", why="it scores matrices the similarity store holds"),
    },
)


@flags.validator("ks", message="--ks must be positive integers such as 1,5,10")
def _check_ks(value):
    items = parse_list(value)
    return bool(items) and all(k.isdigit() and int(k) >= 1 for k in items)


def main() -> int:
    from engine.pipelines.retrieval.run import run_retrieval  # loads JAX: after the flags, so that --help stays quick

    print(run_retrieval(common.config_from_flags(RetrievalConfig)).report())
    return 0


if __name__ == "__main__":
    common.run(main)
