"""The word probe's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import ConfigError, RunOptions, option, validate


class ProbeError(BabelgridError, ValueError):
    """The probe cannot run as asked: bad relations file, unknown language or layer."""


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """store: layer store of single-word clips (id = concept); run.out: output folder or kvstore URL; relations: CSV
    of RELATION_COLUMNS (None = generate them); langs / layers: None = all of the store; seeds: bootstrap resamples."""

    store: str = option(help="layer store of single-word clips, id = concept, transcription = the word where there is "
                        "one (e.g. encoded from --dataset words-demo)", required=True, reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    relations: str | None = option(None, "CSV lang_a,word_a,lang_b,word_b,relation (default: generate them)")
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    layers: tuple[int, ...] | None = option(None, "layers: 'all', a list '0,3,7' or ranges '1-4'", parse="layers")
    seeds: int = option(5, "bootstrap resamples per estimate", minimum=1)
    seed: int = option(0, "seed of the bootstrap and of the generated unrelated pairs")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ConfigError("probe needs an output folder: run.out (--out)")
