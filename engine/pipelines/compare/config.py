"""The compare job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.pipelines.compare.measures import DEFAULT_FRAME_MEASURES, DEFAULT_MEASURES, MEASURES, ON_REQUEST
from engine.runtime.options import RunOptions, option, validate

__all__ = ["DEFAULT_FRAME_MEASURES", "DEFAULT_MEASURES", "LEVELS", "MEASURES", "CompareConfig", "CompareError"]
LEVELS = ("utterance", "frame")


class CompareError(BabelgridError, ValueError):
    """The stores cannot be compared as asked: different audio, unknown language or layer, bad options."""


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What to compare and where to write it. ``None`` means everything the stores share.

    stores: layer store URLs (one per model or setting), compared pairwise and each with itself.
    names: a name per store for the outputs (default: each store's model name; must be distinct per store).
    retrieval: a jobs.retrieval output folder per store ('' = compute mean-pooled retrieval from the store).
    retrieval_measure: the measure read from those folders (computed retrieval is always ``mean``).
    challenge: a jobs.challenge output folder: adds the full- vs challenge-set R@1 table (computed retrieval).
    frame_sample: frames per language at the frame level (module docstring).
    """

    run: RunOptions = RunOptions()
    stores: tuple[str, ...] = option(
        (), "comma-separated layer stores of the same audio, one per model", parse="list", required=True, reads=True
    )
    names: tuple[str, ...] | None = option(
        None, "a name per store for the outputs (default: each store's model name)", parse="list"
    )
    retrieval: tuple[str, ...] | None = option(
        None, "a jobs.retrieval --out folder per store ('' for one = compute mean-pooled)", parse="cells", reads=True
    )
    retrieval_measure: str = option("mean", "measure read from the --retrieval folders")
    challenge: str | None = option(None, "jobs.challenge --out folder: also write full vs challenge-set R@1",
                                   reads=True)  # fmt: skip
    langs: tuple[str, ...] | None = option(
        None, "comma-separated languages shared by the stores, each by any store's code (fr, fr_fr, fra_Latn), "
        "or 'all'", parse="list",
    )  # fmt: skip
    measures: tuple[str, ...] = option(
        DEFAULT_MEASURES, f"utterance-level measures (on request: {ON_REQUEST})", choices=MEASURES, parse="list",
    )  # fmt: skip
    frame_measures: tuple[str, ...] = option(
        DEFAULT_FRAME_MEASURES, "frame-level measures (CCA on frames: one SVD pair per layer pair)",
        choices=MEASURES, parse="list",
    )  # fmt: skip
    levels: tuple[str, ...] = option(
        LEVELS, "utterance (mean-pooled), frame (paired by time), or both", choices=LEVELS, parse="list"
    )
    frame_sample: int = option(2048, "frames per language at the frame level (seeded)", minimum=4)
    knn_k: int = option(10, "neighbours of mutual k-NN, CKNNA and cycle k-NN", minimum=1)
    svcca_keep: float = option(0.99, "share of each view's variance SVCCA keeps", positive=True)
    cca_epsilon: float = option(0.0, "PWCCA's ridge, relative to the largest variance", minimum=0.0)
    null_permutations: int = option(
        200, "permutations of the example correspondence per set: each score's null mean, 95th percentile and "
        "p-value (0 = no null)", minimum=0,
    )  # fmt: skip
    null_levels: tuple[str, ...] = option(
        ("utterance",), "levels that get the null (frame: a pass over every Gram per permutation; see docs)",
        choices=LEVELS, parse="list",
    )  # fmt: skip
    seed: int = option(0, "seed of the frame sample and of the null's permutations")
    allow_mismatch: bool = option(
        False, "compare stores whose utterances of one id differ in duration (refused: they do not hold the same audio)"
    )

    def __post_init__(self):
        validate(self)
        if not self.stores:
            raise CompareError("give at least one layer store to compare")
        if not self.run.out:
            raise CompareError("compare needs an output folder: run.out (--out)")
        for what, given in (("names", self.names), ("retrieval", self.retrieval)):
            if given is not None and len(given) != len(self.stores):
                raise CompareError(f"{what} needs one entry per store ({len(self.stores)}), got {len(given)}")
        if "cknna" in (*self.measures, *self.frame_measures) and self.knn_k < 2:
            raise CompareError(f"cknna needs knn_k >= 2 (platonic-rep's CKNNA refuses fewer), got {self.knn_k}")
        if self.svcca_keep > 1.0:
            raise CompareError(f"svcca_keep is a share of variance in (0, 1], got {self.svcca_keep}")
