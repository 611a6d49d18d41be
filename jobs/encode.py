r"""Encode every encoder layer of every utterance into a TensorStore layer store.

    python -m jobs.encode --out /tmp/demo-store                           # demo set, packaged whisper-base
    python -m jobs.encode --out /tmp/demo-store-de --langs de,en --layers 0,4-7 --dtype bfloat16 --plan
    python -m jobs.encode --out /tmp/words-store --dataset words-demo     # the bundled word set (jobs.probe)

Datasets (--dataset): demo (30 sentences x 8 languages, espeak-ng), words-demo (42 concepts x 4 languages),
fleurs (the hub's Parquet export; --langs en_us,de_de --split test), fleurs:/local/copy, manifest:/file.csv|jsonl,
folder:/dir (<dir>/<lang>/<id>.<ext>, or a flat folder with --lang), hf:<hub id or path>[:config] (any datasets
dataset: --audio_column, --text_column, --id_column, --lang_column), covost2:/dir[:en_zh-CN], mass:/dir;
translations share an id (BUILD.md#datasets). --plan lists the dataset (revision, columns, ids) without encoding.
Output on an object store: --out gs://bucket/run or s3://bucket/run (BUILD.md). Re-running with the same --out
resumes: complete utterances are skipped. The store's layout: BUILD.md and docs/outputs.md.
"""

from __future__ import annotations

from engine.pipelines.encode.config import EncodeConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.encode.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.encode.plan import plan_encode_run

    return plan_encode_run(config, device)


common.define_config_flags(
    EncodeConfig,
    __name__,
    run=common.RUN_OPTIONS,
    required=("out",),
    help={"out": "output store: local path or TensorStore kvstore URL (gs://, s3://, file://)"},
    plan=plan,
    distributed=True,
)


def main() -> int:
    from engine.pipelines.encode.run import run_encode  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(EncodeConfig)
    return common.finish(run_encode(config), [f"store: {config.run.out}"], strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
