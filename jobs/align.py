r"""Word timestamps (start, end, probability of every word) for the utterances of a layer store.

    python -m jobs.align --store /tmp/demo-store --out /tmp/demo-words
    python -m jobs.align --store /tmp/demo-store --out /tmp/demo-words-decoded --langs en,de \
        --transcripts decode --subtitles srt,vtt

The store's final encoder layer is the decoder's input: no audio is read. --model must be the store's model (the
default is the packaged whisper-base, the encode job's default). Re-running with the same --out resumes. Output
layout: engine/stores/words.py and BUILD.md; library: engine/pipelines/align/run.py and engine/models/whisper/timing.py.

Several hosts: start one process per host with --distributed (or --coordinator_address, --num_processes,
--process_id); the processes claim part files one at a time through claim keys in --out; a dead process's claims
expire after --claim_ttl seconds and the others take them. Process 0 merges the parts at the end.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.align.run import COMPUTE_DTYPES, TRANSCRIPT_SOURCES, AlignConfig, run_align
from jobs import common

common.define_store_flag("layer store written by the encode job (must hold the final layer)")
common.define_out_flag("output folder or TensorStore kvstore URL (created if missing, resumed if present)")
flags.DEFINE_string("model", None, "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt")
common.define_langs_flag()
flags.DEFINE_enum("transcripts", "store", list(TRANSCRIPT_SOURCES), "store: the dataset's text; decode: greedy")
flags.DEFINE_integer("batch_size", 8, "utterances per decoder call")
flags.DEFINE_integer("chunk", 64, "utterances per part file (the unit of resume)")
flags.DEFINE_integer("median_filter_width", 7, "odd width of the median filter over frames (Whisper: 7)")
flags.DEFINE_enum("compute_dtype", "float32", list(COMPUTE_DTYPES), "model dtype on the device")
flags.DEFINE_list("subtitles", [], "also write per-utterance subtitle files: srt, vtt or both")
common.define_run_flags(strict=True, distributed=True, claims=True)
FLAGS = flags.FLAGS


def main() -> int:
    summary = run_align(
        common.config_from_flags(AlignConfig, langs=common.parse_list(FLAGS.langs), subtitles=tuple(FLAGS.subtitles))
    )
    return common.finish(summary, summary.outputs)


if __name__ == "__main__":
    common.run(main)
