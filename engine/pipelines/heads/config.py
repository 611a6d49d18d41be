"""The heads job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

LOSSES = ("contrastive", "ce")  # gradient importance: retrieval over parallel utterances; the decoder's cross-entropy


class HeadsError(BabelgridError, ValueError):
    """The heads job cannot run as asked: a store it cannot read, a model that is not the store's, bad options."""


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Which store's model to ablate, head by head, and how to score it (``engine.pipelines.heads``)."""

    store: str = option(help="layer store written by the encode job: its model and utterances (the audio is read "
                        "again from its utterance table)", required=True, reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    model: str | None = option(
        None, "the store's model (hub id or folder, as encode's --model), default the packaged whisper-base"
    )  # fmt: skip
    adapter: str | None = option(None, "MMS language adapter the store was encoded with")
    langs: tuple[str, ...] | None = option(None, "comma-separated language codes of the store, or 'all'", parse="list")
    utterances: int = option(
        10, "utterances per language scored under every ablation (the first the store has done): each ablation "
        "encodes all of them again", minimum=1,
    )  # fmt: skip
    layers: tuple[int, ...] | None = option(
        None, "stored layers scored by SeqSim R@1 and the language-ID probe: a list (3,6), a range or all; default "
        "the middle block's and the last stored layer", parse="layers",
    )  # fmt: skip
    batch_size: int = option(8, "rows (a window under one mask) per encoder step", minimum=1)
    decode: bool = option(True, "where the model has a text decoder: WER/CER of the last layer's greedy decode "
                          "under every ablation (--nodecode: not scored)")  # fmt: skip
    max_new_tokens: int = option(96, "decode: tokens per 30 s window at most", minimum=1)
    importance: tuple[str, ...] = option(
        LOSSES, "losses whose gradient with respect to the head mask is each head's importance (Michel et al. "
        "2019): contrastive (retrieval of translations, every family), ce (the decoder's cross-entropy of the "
        "transcript, where there is a decoder); 'none': no gradient", parse="names",
    )  # fmt: skip
    temperature: float = option(0.1, "contrastive loss: the softmax temperature of the cosine similarities",
                                positive=True)  # fmt: skip
    grad_batch: int = option(2, "rows per backward pass (memory: a backward pass keeps every block's activations)",
                             minimum=1)  # fmt: skip
    local_frames: int = option(5, "attention statistics: the window (+- frames) of the local share", minimum=0)
    sink_frames: int = option(
        3, "attention sinks: k, the most-attended frames of each window whose share of its attention is reported "
        "(and the first k frames', to say whether the sinks are the first frames)", minimum=1,
    )  # fmt: skip
    top: int = option(5, "heads listed per language and metric in selective_heads.csv", minimum=1)
    seed: int = option(0, "seed of the language-ID probe's folds")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise HeadsError("heads needs an output folder: run.out (--out)")
        if not self.importance:  # `--importance=` (a TypeError deep in the check below)
            raise HeadsError(f"--importance takes {', '.join(LOSSES)} or none, got nothing: pass --importance none")
        bad = [x for x in self.importance if x not in (*LOSSES, "none")]
        if bad or ("none" in self.importance and len(self.importance) > 1):
            raise HeadsError(f"--importance takes {', '.join(LOSSES)} or none, got {list(self.importance)}")

    @property
    def losses(self) -> tuple[str, ...]:
        return tuple(x for x in self.importance if x != "none")
