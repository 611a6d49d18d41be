"""The mixing job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

AGGREGATES = (
    "mean",
    "max",
)  # over a word's frames: the reference's DIM_AGGREGATOR (engine.models.common.value_zeroing)


class MixingError(BabelgridError, ValueError):
    """The mixing job cannot run as asked: a store it cannot read, a model that is not the store's or cannot re-run
    one block, words it cannot read, bad options."""


@dataclasses.dataclass(frozen=True)
class MixingConfig:
    """Which store's model to re-run block by block with each word's value vectors zeroed (``engine.pipelines.mixing``;
    docs/value_zeroing.md)."""

    store: str = option(help="layer store written by the encode job: its model and utterances (the audio is read "
                        "again from its utterance table)", required=True, reads=True)  # fmt: skip
    words: str = option(help="the align job's output folder (<lang>/words.parquet, times in seconds): the word spans",
                        required=True, reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    model: str | None = option(
        None, "the store's model (hub id or folder, as encode's --model), default the packaged whisper-base"
    )  # fmt: skip
    adapter: str | None = option(None, "MMS language adapter the store was encoded with")
    langs: tuple[str, ...] | None = option(None, "comma-separated language codes of the store, or 'all'", parse="list")
    utterances: int = option(10, "utterances per language (the first the store has done that have words)", minimum=1)
    layers: tuple[int, ...] | None = option(
        None, "blocks to re-run (1..L: block l reads layer l - 1 and its mixing is layer l's): a list (3,6), a range "
        "or all; default all", parse="layers",
    )  # fmt: skip
    interp: str | None = option(
        None, "an interp job's output folder on the same store and words: interp.parquet compares the mixing of the "
        "words it matched across languages (mutual-best pairs) with the other words'", reads=True,
    )  # fmt: skip
    aggregate: str = option("mean", "over a word's frames: mean (the reference's default) or max", choices=AGGREGATES)
    chunk: int = option(8, "word masks per block call (the rows of one batch)", minimum=1)

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise MixingError("mixing needs an output folder: run.out (--out)")
        if self.aggregate not in AGGREGATES:
            raise MixingError(f"--aggregate takes {' or '.join(AGGREGATES)}, got {self.aggregate!r}")
