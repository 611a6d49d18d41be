"""The compare job's measures, one entry each: what the flags, the plan, the progress bar and the figures need to know
of a measure. Light (no JAX): the config's ``--help`` reads it.

Adding a measure is an entry here, its grid in ``compare.layers.GRIDS``, its permutation null in
``compare.null.ROUTES`` (both keyed by name and checked against ``MEASURES`` at import), and, for a new ``stage``, its
cost in ``compare.plan`` (``tests/engine/test_compare_measures.py`` fails for a measure the plan does not price). The
grid, the null and the cost live beside the code they call, which loads JAX; this module stays light for the flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Measure:
    """name: the flag's value and the ``measure`` column. title: its figure panels'. stage: the plan's and the
    progress bar's stage; measures of one stage share its work (CKA's two kinds share the Grams, CCA's the SVDs),
    and the plan prices the stage once for all of them. fewest: the fewest examples it is computed on (NaN below).
    default, frame_default: in ``--measures`` / ``--frame_measures`` when those are not given; about: what a measure
    given on request only is, for ``--measures``' help. grams: it reads the n x n Gram matrices (the plan times their
    rate). timed_null: its permutation null is priced by a rate timed on this machine (per Gram cell or per k-NN list
    compare); the others' nulls are priced from their FLOPs."""

    name: str
    title: str
    stage: str
    fewest: int = 2
    default: bool = False
    frame_default: bool = False
    about: str = ""
    grams: bool = False
    timed_null: bool = False


REGISTRY = (
    Measure("cka", "linear CKA", "cka", default=True, frame_default=True, grams=True, timed_null=True),
    Measure(
        "cka_unbiased",
        "linear CKA, unbiased",
        "cka",
        fewest=4,
        default=True,
        frame_default=True,
        grams=True,
        timed_null=True,
    ),  # fmt: skip
    Measure("svcca", "SVCCA (99% variance)", "cca", default=True),
    Measure("pwcca", "PWCCA (weights: row model)", "cca", default=True),
    Measure("mknn", "mutual k-NN", "mknn", default=True, frame_default=True, timed_null=True),
    # on request only (--measures ...,cknna,cycle_knn): a default run's outputs stay as they were before them
    Measure("cknna", "CKNNA", "cknna", fewest=4, about="platonic-rep's CKNNA"),
    Measure(
        "cycle_knn",
        "cycle k-NN (out: column, back: row)",
        "cycle_knn",
        about="its directed cycle k-NN, out through model b's neighbours and back through model a's",
        timed_null=True,
    ),
)
BY_NAME = {m.name: m for m in REGISTRY}
MEASURES = tuple(BY_NAME)
DEFAULT_MEASURES = tuple(m.name for m in REGISTRY if m.default)
DEFAULT_FRAME_MEASURES = tuple(m.name for m in REGISTRY if m.frame_default)
TITLES = {m.name: m.title for m in REGISTRY}
ON_REQUEST = "; ".join(f"{m.name}, {m.about}" for m in REGISTRY if not m.default)  # --measures' help


def stage_of(name: str) -> str:
    return BY_NAME[name].stage


def in_stage(names: Iterable[str], stage: str) -> int:
    """How many of ``names`` share ``stage`` (the plan prices a shared stage once for all of them)."""
    return sum(BY_NAME[m].stage == stage for m in names)


def needs_grams(names: Iterable[str]) -> bool:
    return any(BY_NAME[m].grams for m in names)


def null_is_timed(names: Iterable[str]) -> bool:
    return any(BY_NAME[m].timed_null for m in names)
