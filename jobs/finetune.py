r"""Fine-tune Whisper's decoder on a frozen encoder from a layer store's final-layer states (arXiv 2407.01130).

    python -m jobs.finetune --store /tmp/demo_new/store --out /tmp/ft-en-de --source_langs en --target_lang de \
        --steps 200 --model openai/whisper-base
    python -m jobs.finetune ... --ewc_lambda 1e6   # elastic weight consolidation on X -> en (docs/finetune.md)

Pairs: the source languages' stored layer L+1 with the target language's transcriptions of the same ids (or
--targets id<TAB>text). Held-out ids by a seeded split (OUT/split.csv). Evaluation before and after: X -> target
(transfer) and X -> en translate (forgetting), BLEU and chrF. Re-running with the same --out resumes from the last
checkpoint; other hyperparameters are refused. Output layout and padding: engine/pipelines/finetune/run.py and data.py.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.finetune.run import TASK_TOKENS, FinetuneConfig, run_finetune
from engine.pipelines.finetune.step import DECAYS, TRAINABLE
from jobs import common

common.define_store_flag("layer store written by the encode job (must hold layer L+1)")
common.define_out_flag("output folder (created if missing, resumed if present)")
flags.DEFINE_string("model", None, "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt")
flags.DEFINE_list("source_langs", ["en"], "store languages whose states are the inputs")
flags.DEFINE_string("target_lang", "de", "target language: a store language (its transcriptions) or with --targets")
flags.DEFINE_string("targets", None, "TSV of id<TAB>text target texts, instead of the store's --target_lang texts")
flags.DEFINE_enum("task_token", "transcribe", list(TASK_TOKENS), "task token of the prompt")
flags.DEFINE_list("eval_langs", None, "languages evaluated on held-out ids (default: all of the store's)")
flags.DEFINE_integer("steps", 100, "optimiser steps")
flags.DEFINE_integer("batch_size", 8, "pairs per step (a multiple of the device count)")
flags.DEFINE_float("learning_rate", 1e-5, "peak AdamW learning rate")
flags.DEFINE_integer("warmup_steps", 0, "linear warmup steps")
flags.DEFINE_enum("decay", "linear", list(DECAYS), "learning-rate decay after warmup (to 0 at --steps)")
flags.DEFINE_float("weight_decay", 0.01, "AdamW decoupled weight decay")
flags.DEFINE_float("clip_norm", 1.0, "global gradient-norm clip (0 = none)")
flags.DEFINE_float("label_smoothing", 0.0, "label smoothing of the cross-entropy")
flags.DEFINE_list("trainable", ["decoder"], f"parameter groups to train: {', '.join(TRAINABLE)}")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "compute dtype (parameters stay float32)")
flags.DEFINE_integer("seed", 0, "seed of the split and the batch order")
flags.DEFINE_float("held_out", 0.2, "fraction of ids held out for evaluation")
flags.DEFINE_float("ewc_lambda", 0.0, "EWC penalty weight (0 = off)")
flags.DEFINE_integer("ewc_examples", 64, "X -> en examples per source language for the diagonal Fisher")
flags.DEFINE_integer("checkpoint_every", 50, "steps between orbax checkpoints")
flags.DEFINE_integer("log_every", 10, "steps between training-loss rows of metrics.csv")
flags.DEFINE_integer("max_eval", 0, "held-out utterances per evaluation language (0 = all)")
flags.DEFINE_bool("export", True, "write OUT/model in Hugging Face layout at the end")
common.define_run_flags(strict=True, lease=False)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        FinetuneConfig,
        source_langs=tuple(FLAGS.source_langs),
        eval_langs=tuple(FLAGS.eval_langs) if FLAGS.eval_langs else None,
        trainable=tuple(FLAGS.trainable),
    )
    summary = run_finetune(config)
    return common.finish(summary, [f"wrote {config.out}/metrics.csv, model/, loss.png, bleu.png"])


if __name__ == "__main__":
    common.run(main)
