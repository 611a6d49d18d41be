r"""Outlier dimensions per layer and language of a layer store: the dimensions of outsized magnitude, their share of
the squared norm and of the cosine between translations, anisotropy and effective rank.

    python -m jobs.outliers --store /tmp/demo-store --out /tmp/demo-outliers
    python -m jobs.outliers --store /tmp/demo-store --out /tmp/demo-outliers --plan   # its cost, before it runs
    python -m jobs.outliers --store /data/fleurs-store --out /data/outliers --k 8 --translations 64 --worker

Writes OUT/outliers.csv (one row per layer and language), OUT/dimensions.csv (the outlier dimensions) and
OUT/figures/outliers.png; columns in docs/outputs.md, definitions and reading in docs/outliers.md, library in
engine/pipelines/outliers/ and kernels/outliers.py. A seqsim run with --dimensions standardise or drop:K then says
what those dimensions do to retrieval (retrieval --baseline).
"""

from __future__ import annotations

from engine.pipelines.outliers.config import OutliersConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.outliers.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.outliers.plan import plan_outliers_run

    return plan_outliers_run(config, device)


common.define_config_flags(
    OutliersConfig,
    __name__,
    run=(*common.CLAIMING, "strict"),
    required=("store", "out"),
    plan=plan,
    help={"out": "output folder or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.outliers.run import run_outliers  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(OutliersConfig)
    summary = run_outliers(config)
    return common.finish(summary, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
