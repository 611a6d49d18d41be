"""CKNNA, centred kernel nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis";
platonic-rep ``metrics.py``, ``AlignmentMetrics.cknna`` with its defaults: unbiased, not distance-agnostic).

On unit rows, as ``kernels.knn`` (platonic-rep normalises features before it measures): ``K = x x^T`` and
``L = y y^T`` are cosines. Each row's k nearest neighbours in K (itself excluded) make a 0/1 mask ``M_K``, likewise
``M_L``, and

    sim(K, L) = HSIC_u(M o K, M o L),  M = M_K o M_L   (o elementwise: the pairs both views rank among the k nearest)
    CKNNA     = sim(K, L) / (sqrt(sim(K, K) sim(L, L)) + 1e-6)

with HSIC_u the unbiased estimator of Song et al. 2012 as platonic-rep writes it (``hsic_unbiased``):

    HSIC_u(A, B) = [ sum(A o B^T) + sum(A) sum(B) / ((m - 1)(m - 2)) - 2 sum(A B) / (m - 2) ] / (m (m - 3))

The masks are not symmetric, so ``sum(A o B^T)`` keeps its transpose; the 1e-6 is platonic-rep's.

The masked matrices hold at most k entries a row, so nothing here is n x n: the terms are sums over the k-NN lists
(``kernels.knn.knn``, blocked products), ``sum(A B) = colsum(A) . rowsum(B)``, and ``sum(A o B^T)`` counts the pairs
(i, j) kept in both directions. Memory ``O(n k d)`` per block of rows, so the pooled set of a whole FLEURS grid
(tens of thousands of utterances) runs as a language's does. The NumPy twin ``reference_cknna`` builds the dense
matrices and applies the formula as written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError
from kernels import knn
from kernels.null import renamed_lists

EPSILON = 1e-6  # platonic-rep's, in the denominator
ROWS = 1024  # rows per block of the gathered neighbour products: ROWS x k x d floats at a time
_HIGHEST = jax.lax.Precision.HIGHEST


def _unit(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-30))


@jax.jit
def _neighbour_cosines(unit, lists):
    """f32[n, k]: the cosine of each row with each row of its list (``lists``: i32[n, k]), in blocks of ROWS rows."""
    n, k = lists.shape
    blocks = -(-n // ROWS)
    pad = blocks * ROWS - n
    rows = jnp.pad(unit, ((0, pad), (0, 0))).reshape(blocks, ROWS, -1)
    idx = jnp.pad(lists, ((0, pad), (0, 0))).reshape(blocks, ROWS, k)

    def one(args):
        u, i = args
        return jnp.einsum("re,rte->rt", u, unit[i], precision=_HIGHEST)

    return jax.lax.map(one, (rows, idx)).reshape(blocks * ROWS, k)[:n]


def _member(values, lists):
    """bool[n, k]: whether values[i, t] is in lists[i] (both i32[n, k])."""
    return jnp.any(values[:, :, None] == lists[:, None, :], axis=2)


@jax.jit
def _sim(p, q, kv, lv):
    """HSIC_u(M o K, M o L) with M = M_P o M_Q, from the lists p, q: i32[n, k] and the cosines kv, lv: f32[n, k] of
    each row with the rows of its p list in each view."""
    n = p.shape[0]
    rows = jnp.arange(n, dtype=p.dtype)[:, None]
    kept = _member(p, q)  # (i, p[i, t]) is in M
    # (p[i, t], i) is in M too: i is in both lists of row p[i, t]
    back = kept & jnp.any(p[p] == rows[:, :, None], axis=2) & jnp.any(q[p] == rows[:, :, None], axis=2)
    a, b = jnp.where(kept, kv, 0.0), jnp.where(kept, lv, 0.0)
    trace = jnp.sum(jnp.where(back, kv * lv, 0.0))  # sum(A o B^T): L is symmetric, so B[j, i] = L[i, j] where kept
    col_a = jnp.zeros(n, jnp.float32).at[p.reshape(-1)].add(a.reshape(-1))
    cross = jnp.sum(col_a * jnp.sum(b, axis=1))  # sum(A B) = colsum(A) . rowsum(B)
    m = jnp.float32(n)
    return (trace + jnp.sum(a) * jnp.sum(b) / ((m - 1) * (m - 2)) - 2.0 * cross / (m - 2)) / (m * (m - 3))


@jax.jit
def _self_sim(lists, cosines):
    return _sim(lists, lists, cosines, cosines)


class View:
    """One view's unit rows, k-NN lists and self-similarity ``sim(K, K)``: made once per layer, scored against many."""

    def __init__(self, x: jax.Array, k: int):
        _check(x, k)
        self.unit = _unit(jnp.asarray(x))
        self.lists = knn.knn(x, k)
        self.cosines = _neighbour_cosines(self.unit, self.lists)  # K's values at its own lists, for every pair
        self.self_sim = _self_sim(self.lists, self.cosines)


def _check(x, k: int) -> None:
    if x.ndim != 2 or x.shape[0] < 4:
        raise ShapeError(f"CKNNA takes f32[n, d] with n >= 4 (its unbiased HSIC), got shape {x.shape}")
    if not 2 <= k < x.shape[0]:
        raise ShapeError(f"CKNNA needs k in 2..n-1 = 2..{x.shape[0] - 1} (platonic-rep refuses k < 2), got {k}")


def cknna_views(a: View, b: View) -> jax.Array:
    """f32[]: CKNNA of two prepared views of the same examples."""
    if a.lists.shape != b.lists.shape:
        raise ShapeError(f"views of {a.lists.shape} and {b.lists.shape} lists: the same examples and k are needed")
    cross = _sim(a.lists, b.lists, a.cosines, _neighbour_cosines(b.unit, a.lists))
    return cross / (jnp.sqrt(a.self_sim * b.self_sim) + EPSILON)


@jax.jit
def _null(lists_a, cosines_a, unit_b, lists_b, perms):
    def one(p):
        return _sim(lists_a, renamed_lists(lists_b, p), cosines_a, _neighbour_cosines(unit_b[p], lists_a))

    return jax.lax.map(one, perms, batch_size=8)


def cknna_null(a: View, b: View, perms) -> jax.Array:
    """f32[P]: ``cknna_views(a, b[p])`` for each permutation ``p`` of ``perms: i32[P, n]`` (``kernels.null``): b's
    rows, lists and cosines moved and renamed, nothing searched again."""
    if a.lists.shape != b.lists.shape:
        raise ShapeError(f"views of {a.lists.shape} and {b.lists.shape} lists: the same examples and k are needed")
    sims = _null(a.lists, a.cosines, b.unit, b.lists, jnp.asarray(perms, jnp.int32))
    return sims / (jnp.sqrt(a.self_sim * b.self_sim) + EPSILON)


def cknna(x: jax.Array, y: jax.Array, k: int) -> jax.Array:
    """f32[]: CKNNA of x: f32[n, d1] and y: f32[n, d2] (rows are the same examples) with k neighbours."""
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"x and y must hold the same examples (rows): got {x.shape[0]} and {y.shape[0]}")
    return cknna_views(View(x, k), View(y, k))


# ----------------------------------------------------------------------------------------------------------------
# Reference: the dense matrices and platonic-rep's formula as written, float64.


def reference_cknna(x, y, k: int) -> float:
    def unit(v):
        v = np.asarray(v, np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-15)

    def mask(g):
        scores = g.copy()
        np.fill_diagonal(scores, -np.inf)
        m = np.zeros_like(g)
        for i, row in enumerate(scores):
            m[i, np.argsort(-row, kind="stable")[:k]] = 1.0
        return m

    def hsic_unbiased(a, b):
        a, b = a.copy(), b.copy()
        np.fill_diagonal(a, 0.0)
        np.fill_diagonal(b, 0.0)
        n = len(a)
        value = np.sum(a * b.T) + np.sum(a) * np.sum(b) / ((n - 1) * (n - 2)) - 2 * np.sum(a @ b) / (n - 2)
        return value / (n * (n - 3))

    gk, gl = unit(x) @ unit(x).T, unit(y) @ unit(y).T
    mk, ml = mask(gk), mask(gl)

    def sim(g1, m1, g2, m2):
        both = m1 * m2
        return hsic_unbiased(both * g1, both * g2)

    return float(sim(gk, mk, gl, ml) / (np.sqrt(sim(gk, mk, gk, mk) * sim(gl, ml, gl, ml)) + EPSILON))
