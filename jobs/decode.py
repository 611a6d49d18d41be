r"""Early exit and zero-shot ASR / speech translation: decode every utterance of a layer store from chosen encoder
layers, and score it (WER, CER, BLEU, chrF).

    python -m jobs.decode --store /tmp/demo-store --out /tmp/demo-decode --layers 2-7 --tasks transcribe,translate
    python -m jobs.decode --store /tmp/demo-store --out /tmp/demo-decode-beam --layers 7 --decoding greedy,beam:5 \
        --langs en,de,sv --plan

The encoder is recomputed up to each layer from the audio the store's utterance table points to (--source audio, the
only source: exact, since the decoder also attends to the window's padding frames, which the store does not keep).
--model must be the store's model. Re-running with the same --out resumes per (language, layer, ln_post, task,
decoding) part. Output layout: engine/pipelines/decode/hypotheses.py and BUILD.md; library:
engine/pipelines/decode/run.py.

Several hosts: start one process per host with --distributed (or --coordinator_address, --num_processes,
--process_id); the processes claim languages (a CTC head: (language, layer)) one at a time through claim keys in
--out; a dead process's claims expire after --claim_ttl seconds and the others take them. Process 0 merges the parts
at the end.
"""

from __future__ import annotations

from engine.pipelines.decode.config import DecodeConfig
from jobs import common


def plan(config, device):
    """The run's --plan (``engine.pipelines.stages.decode_plan``), imported only when asked: --help loads no JAX. It
    first refuses what the run would refuse (``check_decode``: the model, its head, decodings, tasks, languages and
    layers), so that a plan is never printed of a run that cannot start."""
    from engine.pipelines.decode.run import check_decode
    from engine.pipelines.stages.decode_plan import plan_decode_run

    check_decode(config)
    return plan_decode_run(config, device)


common.define_config_flags(
    DecodeConfig,
    __name__,
    run=common.RUN_OPTIONS,
    required=("out",),
    help={"out": "output folder or TensorStore kvstore URL (created if missing, resumed if present)"},
    plan=plan,
    distributed=True,
)


def main() -> int:
    from engine.pipelines.decode.run import run_decode  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(DecodeConfig)
    summary = run_decode(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
