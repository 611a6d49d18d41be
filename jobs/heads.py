r"""Which attention heads carry language: every head of a store's model ablated alone, scored per language by SeqSim
R@1, a language-ID probe and (with a text decoder) WER/CER; gradient importance; attention statistics.

    python -m jobs.heads --store out/demo/store --out /tmp/demo-heads               # the demo's whisper-base store
    python -m jobs.heads --store out/demo/store --out /tmp/demo-heads --plan        # what it costs, before it runs
    python -m jobs.heads --store /data/mms-store --model facebook/mms-300m --out /data/heads --layers 12,24

See engine/pipelines/heads/run.py for the outputs and docs/heads.md for what they show.
"""

from __future__ import annotations

from engine.pipelines.heads.config import HeadsConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.heads.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.heads.plan import plan_heads_run

    return plan_heads_run(config, device)


common.define_config_flags(
    HeadsConfig,
    __name__,
    run=common.CLAIMING,
    required=("out",),
    plan=plan,
    help={"out": "output folder: local path or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.heads.run import run_heads  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(HeadsConfig)
    print(run_heads(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
