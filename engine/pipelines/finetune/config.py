"""The finetune job's config and its optimiser's (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses
import os

from engine.runtime.options import ConfigError, RunOptions, canonical_location, option, validate

TASK_TOKENS = ("transcribe", "translate")
COMPUTE_DTYPES = ("float32", "bfloat16")  # parameters stay float32
# Fields that change what is trained: a resume must match them all.
HYPERPARAMETERS = ("store", "model", "source_langs", "target_lang", "targets", "target_dataset", "task_token", "steps",
                   "batch_size",
                   "learning_rate", "warmup_steps", "decay", "weight_decay", "clip_norm", "label_smoothing",
                   "trainable", "compute_dtype", "seed", "held_out", "ewc_lambda", "ewc_examples")  # fmt: skip
# --trainable groups, each family's regular expression on its own parameter names (``Trainer.groups``); layer norms
# go with the sublayer they normalise.
TRAINABLE = ("decoder", "cross_attention", "self_attention", "mlp", "embeddings", "final_ln")
DECAYS = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW (decoupled weight decay, torch's form) after global-norm clipping, on a warmup + decay schedule."""

    learning_rate: float = 1e-5  # peak, reached after warmup_steps
    total_steps: int = 1000  # the schedule decays to 0 here (linear, cosine)
    warmup_steps: int = 0  # linear from 0; the first step has learning rate 0 when > 0 (as Hugging Face's)
    decay: str = "linear"
    weight_decay: float = 0.01  # torch.optim.AdamW's default, on every trainable tensor
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # max global gradient norm; 0 = no clipping
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {self.total_steps}, "
                f"{self.warmup_steps}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What to train on and how; ``run.out`` is the output folder (local)."""

    store: str = option(help="layer store written by the encode job (must hold layer L+1)", required=True,
                        reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    model: str | None = option(
        None,
        "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt "
        "(default: the packaged whisper-base, the demo store's)",
    )
    source_langs: tuple[str, ...] = option(("en",), "store languages whose states are the inputs", parse="list")
    # A store language (its transcriptions are the targets) or an ISO 639-1 code with targets.
    target_lang: str = option("de", "target language: a store language (its transcriptions) or with --targets")
    targets: str | None = option(None, "TSV of id<TAB>text target texts, instead of the store's --target_lang texts")
    target_dataset: str | None = option(
        None,
        "a dataset whose utterances carry translations (covost2:/dir[:en_zh-CN]): its target texts by id, instead of "
        "the store's --target_lang texts (the store encoded from its source language)",
    )
    # The prompt's task, beside the target language's token (the family's ``Trainer.prompt``).
    task_token: str = option("transcribe", "task token of the prompt", choices=TASK_TOKENS)
    eval_langs: tuple[str, ...] | None = option(
        None, "languages evaluated on held-out ids (default: all of the store's)", parse="list"
    )
    steps: int = option(100, "optimiser steps", minimum=1)
    batch_size: int = option(8, "pairs per step (a multiple of the device count)", minimum=1)
    learning_rate: float = option(1e-5, "peak AdamW learning rate")
    warmup_steps: int = option(0, "linear warmup steps")
    decay: str = option("linear", "learning-rate decay after warmup (to 0 at --steps)", choices=DECAYS)
    weight_decay: float = option(0.01, "AdamW decoupled weight decay")
    clip_norm: float = option(1.0, "global gradient-norm clip (0 = none)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    trainable: tuple[str, ...] = option(
        ("decoder",), f"parameter groups to train: {', '.join(TRAINABLE)}", choices=TRAINABLE, parse="list"
    )
    compute_dtype: str = option("float32", "compute dtype (parameters stay float32)", choices=COMPUTE_DTYPES)
    seed: int = option(0, "seed of the split and the batch order")
    held_out: float = option(0.2, "fraction of ids held out for evaluation")
    ewc_lambda: float = option(0.0, "EWC penalty weight (0 = off)")
    ewc_examples: int = option(64, "X -> en examples per source language for the diagonal Fisher")
    checkpoint_every: int = option(50, "steps between orbax checkpoints")
    log_every: int = option(10, "steps between training-loss rows of metrics.csv")
    max_eval: int = option(0, "held-out utterances per evaluation language (0 = all)")
    export: bool = option(True, "write OUT/model in Hugging Face layout at the end")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ConfigError("finetune needs an output folder: run.out (--out)")
        if not self.source_langs:
            raise ConfigError("source_langs is empty: name the store languages whose states are the inputs")
        if self.targets and self.target_dataset:
            raise ConfigError("targets and target_dataset both give target texts: pass one")
        if not 0 < self.held_out < 1:
            raise ConfigError(f"held_out must be a fraction in (0, 1), got {self.held_out}")
        try:
            self.optim()  # checks the optimiser fields
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def optim(self) -> OptimConfig:
        return OptimConfig(self.learning_rate, self.steps, self.warmup_steps, self.decay, self.weight_decay,
                             clip_norm=self.clip_norm, label_smoothing=self.label_smoothing)  # fmt: skip

    def hyperparameters(self, padding: str) -> dict:
        """The fields a resume must match, and how the model's ``Trainer.memory`` fills the frames past an utterance
        (``padding``: ``engine.models.interface.SILENCE_FILL``, ``MASKED``)."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                  if k in HYPERPARAMETERS}  # fmt: skip
        return {**fields, "store": local_path(self.store), "model": local_path(self.model), "padding": padding}


def local_path(name):
    """``name`` as ``canonical_location`` gives it where it names a local file or folder (a relative path read in
    another working folder names the same one then); a URL, a hub id or None as it is."""
    if isinstance(name, str) and "://" not in name and os.path.exists(name):
        return canonical_location(name)
    return name
