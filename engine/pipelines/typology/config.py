"""The typology job's config (light: ``--help`` builds its flags without loading JAX or lang2vec)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

DISTANCES = ("genetic", "geographic", "syntactic", "phonological", "inventory", "featural")
KINDS = ("r1", "gap")
METHODS = ("pearson", "spearman")


class TypologyError(BabelgridError, ValueError):
    """The typology job cannot run as asked: no similarity store, too few languages, unknown distance or layer."""


@dataclasses.dataclass(frozen=True)
class TypologyConfig:
    """similarity: a seqsim output; probes / compare: the alignment-and-separability curves' sources; the rest as
    their help says (docs/typology.md)."""

    similarity: str = option(required=True, help="similarity store written by the seqsim job (local or kvstore URL)",
                             reads=True)  # fmt: skip
    measures: tuple[str, ...] | None = option(
        None, "similarity measures of the store (default: every stored one)", parse="list", flag="measure"
    )
    kinds: tuple[str, ...] = option(
        KINDS, "language distances: r1 = 1 - R@1, gap = 1 - (parallel mean - non-parallel mean)", choices=KINDS,
        parse="list",
    )  # fmt: skip
    distances: tuple[str, ...] = option(DISTANCES, "URIEL distances to correlate with", choices=DISTANCES,
                                        parse="list")  # fmt: skip
    langs: tuple[str, ...] | None = option(None, "languages of the store (default: all)", parse="list")
    layers: tuple[int, ...] | None = option(
        None, "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)", parse="layers"
    )
    method: str = option("pearson", "Mantel correlation: pearson, or spearman (on ranks)", choices=METHODS)
    permutations: int = option(9999, "Mantel permutations (the p-value is at least 1 / (permutations + 1))",
                               minimum=0)  # fmt: skip
    seed: int = option(0, "seed of the Mantel permutations (scikit-bio's, for the same seed)")
    dendrogram_layer: int | None = option(None, "layer of the dendrogram (default: where mean R@1 is highest)")
    probes: tuple[str, ...] | None = option(
        None, "probes output folders (lid.csv): one for --similarity's model, or one per --compare store",
        parse="list", reads=True,
    )  # fmt: skip
    compare: str | None = option(None, "a compare output folder: the curves of every model it holds", reads=True)
    run: RunOptions = RunOptions()

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise TypologyError("typology needs an output folder: run.out (--out)")
        if self.compare and not self.probes:
            raise TypologyError("--compare needs --probes: a probes output folder of each store it compares")
