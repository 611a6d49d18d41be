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

import sys

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
    summary = run_encode(config)
    code = common.finish(summary, [f"store: {config.run.out}"], strict=config.run.strict)
    if summary.n_skipped and not summary.done and not _holds_any(config.run.out):
        # Every clip skipped: rc 0 and a store of nothing read as success to a pipeline's next stage (newcomer probe)
        print(f"encode: nothing was encoded: all {summary.n_skipped} utterances were skipped (named above, and in "
              f"each language's skipped.json), and the store holds none", file=sys.stderr)  # fmt: skip
        return 1
    return code


def _holds_any(url: str) -> bool:
    """Whether the layer store at ``url`` holds a done utterance (other --worker processes may have encoded some)."""
    from engine.stores.reader import open_store

    reader = open_store(url)
    return any(reader.done(lang).any() for lang in reader.languages())


if __name__ == "__main__":
    common.run(main)
