"""Cosine k nearest neighbours by blocked matrix products, and the mutual and cycle k-NN alignments of two views.

Shapes: ``x: f32[n, d]``. ``knn(x, k)`` returns ``i32[n, k]``: for each row, the k other rows with the highest
cosine, best first; a row is never its own neighbour. Rows of ``block`` queries are scored against all n rows at a
time, so the largest matrix built is ``block x n`` (never n x n unless block >= n). Ties go to the lower index
(``jax.lax.top_k``'s order).

``mutual_knn(x, y, k)`` (Huh et al. 2024, platonic-rep ``metrics.py`` ``mutual_knn``): the mean over rows of
``|N_x(i) & N_y(i)| / k``, the share of a row's k neighbours that both views agree on; 1 for views with the same
neighbour structure, about ``k / (n - 1)`` for unrelated ones. platonic-rep ranks by inner products of the features
it is given (normalised upstream); here rows are normalised inside, so this is its measure on unit rows.

``cycle_knn(x, y, k)`` (platonic-rep ``metrics.py`` ``cycle_knn(feats_A=x, feats_B=y, topk=k)``: ``knn_A[knn_B]``,
then whether row i appears): the share of rows i for which some j among i's k neighbours in **y** has i among its
own k neighbours in **x**; out through y's neighbours, back through x's. It is directed: ``cycle_knn(y, x)`` goes out
through x and back through y, another number in general (not with k = 1: the closed cycles of the two directions
pair up one to one). A view with itself does not score 1: ``cycle_knn(x, x)`` is the share of rows with at least one
mutual neighbour. For unrelated views about ``1 - (1 - k / (n - 1))^k``, near ``k^2 / n`` when that is small (each of
k neighbours lists i with chance about ``k / (n - 1)``). Like ``mutual_knn``, on unit rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError

_HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_BLOCK = 1024  # query rows per product: a 1024 x n float32 block (4 MiB per 1000 rows searched)


def _unit(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-30))


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _knn(x, k, block):
    n = x.shape[0]
    unit = _unit(x)
    blocks = -(-n // block)
    queries = jnp.pad(unit, ((0, blocks * block - n), (0, 0))).reshape(blocks, block, -1)

    def one(args):
        start, q = args
        scores = jnp.matmul(q, unit.T, precision=_HIGHEST)  # f32[block, n]
        own = (start + jnp.arange(block))[:, None] == jnp.arange(n)[None, :]
        return jax.lax.top_k(jnp.where(own, -jnp.inf, scores), k)[1]

    found = jax.lax.map(one, (jnp.arange(blocks) * block, queries))
    return found.reshape(blocks * block, k)[:n].astype(jnp.int32)


def _check(x, k: int, name: str = "x") -> None:
    if x.ndim != 2:
        raise ShapeError(f"{name} must be f32[n, d], got shape {x.shape}")
    if not 1 <= k < x.shape[0]:
        raise ShapeError(f"k must be in 1..n-1 = 1..{x.shape[0] - 1} for {name} of {x.shape[0]} rows, got {k}")


def knn(x: jax.Array, k: int, *, block: int = DEFAULT_BLOCK) -> jax.Array:
    """i32[n, k]: the k rows of x: f32[n, d] with the highest cosine to each row, best first, itself excluded."""
    _check(x, k)
    return _knn(x, int(k), int(min(block, x.shape[0])))


@jax.jit
def overlap(a: jax.Array, b: jax.Array) -> jax.Array:
    """f32[]: mean over rows of |a_i & b_i| / k for neighbour lists a, b: i32[n, k] (entries distinct per row)."""
    shared = jnp.sum(a[:, :, None] == b[:, None, :], axis=(1, 2))
    return jnp.mean(shared / a.shape[1])


@jax.jit
def cycle(a: jax.Array, b: jax.Array) -> jax.Array:
    """f32[]: cycle k-NN from neighbour lists a (the view gone back through), b (the view gone out through), each
    i32[n, k]: the share of rows i with i in ``a[j]`` for some j in ``b[i]``. ``cycle(a, b) != cycle(b, a)``."""
    rows = jnp.arange(a.shape[0], dtype=a.dtype)[:, None, None]
    return jnp.mean(jnp.any(a[b] == rows, axis=(1, 2)))  # a[b]: [n, k, k], a's lists of the rows of b's list of i


def _pair(x, y, k: int) -> None:
    _check(x, k, "x")
    _check(y, k, "y")
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"x and y must hold the same examples (rows): got {x.shape[0]} and {y.shape[0]}")


def mutual_knn(x: jax.Array, y: jax.Array, k: int, *, block: int = DEFAULT_BLOCK) -> jax.Array:
    """f32[]: mutual k-NN alignment of x: f32[n, d1] and y: f32[n, d2] (rows are the same examples)."""
    _pair(x, y, k)
    return overlap(knn(x, k, block=block), knn(y, k, block=block))


def cycle_knn(x: jax.Array, y: jax.Array, k: int, *, block: int = DEFAULT_BLOCK) -> jax.Array:
    """f32[]: cycle k-NN of x: f32[n, d1] and y: f32[n, d2] (rows are the same examples), platonic-rep's
    ``cycle_knn(x, y)``: out through y's k neighbours of each row, back through x's (module docstring)."""
    _pair(x, y, k)
    return cycle(knn(x, k, block=block), knn(y, k, block=block))


# ----------------------------------------------------------------------------------------------------------------
# References: full cosine matrix, a stable sort per row, float64.


def reference_knn(x, k: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-15)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)


def reference_mutual_knn(x, y, k: int) -> float:
    a, b = reference_knn(x, k), reference_knn(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(a))]))


def reference_cycle_knn(x, y, k: int) -> float:
    a, b = reference_knn(x, k), reference_knn(y, k)
    return float(np.mean([any(i in a[j] for j in b[i]) for i in range(len(a))]))
