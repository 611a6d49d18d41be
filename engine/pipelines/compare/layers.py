"""Layer x layer similarity of two models' states of the same examples, for every measure of ``MEASURES``.

One call scores every layer of model a against every layer of model b on one set of examples (one language, or
all pooled, at one level) and returns rows of ``ROW_COLUMNS``. Per measure:

- ``cka``, ``cka_unbiased``: linear CKA (``kernels.cka``). Up to ``GRAM_MAX`` examples, the whole layer x layer
  matrix comes from stacked centred Grams (``cka_matrix``); beyond, one feature-route ``linear_cka`` per pair.
- ``svcca``: ``kernels.cca.svcca`` keeping ``svcca_keep`` of each view's variance.
- ``pwcca``: ``kernels.cca.pwcca``; projection weights from model a's layer (the row of the heatmap).
- ``mknn``: ``kernels.knn``: each layer's neighbour lists once, then their overlap per pair, k = min(knn_k, n - 1).
- ``cknna``: ``kernels.cknna`` (platonic-rep's CKNNA): each layer's unit rows, lists and self term once, then one
  sum over the lists per pair, k = min(knn_k, n - 1).
- ``cycle_knn``: ``kernels.knn.cycle`` (platonic-rep's ``cycle_knn``) on mutual k-NN's lists (made once for both):
  cell (i, j) is ``cycle_knn(a's layer i, b's layer j)``, out through b's neighbours, back through a's. Directed,
  so a store compared with itself gets the whole grid, which is not symmetric, and its diagonal is not 1.

CCA measures need more examples than directions: n centred examples span n - 1 directions, and when the two
views' kept directions (their ranks; for SVCCA the directions holding ``svcca_keep`` of the variance) add up to
more, their subspaces meet and the leading canonical correlations are 1 whatever the layers (with n <= d, all of
them). Such a layer pair is not measured: NaN, written as null, like every value that cannot be computed
(unbiased CKA with n < 4, fewer than 2 examples). Mean-pooled utterances of a small set hit this; frames do not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

from engine.pipelines.compare.measures import BY_NAME, MEASURES
from kernels import cca, cka, cknna, knn
from kernels import null as knull

ALL = "all"  # the `language` of rows pooled over every language
GRAM_MAX = 4096  # examples up to which CKA uses n x n Grams: (La + Lb) n^2 floats, 1.7 GiB for 2 x 14 layers at 4096
NULL_COLUMNS = ("null_mean", "null_q95", "p_value", "value_less_null")  # the permutation null (compare.null)
ROW_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "language", "level", "measure", "value", "n", *NULL_COLUMNS)


@dataclasses.dataclass(frozen=True)
class MeasureOptions:
    """Settings of the measures (see the module docstring)."""

    knn_k: int = 10
    svcca_keep: float = 0.99
    cca_epsilon: float = 0.0


@dataclasses.dataclass(frozen=True)
class View:
    """One model's states of one set of examples: ``states[i]: f32[n, embed]`` at layer ``layers[i]``."""

    model: str
    layers: tuple[int, ...]
    states: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        return len(self.states[0])


def _cka_grid(a: View, b: View, unbiased: bool, shared: dict) -> np.ndarray:
    """``shared``: what the measures of one set of examples share (``similarity_rows``): the centred Grams, made
    once for both CKA kinds (each kind making its own was half the compare job's time on the demo)."""
    if a.n <= GRAM_MAX:
        if "grams" not in shared:
            grams_a = jax.numpy.stack([cka.centred_gram(x) for x in a.states])
            shared["grams"] = grams_a, grams_a if b is a else jax.numpy.stack([cka.centred_gram(y) for y in b.states])
        grams_a, grams_b = shared["grams"]
        return np.asarray(cka.cka_matrix(grams_a, grams_b, unbiased=unbiased), np.float64)
    return np.array([[float(cka.linear_cka(x, y, unbiased=unbiased)) for y in b.states] for x in a.states])


def _pairwise(a: View, b: View, fn) -> np.ndarray:
    return np.array([[float(fn(x, y)) for y in b.states] for x in a.states])


def kept_directions(x: np.ndarray, keep: float = 1.0) -> int:
    """Directions of x: f[n, d] that CCA uses: its rank (the kernel's tolerance), or with ``keep`` < 1 the fewest
    singular directions holding ``keep`` of the variance (SVCCA's reduction)."""
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    s = s[s > max(x.shape) * np.finfo(np.float32).eps * s[0]] if s[0] > 0 else s[:0]
    energy = np.cumsum(s**2)
    return int(np.searchsorted(energy, keep * energy[-1] * (1 - 1e-12)) + 1) if len(s) else 0


def _cca_grid(a: View, b: View, fn, keep: float) -> np.ndarray:
    """``fn`` of every layer pair whose kept directions fit in the n - 1 the centred examples span; NaN for the
    others, whose leading canonical correlations are 1 by construction (module docstring)."""
    with cca.one_lapack_thread():  # many small decompositions: a second thread only stalls under load
        dims_a = [kept_directions(x, keep) for x in a.states]
        dims_b = dims_a if b is a else [kept_directions(y, keep) for y in b.states]
        return np.array(
            [
                [float(fn(x, y)) if da + db <= a.n - 1 else np.nan for y, db in zip(b.states, dims_b, strict=True)]
                for x, da in zip(a.states, dims_a, strict=True)
            ]
        )


def _lists(a: View, b: View, k: int, shared: dict) -> tuple[list, list]:
    """Each layer's k-NN lists, made once per set for mutual k-NN, cycle k-NN and their permutation nulls."""
    if "lists" not in shared:
        lists_a = [knn.knn(x, k) for x in a.states]
        shared["lists"] = lists_a, lists_a if b is a else [knn.knn(y, k) for y in b.states]
    return shared["lists"]


def _mknn_grid(a: View, b: View, k: int, shared: dict) -> np.ndarray:
    lists_a, lists_b = _lists(a, b, k, shared)
    return np.array([[float(knn.overlap(p, q)) for q in lists_b] for p in lists_a])


def _cycle_grid(a: View, b: View, k: int, shared: dict) -> np.ndarray:
    """Every cell, the diagonal's mirror too: ``cycle(p, q) != cycle(q, p)``, even when b is a."""
    lists_a, lists_b = _lists(a, b, k, shared)
    return np.array([[float(knn.cycle(p, q)) for q in lists_b] for p in lists_a])


def _cknna_grid(a: View, b: View, k: int, shared: dict) -> np.ndarray:
    views_a = [cknna.View(x, k) for x in a.states]
    views_b = views_a if b is a else [cknna.View(y, k) for y in b.states]
    shared["cknna_views"] = views_a, views_b  # for the permutation null
    return np.array([[float(cknna.cknna_views(p, q)) for q in views_b] for p in views_a])


# Each measure's grid (compare.measures holds the rest of what is known of it). Each takes (a, b, options, shared):
# shared holds what the measures of one set and their nulls reuse (the Grams, the lists, the CKNNA views).
GRIDS = {
    "cka": lambda a, b, o, s: _cka_grid(a, b, False, s),
    "cka_unbiased": lambda a, b, o, s: _cka_grid(a, b, True, s),
    "svcca": lambda a, b, o, s: _cca_grid(a, b, lambda x, y: cca.svcca(x, y, keep=o.svcca_keep), o.svcca_keep),
    "pwcca": lambda a, b, o, s: _cca_grid(a, b, lambda x, y: cca.pwcca(x, y, epsilon=o.cca_epsilon), 1.0),
    "mknn": lambda a, b, o, s: _mknn_grid(a, b, min(o.knn_k, a.n - 1), s),
    "cknna": lambda a, b, o, s: _cknna_grid(a, b, min(o.knn_k, a.n - 1), s),
    "cycle_knn": lambda a, b, o, s: _cycle_grid(a, b, min(o.knn_k, a.n - 1), s),
}
assert tuple(GRIDS) == MEASURES


def measure_grid(measure: str, a: View, b: View, options: MeasureOptions, shared: dict | None = None) -> np.ndarray:
    """f64[La, Lb]: ``measure`` of every layer of a against every layer of b (NaN where it cannot be computed);
    ``shared``: one dict for every measure of the same (a, b), which then share their intermediate products."""
    grid = GRIDS[measure]
    if a.n < BY_NAME[measure].fewest:
        return np.full((len(a.layers), len(b.layers)), np.nan)
    return grid(a, b, options, {} if shared is None else shared)


def similarity_rows(
    a: View,
    b: View,
    language: str,
    level: str,
    measures: Sequence[str],
    options: MeasureOptions,
    null: Callable[[str, np.ndarray, dict], np.ndarray] | None = None,
    done: Callable[[str], None] | None = None,
) -> list[tuple]:
    """ROW_COLUMNS rows of every (layer of a, layer of b, measure); ``b is a`` compares a model with itself.
    ``null(measure, grid, shared)``: the null scores f[P, La, Lb] of a measure's grid (``compare.null``), summarised
    into NULL_COLUMNS; without it those are null. ``done(step)``: called with the measure's name when its grid is
    made, and with ``null <measure>`` when its null is (the run's progress)."""
    if a.n != b.n:
        raise ValueError(f"views of {a.model} and {b.model} hold {a.n} and {b.n} examples: pair them first")
    rows, shared = [], {}
    for measure in measures:
        grid = measure_grid(measure, a, b, options, shared)
        if done is not None:
            done(measure)
        stats = np.full(grid.shape + (len(NULL_COLUMNS),), np.nan)
        if null is not None:
            mean, q95, p = knull.summarise(grid, null(measure, grid, shared))
            stats = np.stack([mean, q95, p, grid - mean], axis=-1)
            if done is not None:
                done(f"null {measure}")
        for i, layer_a in enumerate(a.layers):
            for j, layer_b in enumerate(b.layers):
                value = float(grid[i, j])
                rows.append(
                    (a.model, layer_a, b.model, layer_b, language, level, measure, None if math.isnan(value) else value)
                    + (a.n,)
                    + tuple(None if math.isnan(s) else float(s) for s in stats[i, j])
                )
    return rows


def reference_mean_pooled_cka(states: np.ndarray, lengths: np.ndarray, other: np.ndarray, other_lengths) -> float:
    """Biased linear CKA of two layers' mean-pooled states in float64, from padded f[n, frames, embed] arrays and
    their lengths: the acceptance check's recomputation, independent of the job's pooling and kernels."""

    def pool(x, n):
        return np.stack([np.asarray(x[u, : n[u]], np.float64).mean(0) for u in range(len(n))])

    return cka.reference_linear_cka(pool(states, lengths), pool(other, other_lengths))
