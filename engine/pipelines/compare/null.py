"""The compare job's permutation null: each layer-similarity score against the same measure of the same states with
the examples' correspondence shuffled (``kernels.null``).

For a set of n examples (one language or ``all``, at one level) the job draws ``--null_permutations`` permutations
of the n rows, seeded by ``--seed``, the level and the language, so every model pair and measure of the set is scored
against the same permutations and a rerun draws them again. Under permutation ``p`` model b's example i is
``p[i]``: the score the measure gives two sets of states that do not correspond, with their own spectra, widths and
neighbourhoods. Per row of ``layer_similarity.parquet``:

- ``null_mean``, ``null_q95``: the mean and 95th percentile of the P null scores;
- ``p_value``: ``(1 + #{null >= value}) / (P + 1)``;
- ``value_less_null``: ``value - null_mean``, the score above what unrelated examples get.

Each is null where the value is (not measured) and when ``--null_permutations 0``.

What the null does not remove: at the frame level, frames of one utterance are alike, so a shuffle that keeps no
utterance together is a null for "these frames correspond", not for "these utterances correspond"; the frame null is
the stricter question's easier bar. Read it with that in mind.

Every null is exact (the measure's own value for (a, b[p])). The fast routes reuse what the raw measure made
(``shared``): CKA's Grams, the k-NN lists (mutual and cycle k-NN), CKNNA's views; CCA's SVDs are made once per layer
pair. Anything else, and CKA beyond ``layers.GRAM_MAX`` examples, recomputes the measure per permutation
(``_recomputed``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from engine.pipelines.compare import layers
from engine.pipelines.compare.layers import GRAM_MAX, MEASURES, MeasureOptions, View
from kernels import cca, cknna, null

_STREAM = 0x6E756C6C  # "null": the permutations' seed stream, apart from the frame sample's


def permutations(seed: int, level: str, language: str, n: int, count: int) -> np.ndarray:
    """i32[count, n]: the permutations of a set (module docstring), the same for every model pair and measure."""
    return null.permutations(n, count, [seed, _STREAM, *level.encode(), 0, *language.encode()])


def _permuted(view: View, perm: np.ndarray) -> View:
    return View(view.model, view.layers, tuple(np.asarray(s)[perm] for s in view.states))


def _recomputed(measure: str, a: View, b: View, options: MeasureOptions, perms: np.ndarray) -> np.ndarray:
    return np.stack([layers.measure_grid(measure, a, _permuted(b, p), options) for p in perms])


def _cka(measure, a, b, options, shared, perms, value, step=None):
    if a.n > GRAM_MAX:
        return _recomputed(measure, a, b, options, perms)
    if "cka_null" not in shared:
        layers.measure_grid("cka", a, b, options, shared)  # the Grams, when only one kind was asked
        shared["cka_null"] = null.cka_null(*shared["grams"], perms)
    return shared["cka_null"][measure == "cka_unbiased"]


def _mknn(measure, a, b, options, shared, perms, value, step=None):
    lists_a, lists_b = shared["lists"]
    return null.knn_null(np.stack(lists_a), np.stack(lists_b), perms)


def _cycle_knn(measure, a, b, options, shared, perms, value, step=None):
    lists_a, lists_b = shared["lists"]
    return null.cycle_knn_null(np.stack(lists_a), np.stack(lists_b), perms)  # b's lists permuted: out through b[p]


def _cknna(measure, a, b, options, shared, perms, value, step=None):
    views_a, views_b = shared["cknna_views"]
    grid = np.array([[np.asarray(cknna.cknna_null(va, vb, perms)) for vb in views_b] for va in views_a])
    return grid.transpose(2, 0, 1)  # [La, Lb, P] -> [P, La, Lb]


def _cca(measure, a, b, options, shared, perms, value, step=None):
    """Per measured layer pair, the CCA kernel's null (one SVD per view); NaN where the raw value is (its kept
    directions do not fit the examples: a permutation does not change them). ``step(share)``: called after each
    layer pair with its share of the grid, for the run's progress."""
    out = np.full((len(perms), len(a.layers), len(b.layers)), np.nan)
    measured = list(zip(*np.nonzero(np.isfinite(value)), strict=True))
    with cca.one_lapack_thread():  # per permutation small decompositions: a second thread only stalls under load
        _cca_pairs(measure, a, b, options, perms, measured, out, step)
    return out


def _cca_pairs(measure, a, b, options, perms, measured, out, step) -> None:
    p = jnp.asarray(perms, jnp.int32)
    for i, j in measured:
        x, y = a.states[i], b.states[j]
        if measure == "svcca":
            out[:, i, j] = cca.svcca_null(x, y, p, keep=options.svcca_keep)
        else:
            out[:, i, j] = cca.pwcca_null(x, y, p, epsilon=options.cca_epsilon)
        if step is not None:
            step(1 / len(measured))


ROUTES = {"cka": _cka, "cka_unbiased": _cka, "svcca": _cca, "pwcca": _cca, "mknn": _mknn, "cknna": _cknna,
          "cycle_knn": _cycle_knn}  # fmt: skip
assert tuple(ROUTES) == MEASURES


def null_grid(measure: str, a: View, b: View, options: MeasureOptions, shared: dict, perms: np.ndarray,
              value: np.ndarray, step=None) -> np.ndarray:  # fmt: skip
    """f64[P, La, Lb]: ``measure`` of every layer pair of (a, b[p]) for each permutation; ``value``: the raw grid
    (``layers.measure_grid`` with the same ``shared``, which must have run first). ``step(share)``: progress within
    the grid, where a route has steps (CCA's layer pairs)."""
    if not len(perms) or not np.isfinite(value).any():
        return np.full((len(perms), len(a.layers), len(b.layers)), np.nan)
    return np.asarray(ROUTES[measure](measure, a, b, options, shared, perms, value, step), np.float64)


def reference_null(measure_fn, x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """f64[P]: ``measure_fn(x, y[p])`` per permutation, a straightforward loop (the tests' twin of every route)."""
    return np.array([measure_fn(x, np.asarray(y)[p]) for p in perms], np.float64)
