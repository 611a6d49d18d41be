r"""Compare models and layers: retrieval by depth, and CKA / SVCCA / PWCCA / mutual k-NN of every layer pair.

    python -m jobs.compare --stores /tmp/demo-store --out /tmp/demo-compare-self     # one model with itself
    python -m jobs.compare --stores /tmp/demo-store,/tmp/demo-store-tiny-en --out /tmp/demo-compare \
        --retrieval /tmp/demo-sim, --retrieval_measure seqsim --challenge /tmp/demo-challenge
    python -m jobs.compare --stores /tmp/demo-store,/tmp/demo-store-tiny-en --out /tmp/demo-compare --plan \
        --plan_device h100

/tmp/demo-store-tiny-en is the demo set encoded with Whisper tiny.en (how to get it: docs/compare.md).

See engine/pipelines/compare/run.py for the outputs and docs/compare.md for what they show.
"""

from __future__ import annotations

from engine.pipelines.compare.config import CompareConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.compare.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.compare.plan import plan_compare_run

    return plan_compare_run(config, device)


common.define_config_flags(
    CompareConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout", "matmul_precision"),
    required=("out",),
    help={"out": "output folder: local path or TensorStore kvstore URL"},
    plan=plan,
)


def main() -> int:
    from engine.pipelines.compare.run import run_compare  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(CompareConfig)
    print(run_compare(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
