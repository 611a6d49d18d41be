r"""Early exit and zero-shot ASR / speech translation: decode every utterance of a layer store from chosen encoder
layers, and score it (WER, CER, BLEU, chrF).

    python -m jobs.decode --store /tmp/demo-store --out /tmp/demo-decode --layers 2-7 --tasks transcribe,translate
    python -m jobs.decode --store gs://bucket/fleurs --out gs://bucket/fleurs-decode --decoding greedy,beam:5 \
        --langs kk_kz,ga_ie --decode_as ga_ie=en

The encoder is recomputed up to each layer from the audio the store's utterance table points to (--source audio, the
only source: exact, since the decoder also attends to the window's padding frames, which the store does not keep).
--model must be the store's model. Re-running with the same --out resumes per (language, layer, ln_post, task,
decoding) part. Output layout: engine/pipelines/decode/hypotheses.py and BUILD.md; library:
engine/pipelines/decode/run.py.

Several hosts: start one process per host with --distributed (or --coordinator_address, --num_processes,
--process_id); the processes claim (language, layer, ln_post) units one at a time through claim keys in --out; a dead
process's claims expire after --claim_ttl seconds and the others take them. Process 0 merges the parts at the end.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.decode.config import (
    COMPUTE_DTYPES,
    LANGUAGE_MODES,
    LN_POST,
    SOURCES,
    DecodeConfig,
    references_path,
)
from engine.pipelines.decode.run import run_decode
from jobs import common

common.define_store_flag("layer store written by the encode job; its utterance table points to the audio")
common.define_out_flag("output folder or TensorStore kvstore URL (created if missing, resumed if present)")
flags.DEFINE_string("model", None, "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt")
common.define_langs_flag()
flags.DEFINE_string("layers", "all", "encoder layers of the store to decode from: a list (2,4), a range (2-7) or all")
flags.DEFINE_string("tasks", "transcribe", "comma-separated: transcribe, translate (to English)")
flags.DEFINE_enum("ln_post", "both", list(LN_POST), "apply ln_post to intermediate layers (L+1 has it already)")
flags.DEFINE_string("decoding", "greedy", "comma-separated: greedy, beam:N (CTranslate2's / Whisper's beam search)")
flags.DEFINE_float("patience", 1.0, "beam search: stop after round(N * patience) finished hypotheses")
flags.DEFINE_float("length_penalty", 1.0, "beam search: rank by logprob / length ** length_penalty (0: no penalty)")
flags.DEFINE_enum("language", "forced", list(LANGUAGE_MODES), "forced: the store language's code; detect: per window")
flags.DEFINE_string("decode_as", "", "language tokens for languages Whisper lacks, e.g. ky=kk,ga=en (recorded)")
flags.DEFINE_integer("max_new_tokens", 224, "tokens per 30 s window at most (CTranslate2's default)")
flags.DEFINE_enum("source", "audio", list(SOURCES), "audio: recompute the encoder from the store's audio (exact)")
flags.DEFINE_string("references", None, "TSV id<TAB>English text for translate (default: the store's English)")
flags.DEFINE_integer("batch_size", 8, "30 s windows per decoder call")
flags.DEFINE_enum("compute_dtype", "float32", list(COMPUTE_DTYPES), "model dtype on the device")
flags.DEFINE_integer("report_samples", 3, "utterances per language shown layer by layer in report.md")
common.define_run_flags(strict=True, distributed=True, claims=True)
FLAGS = flags.FLAGS


def _decode_as(value: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in common.parse_list(value) or ():
        lang, sep, code = item.partition("=")
        if not sep or not lang or not code:
            raise flags.ValidationError(f"--decode_as: {item!r} is not lang=code, e.g. ky=kk")
        pairs.append((lang.strip(), code.strip()))
    return tuple(pairs)


def main() -> int:
    config = common.config_from_flags(
        DecodeConfig,
        langs=common.parse_list(FLAGS.langs),
        layers=common.parse_layers(FLAGS.layers),
        tasks=common.parse_list(FLAGS.tasks) or ("transcribe",),
        decodings=common.parse_list(FLAGS.decoding) or ("greedy",),
        decode_as=_decode_as(FLAGS.decode_as),
        references=references_path(FLAGS.references),
    )
    summary = run_decode(config)
    return common.finish(summary, summary.outputs)


if __name__ == "__main__":
    common.run(main)
