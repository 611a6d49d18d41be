r"""Context mixing by value zeroing: each encoder block re-run from its input with one word's value vectors zeroed at a
time, giving per utterance a layer x word x word matrix of how much each word's representation draws on each other
word (Mohebbi et al. 2023, hmohebbi/ContextMixingASR's definition), and per language and layer the share of self
against context and by word distance.

    python -m jobs.mixing --store out/demo/store --words out/demo/words --out /tmp/demo-mixing   # the demo's store
    python -m jobs.mixing --store out/demo/store --words out/demo/words --out /tmp/demo-mixing --plan  # its cost
    python -m jobs.mixing --store out/demo/store --words out/demo/words --out /tmp/demo-mixing --layers 1,6 \
        --utterances 5 --aggregate max

See engine/pipelines/mixing/run.py for the outputs and docs/value_zeroing.md for what they show.
"""

from __future__ import annotations

from engine.pipelines.mixing.config import MixingConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.mixing.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.mixing.plan import plan_mixing_run

    return plan_mixing_run(config, device)


common.define_config_flags(
    MixingConfig,
    __name__,
    run=common.CLAIMING,
    required=("out",),
    plan=plan,
    help={"out": "output folder: local path or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.mixing.run import run_mixing  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(MixingConfig)
    print(run_mixing(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
