"""Word timestamps (start, end, probability of every word) for the utterances of a layer store.

    python -m jobs.align --store /tmp/demo-store --out /tmp/demo-words
    python -m jobs.align --store gs://bucket/fleurs --out gs://bucket/fleurs-words --langs en_us,de_de \
        --transcripts decode --model openai/whisper-large-v2

The store's final encoder layer is the decoder's input: no audio is read. --model must be the store's model (the
default is the packaged whisper-base, the encode job's default). Re-running with the same --out resumes. Output
layout: engine/align.py and BUILD.md; library: engine/timing.py.
"""

from __future__ import annotations

from absl import flags

from engine.align import COMPUTE_DTYPES, TRANSCRIPT_SOURCES, AlignConfig, run_align
from jobs.common import (
    define_distributed_flags,
    define_langs_flag,
    define_out_flag,
    define_run_flags,
    define_store_flag,
    init_distributed,
    parse_list,
    run,
)

define_store_flag("layer store written by the encode job (must hold the final layer)")
define_out_flag("output folder or TensorStore kvstore URL (created if missing, resumed if present)")
flags.DEFINE_string("model", None, "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt")
define_langs_flag()
flags.DEFINE_enum("transcripts", "store", list(TRANSCRIPT_SOURCES), "store: the dataset's text; decode: greedy")
flags.DEFINE_integer("batch_size", 8, "utterances per decoder call")
flags.DEFINE_integer("chunk", 64, "utterances per part file (the unit of resume)")
flags.DEFINE_integer("median_filter_width", 7, "odd width of the median filter over frames (Whisper: 7)")
flags.DEFINE_enum("compute_dtype", "float32", list(COMPUTE_DTYPES), "model dtype on the device")
define_run_flags(strict=True)
define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    init_distributed()
    config = AlignConfig(
        store=FLAGS.store,
        out=FLAGS.out,
        model=FLAGS.model,
        langs=parse_list(FLAGS.langs),
        transcripts=FLAGS.transcripts,
        batch_size=FLAGS.batch_size,
        chunk=FLAGS.chunk,
        median_filter_width=FLAGS.median_filter_width,
        compute_dtype=FLAGS.compute_dtype,
        progress=FLAGS.progress,
    )
    summary = run_align(config)
    print(summary.report())
    for path in summary.outputs:
        print(path)
    return 1 if FLAGS.strict and summary.skipped else 0


if __name__ == "__main__":
    run(main)
