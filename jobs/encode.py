r"""Encode every encoder layer of every utterance into a TensorStore layer store.

    python -m jobs.encode --out /tmp/demo-store          # demo set, packaged whisper-base
    python -m jobs.encode --model openai/whisper-large-v3 --dataset fleurs --langs en_us,de_de \
        --split test --out gs://bucket/fleurs-large-v3 --dtype bfloat16

Re-running with the same --out resumes: complete utterances are skipped. See BUILD.md for the
store layout and engine/pipelines/encode/run.py for the pipeline.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.encode.run import EncodeConfig, run_encode
from jobs import common

common.define_out_flag("output store: local path or TensorStore kvstore URL (gs://, s3://, file://)")
flags.DEFINE_string("model", None, "hub id, HF folder, CTranslate2 folder or OpenAI .pt (default: packaged base)")
flags.DEFINE_string("dataset", "demo", "demo | fleurs | fleurs:/local/copy | manifest:/file.jsonl | folder:/dir")
common.define_langs_flag("of the dataset")
flags.DEFINE_string("split", "test", "dataset split (FLEURS: train, validation, test)")
flags.DEFINE_string("layers", "all", "encoder layers to store: 'all', a list '0,3,7' or ranges '1-4' (0 = stem)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "storage dtype")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16", "float16"], "model dtype on the device")
flags.DEFINE_integer("batch_size", 8, "30 s windows per encoder step over all local devices")
flags.DEFINE_enum("long_audio", "window", ["window", "truncate"], "audio over 30 s: consecutive windows, or cut")
flags.DEFINE_integer("prefetch", 4, "host threads decoding audio ahead of the device")
flags.DEFINE_integer("claim_utterances", 16, "utterances per work unit the processes of a multi-host run claim")
common.define_run_flags(strict=True, distributed=True, claims=True)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        EncodeConfig, langs=common.parse_list(FLAGS.langs), layers=common.parse_layers(FLAGS.layers)
    )
    return common.finish(run_encode(config), [f"store: {FLAGS.out}"])


if __name__ == "__main__":
    common.run(main)
