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

from engine.pipelines.align.config import AlignConfig
from jobs import common

common.define_config_flags(
    AlignConfig,
    __name__,
    run=common.RUN_OPTIONS,
    required=("out",),
    help={"out": "output folder or TensorStore kvstore URL (created if missing, resumed if present)"},
    distributed=True,
)


def main() -> int:
    from engine.pipelines.align.run import run_align  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(AlignConfig)
    summary = run_align(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
