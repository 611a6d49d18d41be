"""Mantel and partial Mantel tests between a fixed matrix and many others, with one permutation null for all.

A Mantel test correlates the upper triangles of two n x n distance matrices (Pearson, or Spearman: Pearson on
ranks) and judges the correlation against permutations of one matrix's languages (rows and columns together): the
entries of a distance matrix are not independent, so the permutation, not a t-test, gives the p-value.

``mantel(x, ys)`` permutes ``x`` (a URIEL distance, fixed for the run) and correlates each permutation with every
matrix of ``ys`` (the model's distances, one per layer and measure) in one product: the null costs one gather per
permutation, not one per layer. The permutations and the p-value are scikit-bio's (``skbio.stats.distance.mantel``,
``x`` its first argument): ``numpy.random.default_rng(seed).permutation(n)`` drawn in turn, the statistic of the
unpermuted matrix compared with the others by the same arithmetic, ``p = (1 + #{|r_perm| >= |r|}) / (P + 1)`` two-
sided. With the same seed both give the same r and p (tests/jobs/test_typology.py).

``partial_mantel(x, ys, z)``: the correlation of ``x`` and ``y`` with ``z`` (geography) held fixed, as vegan's
``mantel.partial`` (Smouse, Long and Sokal 1986): ``r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``,
with ``x`` permuted (``r_xy`` and ``r_xz`` change, ``r_yz`` does not). scikit-bio has no partial Mantel; the test
checks it against a NumPy loop that regresses z out of both and correlates the residuals.

With n languages there are only n! orderings: at n = 4, 24, so no p-value can fall below 1/24 however many
permutations are drawn (``min_p_value`` says how low one can go). Where n! is at most the permutations asked plus one,
every ordering is taken once (``permutations_of``): the exact test, whose p-value counts the observed ordering among
n!. Drawing instead (scikit-bio does) repeats orderings and gave p-values below 1/n!, which no ordering supports (a
probe's 0.036 at 4 languages).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import scipy.stats

METHODS = ("pearson", "spearman")
TIE = 1e-12  # |r| this close to the observed one is a tie (rounding of terms summed in another order)
BLOCK = 512  # permutations gathered at a time: BLOCK x n(n-1)/2 float64 (102 languages: 21 MB)


class MantelError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class MantelResult:
    r: np.ndarray  # f64[k]: the statistic of each of ys (NaN where a matrix is constant)
    p_value: np.ndarray  # f64[k]: two-sided permutation p-value (NaN where r is, or with no permutations)
    n: int  # languages
    permutations: int


def condensed(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle (i < j) row by row, as scipy's ``squareform`` and scikit-bio's ``condensed_form``."""
    matrix = np.asarray(matrix, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise MantelError(f"a distance matrix must be square, got shape {list(matrix.shape)}")
    return matrix[np.triu_indices(len(matrix), k=1)]


def min_p_value(n: int, permutations: int) -> float:
    """The smallest p-value the test can give: 1 / (P + 1), and never below 1 / n! (the distinct orderings)."""
    return max(1.0 / (permutations + 1), 1.0 / math.factorial(n)) if n < 20 else 1.0 / (permutations + 1)


def _prepared(flat: np.ndarray, method: str) -> np.ndarray:
    """Centred and normalised (ranked first for Spearman); rows of NaN where a vector is constant."""
    flat = np.atleast_2d(flat)
    if method == "spearman":
        flat = np.stack([scipy.stats.rankdata(v) for v in flat])
    centred = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    constant = (flat == flat[:, :1]).all(axis=1, keepdims=True)
    return np.where(constant, np.nan, centred / np.where(constant, 1.0, norm))


def permutations_of(n: int, count: int, seed: int) -> np.ndarray:
    """i64[count + 1, n]: the identity, then scikit-bio's permutations for ``seed``; where n! <= count + 1, every
    ordering once instead (i64[n!, n], the identity first): the exact test (module docstring)."""
    if count and n < 20 and math.factorial(n) <= count + 1:
        return np.array(list(itertools.permutations(range(n))), np.intp)
    rng = np.random.default_rng(seed)
    order = np.empty((count + 1, n), np.intp)
    order[0] = np.arange(n)
    for row in range(1, count + 1):
        order[row] = rng.permutation(n)
    return order


def _permuted_stats(x: np.ndarray, prepared_ys: np.ndarray, order: np.ndarray, method: str) -> np.ndarray:
    """f64[P + 1, k]: the correlation of x with its rows and columns reordered by each row of ``order``, against each
    prepared y. Ranks and centring do not change under a permutation, so x is prepared once and only gathered."""
    n = len(x)
    iu = np.triu_indices(n, k=1)
    prepared_x = _prepared(condensed(x), method)[0]
    square = np.zeros((n, n))
    square[iu] = prepared_x
    square = square + square.T
    out = np.empty((len(order), len(prepared_ys)))
    for start in range(0, len(order), BLOCK):
        rows = order[start : start + BLOCK]
        gathered = square[rows[:, :, None], rows[:, None, :]][:, iu[0], iu[1]]  # [b, m]
        out[start : start + BLOCK] = gathered @ prepared_ys.T
    return np.clip(out, -1.0, 1.0)


def _p_values(stats: np.ndarray, permutations: int) -> np.ndarray:
    """Two-sided: a permutation counts when its |r| is at least the observed |r|, ties within ``TIE`` included. On
    ranks (Spearman) and few languages, permutations tie the observed r exactly in arithmetic but not always in
    floating point (their terms are summed in another order); scikit-bio compares bare floats there, so on such ties
    its p-value may be lower than ours by the ties it missed. Without ties both are equal."""
    if permutations == 0:
        return np.full(stats.shape[1], np.nan)
    comp = stats[0]
    better = (np.abs(stats[1:]) >= np.abs(comp) - TIE).sum(axis=0)
    return np.where(np.isnan(comp), np.nan, (better + 1) / (permutations + 1))


def _check(x: np.ndarray, ys: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method not in METHODS:
        raise MantelError(f"method must be one of {METHODS}, got {method!r}")
    x = np.asarray(x, np.float64)
    ys = np.asarray(ys, np.float64)
    if ys.ndim == 2:
        ys = ys[None]
    if x.ndim != 2 or ys.shape[1:] != x.shape or x.shape[0] != x.shape[1]:
        raise MantelError(f"matrices must be n x n alike: x {list(x.shape)}, ys {list(ys.shape)}")
    if len(x) < 3:
        raise MantelError(f"a Mantel test needs 3 or more languages, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(ys).all()):
        raise MantelError("distance matrices must be finite: leave out the languages with no distance")
    return x, ys


def mantel(x, ys, *, permutations: int = 999, seed: int = 0, method: str = "pearson") -> MantelResult:
    """Mantel test of ``x`` (f64[n, n]) against each of ``ys`` (f64[k, n, n] or one [n, n]), ``x`` permuted."""
    x, ys = _check(x, ys, method)
    prepared_ys = _prepared(np.stack([condensed(y) for y in ys]), method)
    stats = _permuted_stats(x, prepared_ys, permutations_of(len(x), permutations, seed), method)
    taken = len(stats) - 1  # fewer than asked where every ordering is taken
    return MantelResult(stats[0].copy(), _p_values(stats, taken), len(x), taken)


def partial_mantel(x, ys, z, *, permutations: int = 999, seed: int = 0, method: str = "pearson") -> MantelResult:
    """Partial Mantel test of ``x`` against each of ``ys`` with ``z`` held fixed (module docstring); ``x`` permuted,
    with the same permutations as ``mantel`` for the same seed. NaN where ``z`` explains x or y whole, and for
    three languages: the residuals of their three pairs on ``z`` leave one degree of freedom, so r is +-1 whatever
    the data (a probe's typology of 3 languages reported +-1, and 1.0000000000000009)."""
    x, ys = _check(x, ys, method)
    z = _check(z, ys, method)[0]
    if len(x) < 4:
        nan = np.full(len(ys), np.nan)
        return MantelResult(nan, nan.copy(), len(x), permutations)
    order = permutations_of(len(x), permutations, seed)
    prepared_z = _prepared(condensed(z), method)
    prepared_ys = _prepared(np.stack([condensed(y) for y in ys]), method)
    r_xy = _permuted_stats(x, prepared_ys, order, method)  # [P + 1, k]
    r_xz = _permuted_stats(x, prepared_z, order, method)  # [P + 1, 1]
    r_yz = (prepared_ys @ prepared_z.T)[:, 0]  # [k]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = (r_xy - r_xz * r_yz[None]) / np.sqrt((1 - r_xz**2) * (1 - r_yz[None] ** 2))
    stats = np.clip(np.where(np.isfinite(stats), stats, np.nan), -1.0, 1.0)  # rounding past +-1
    taken = len(stats) - 1
    return MantelResult(stats[0].copy(), _p_values(stats, taken), len(x), taken)
