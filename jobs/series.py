r"""One model over training, or a ladder of model sizes: R@1 per pair and layer, LID per layer, the R@1 change with
each language's mean removed, CKA of each layer with the final model's, and the layer where alignment and
separability meet, one table per analysis with a row per step (or size) and layer.

    python -m jobs.series --stores /data/s1/store,/data/s2/store,/data/s3/store --reference /data/final/store \
        --out /data/series                                                    # the steps from their stores' records
    python -m jobs.series --stores /data/s1/store,/data/s2/store --out /tmp/x --plan   # its cost, before it runs
    python -m jobs.series --stores /data/025B,/data/1B,/data/4B --values 0.25,1,4 --axis "parameters (B)" \
        --out /data/sizes                                                     # a ladder of sizes, on the depth axis
    python -m jobs.series --stores S1,S2 --retrieval R1,R2 --retrieval_measure seqsim --centred D1,D2 \
        --probes P1,P2 --out O                      # R@1, its delta and LID read from the retrieval and probes jobs

Writes OUT/retrieval.csv, centred.csv, lid.csv, cka.csv, meet.csv, best.csv and OUT/figures/*.png; columns in
docs/outputs.md, reading and the OWLS commands in docs/dynamics.md, library in engine/pipelines/series/.
"""

from __future__ import annotations

from engine.pipelines.series.config import SeriesConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.series.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.series.plan import plan_series_run

    return plan_series_run(config, device)


common.define_config_flags(
    SeriesConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout", "matmul_precision"),
    required=("stores", "out"),
    help={"out": "output folder: local path or TensorStore kvstore URL"},
    plan=plan,
)


def main() -> int:
    from engine.pipelines.series.run import run_series  # loads JAX: after the flags, so that --help stays quick

    print(run_series(common.config_from_flags(SeriesConfig)).report())
    return 0


if __name__ == "__main__":
    common.run(main)
