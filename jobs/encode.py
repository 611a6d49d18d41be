r"""Encode every encoder layer of every utterance into a TensorStore layer store.

    python -m jobs.encode --out /tmp/demo-store          # demo set, packaged whisper-base
    python -m jobs.encode --model openai/whisper-large-v3 --dataset fleurs --langs en_us,de_de \
        --split test --out gs://bucket/fleurs-large-v3 --dtype bfloat16

Re-running with the same --out resumes: complete utterances are skipped. See BUILD.md for the
store layout and engine/pipelines/encode/run.py for the pipeline.
"""

from __future__ import annotations

from engine.pipelines.encode.plan import plan_encode_run
from engine.pipelines.encode.run import EncodeConfig, run_encode
from jobs import common

common.define_config_flags(
    EncodeConfig,
    __name__,
    run=common.RUN_OPTIONS,
    required=("out",),
    help={"out": "output store: local path or TensorStore kvstore URL (gs://, s3://, file://)"},
    plan=plan_encode_run,
    distributed=True,
)


def main() -> int:
    config = common.config_from_flags(EncodeConfig)
    return common.finish(run_encode(config), [f"store: {config.run.out}"], strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
