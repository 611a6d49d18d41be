r"""Fine-tune Whisper's decoder on a frozen encoder from a layer store's final-layer states (arXiv 2407.01130).

    python -m jobs.finetune --store /tmp/demo-store --out /tmp/demo-ft-en-de --source_langs en --target_lang de \
        --steps 200
    python -m jobs.finetune --store /tmp/demo-store --out /tmp/demo-ft-ewc --source_langs en --target_lang de \
        --steps 200 --ewc_lambda 1e6    # elastic weight consolidation on X -> en (docs/finetune.md)

Pairs: the source languages' stored layer L+1 with the target language's transcriptions of the same ids (or
--targets id<TAB>text, or --target_dataset covost2:/dir:en_zh-CN: a dataset's translations; BUILD.md#datasets).
Held-out ids by a seeded split (OUT/split.csv). Evaluation before and after: X -> target (transfer) and X -> en
translate (forgetting), BLEU and chrF. Re-running with the same --out resumes from the newest checkpoint that matches
its checksums (falling back past a damaged one, with a warning); other hyperparameters are refused. Whether the model
can be exported is checked before training (--noexport: no OUT/model). Output layout and padding:
engine/pipelines/finetune/run.py and data.py.
"""

from __future__ import annotations

from engine.pipelines.finetune.config import FinetuneConfig
from jobs import common

common.define_config_flags(
    FinetuneConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout", "strict", "matmul_precision"),
    required=("out",),
    help={"out": "output folder (created if missing, resumed if present)"},
)


def main() -> int:
    from engine.pipelines.finetune.run import run_finetune  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(FinetuneConfig)
    summary = run_finetune(config)
    return common.finish(summary, [summary.wrote(config.run.out)], strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
