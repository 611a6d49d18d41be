r"""Language-specific feed-forward units: per language the activation rate of every unit of every layer, and LAPE.

    python -m jobs.neurons --out /tmp/demo-neurons                       # the packaged whisper-base on the demo set
    python -m jobs.neurons --out /tmp/demo-neurons --intervene all --plan   # what it costs, before it runs
    python -m jobs.neurons --model facebook/mms-1b-all --dataset fleurs --langs en_us,de_de,fr_fr --out /data/n

See engine/pipelines/neurons/run.py for the outputs and docs/neurons.md for what they show.
"""

from __future__ import annotations

from engine.pipelines.neurons.config import NeuronsConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.neurons.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.neurons.plan import plan_neurons_run

    return plan_neurons_run(config, device)


common.define_config_flags(
    NeuronsConfig,
    __name__,
    run=common.CLAIMING,
    required=("out",),
    plan=plan,
    help={"out": "output folder: local path or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.neurons.run import run_neurons  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(NeuronsConfig)
    print(run_neurons(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
