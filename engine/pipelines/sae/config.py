"""The sae job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

KINDS = ("batchtopk", "topk")
DEFAULT_BUDGET = 2 << 30  # bytes of frames held for shuffling, per process, without --memory_budget
# Without --steps or --epochs: DEFAULT_EPOCHS passes, and at least MIN_STEPS steps (docs/sae.md "How long it trains":
# on the demo store 10 epochs were 60 steps, FVU 0.62; bench/RESULTS.md has the curve the floor was chosen from).
DEFAULT_EPOCHS = 10
MIN_STEPS = 2000


class SaeError(BabelgridError, ValueError):
    """The sae job cannot run as asked: an unknown layer or language, bad sizes, an output of other settings."""


@dataclasses.dataclass(frozen=True)
class SaeConfig:
    """Which store's layers to train sparse autoencoders on, how, and how to judge them (``engine.pipelines.sae``)."""

    store: str = option(help="layer store written by the encode job", required=True, reads=True)
    run: RunOptions = RunOptions()
    layers: tuple[int, ...] | None = option(
        None, "layers to train one SAE each on: a list (2,4,6), a range (1-6) or all (default: every stored layer)",
        parse="layers",
    )  # fmt: skip
    langs: tuple[str, ...] | None = option(None, "languages whose frames train it (default: all)", parse="list")
    kind: str = option("batchtopk", "batchtopk (the k * B largest of a batch) or topk (the k largest per frame)",
                       choices=KINDS)  # fmt: skip
    expansion: int = option(8, "features per input dimension (d_sae = expansion x d_in)", minimum=1)
    k: int = option(50, "active features per frame (batchtopk: on average)", minimum=1)
    epochs: int | None = option(
        None, f"passes over the layer's frames (default: {DEFAULT_EPOCHS}, and at least {MIN_STEPS} steps)", minimum=1
    )  # fmt: skip
    steps: int | None = option(
        None, "optimizer steps per layer, whatever the store's size (wins over --epochs; the data order runs on "
        f"into further epochs; default: {DEFAULT_EPOCHS} epochs, and at least {MIN_STEPS})", minimum=1,
    )  # fmt: skip
    batch_size: int = option(4096, "frames per step (split over every device)", minimum=2)
    lr: float | None = option(None, "Adam's learning rate (default: 2e-4 / sqrt(d_sae / 16384), dictionary-"
                              "learning's)", positive=True)  # fmt: skip
    warmup: int = option(1000, "steps of linear warmup (at most a tenth of the run)", minimum=0)
    auxk_alpha: float = option(1 / 32, "weight of the auxiliary loss against dead features", minimum=0)
    dead_tokens: int | None = option(
        None, "frames without firing after which a feature is dead (default: one epoch, at most 10M, Gao et al.'s)",
        minimum=1,
    )  # fmt: skip
    block: int = option(16, "utterances per store read", minimum=1)
    checkpoint_every: int = option(200, "steps between orbax checkpoints (a killed run resumes from the last)",
                                   minimum=1)  # fmt: skip
    eval_utterances: int = option(40, "utterances per language for retrieval and language ID on reconstructions",
                                  minimum=2)  # fmt: skip
    activations: int = option(5, "utterances per language whose feature activations are kept (sparse)", minimum=0)
    model: str | None = option(
        None, "the store's checkpoint (hub id, folder, or 'default' for the packaged whisper-base): with a text "
        "decoder, early-exit WER/CER from each layer as stored and as reconstructed (default: not scored)",
    )  # fmt: skip
    decode_utterances: int = option(8, "utterances per language decoded for the early-exit WER/CER", minimum=1)
    max_new_tokens: int = option(96, "tokens decoded per window for the early-exit WER/CER", minimum=1)
    decode_batch: int = option(8, "windows per decoder call", minimum=1)
    neurons: str | None = option(
        None, "a neurons job's output folder, of the same model and languages: line the SAEs' language-selective "
        "features up with its selective feed-forward units (recomputed at every run from the finished layers)",
        reads=True,
    )  # fmt: skip
    top: int = option(10, "most selective features listed per language and layer", minimum=1)
    seed: int = option(0, "seed of the initialisation, the data order and the probes' folds", minimum=0)

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise SaeError("sae needs an output folder: run.out (--out)")
        if "://" in self.run.out and not self.run.out.startswith("file://"):
            raise SaeError(
                f"--out {self.run.out!r}: the sae job writes orbax checkpoints, which need a local folder (copy the "
                "folder to an object store afterwards)"
            )


def total_steps(config: SaeConfig, per_epoch: int) -> int:
    """Steps each layer trains: ``--steps``; else ``--epochs`` passes of ``per_epoch`` batches; else
    ``DEFAULT_EPOCHS`` passes and at least ``MIN_STEPS`` (a small store's few batches an epoch still train the SAE)."""
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return config.epochs * per_epoch
    return max(DEFAULT_EPOCHS * per_epoch, MIN_STEPS)
