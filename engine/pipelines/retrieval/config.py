"""The retrieval job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.pipelines.stages.errors import RetrievalError
from engine.runtime.options import RunOptions, option, validate
from kernels.settings import DEFAULT_KS, TIE_RULES


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """What to score and where to write it. ``None`` means everything the similarity store holds.

    run.out: output folder; None = the similarity store itself when it is local.
    figure_layer: the heatmap's layer; None = the layer with the best mean R@1 of ``seqsim`` (else the first
      measure) over directed pairs.
    ties: ``kernels.metrics`` tie rule; scores with many ties (``duration``) deserve a second run with the other.
    """

    similarity: str = option(help="similarity store written by the seqsim job: local path or kvstore URL",
                             required=True, reads="beside")  # fmt: skip
    measures: tuple[str, ...] | None = option(
        None, "comma-separated measures (seqsim, mean, centre, duration, ...) or 'all'", parse="list", flag="measure"
    )
    layers: tuple[int, ...] | None = option(
        None, "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)", parse="layers"
    )
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes (a pair is scored when both are listed), or 'all'", parse="list"
    )
    figure_layer: int | None = option(None, "heatmap layer (default: the best mean R@1 of seqsim)")
    ks: tuple[int, ...] = option(DEFAULT_KS, "comma-separated k of recall at k", parse="ints")
    ties: str = option("optimistic", "rank of a correct partner tied with incorrect ones", choices=TIE_RULES)
    subset: str | None = option(None, "challenge-set folder (jobs.challenge --out): score each pair's kept ids only",
                                reads=True)  # fmt: skip
    subset_draws: int = option(20, "with --subset: size-matched random subsets of the full set per pair", minimum=1)
    subset_seed: int = option(0, "with --subset: seed of the size-matched random subsets")
    baseline: str | None = option(
        None, "the same grid's similarity store without (or with another) --remove_language or --dimensions: writes "
        "the R@1 change per layer (baseline_delta.csv and a figure)", reads=True,
    )  # fmt: skip
    allow_partial: bool = option(False, "score a similarity store whose seqsim run has not finished (what is not "
                                 "computed is left out, and counted)")  # fmt: skip
    run: RunOptions = RunOptions()

    def __post_init__(self):
        validate(self)
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise RetrievalError(f"ks must be positive integers such as (1, 5, 10), got {self.ks!r}")
