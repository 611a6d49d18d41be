r"""Sparse autoencoders trained from a layer store, one per layer, judged by what their reconstructions keep.

    python -m jobs.sae --store /tmp/demo-store --out /tmp/demo-sae --layers 2,4,7
    python -m jobs.sae --store /tmp/demo-store --out /tmp/demo-sae --layers 2,4,7 --plan   # steps, frames, time
    python -m jobs.sae --store /data/fleurs-store --out /data/sae --expansion 8 --k 50 --steps 20000 --worker
    python -m jobs.sae --store S --out O --model openai/whisper-base --neurons /data/neurons   # early exit; units

Writes OUT/layer-<L>/sae_weights.safetensors and cfg.json (sae-lens's names, applying to the stored states), OUT/
metrics.csv, OUT/features.parquet, OUT/selective_features.csv, OUT/activations/ and OUT/figures/; with --model (the
store's checkpoint, a family with a text decoder) early-exit WER/CER from each layer as stored and as reconstructed
(OUT/early_exit.csv); with --neurons (a neurons job's output folder of the same model) the features' language
selectivity against its feed-forward units' (OUT/neurons_alignment.csv). Columns in docs/outputs.md, reading in
docs/sae.md, library in engine/pipelines/sae/ and kernels/sae.py.
"""

from __future__ import annotations

from engine.pipelines.sae.config import SaeConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.sae.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.sae.plan import plan_sae_run

    return plan_sae_run(config, device)


common.define_config_flags(
    SaeConfig,
    __name__,
    run=(*common.CLAIMING, "strict", "memory_budget"),
    required=("store", "out"),
    plan=plan,
    help={
        "out": "output folder (local: it holds orbax checkpoints)",
        "memory_budget": "bytes of frames held at once for shuffling, as 2GiB (default 2GiB)",
    },
)


def main() -> int:
    from engine.pipelines.sae.run import run_sae  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(SaeConfig)
    summary = run_sae(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
