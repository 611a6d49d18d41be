r"""Do a model's language distances follow typology? Mantel tests against URIEL per layer, the languages' dendrogram,
and the layer where cross-lingual alignment and language separability meet.

    python -m jobs.typology --similarity /tmp/demo-sim --out /tmp/demo-typology
    python -m jobs.typology --similarity /tmp/demo-sim --out /tmp/demo-typology --plan   # its cost, before it runs
    python -m jobs.typology --similarity /tmp/demo-sim --probes /tmp/demo-probes --out /tmp/demo-typology
    python -m jobs.typology --similarity S --compare /tmp/cmp --probes /tmp/p-base,/tmp/p-turbo --out O

Writes OUT/typology.csv, OUT/languages.csv, OUT/matrices/*.csv and OUT/figures/*.png (with --probes, OUT/meet.csv);
columns in docs/outputs.md, reading in docs/typology.md, library in engine/pipelines/typology/. Needs lang2vec:
pip install 'babelgrid[typology]'.
"""

from __future__ import annotations

from engine.pipelines.typology.config import TypologyConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.typology.plan``), imported only when asked: --help stays quick."""
    from engine.pipelines.typology.plan import plan_typology_run

    return plan_typology_run(config, device)


common.define_config_flags(
    TypologyConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout"),
    required=("similarity", "out"),
    plan=plan,
    help={"out": "output folder or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.typology.run import run_typology  # after the flags: --help stays quick

    print(run_typology(common.config_from_flags(TypologyConfig)).report())
    return 0


if __name__ == "__main__":
    common.run(main)
