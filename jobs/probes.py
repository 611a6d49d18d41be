r"""Probes per layer of a layer store: language ID, same-different word discrimination, CCA against targets.

    python -m jobs.probes --store /tmp/demo-store --out /tmp/demo-probes --probes lid
    python -m jobs.probes --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-probes

Writes OUT/lid.csv, OUT/samediff.csv, OUT/cca.csv and OUT/figures/*_by_layer.png; columns in docs/outputs.md,
reading in docs/probes.md, library in engine/pipelines/probes/.
"""

from __future__ import annotations

from engine.pipelines.probes.config import ProbesConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.probes.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.probes.plan import plan_probes_run

    return plan_probes_run(config, device)


common.define_config_flags(
    ProbesConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout", "strict", "matmul_precision"),
    required=("store", "out"),
    help={"out": "output folder or TensorStore kvstore URL"},
    plan=plan,
)


def main() -> int:
    from engine.pipelines.probes.run import run_probes  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(ProbesConfig)
    summary = run_probes(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
