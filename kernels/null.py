"""Permutation nulls of layer similarity: each score recomputed with the example correspondence shuffled.

Two views hold the same n examples, row i of each. A permutation ``p`` pairs row i of x with row ``p[i]`` of y, so
the score of (x, y[p]) is what the measure gives to two views whose examples do not correspond. Over ``P`` random
permutations that is the null distribution of the score for these two sets of states; the calibrated score is the
raw one against it (Groger et al. 2026, arXiv 2602.14486: CKA-type scores grow with depth and width for unrelated
representations, and a permutation null removes that).

Every null here is exact: the same numbers as the measure's own kernel applied to ``(x, y[p])`` (up to float32
rounding), without recomputing what a permutation cannot change:

- ``cka_null``: from the centred Grams. Permuting y's rows permutes both axes of its Gram, so per permutation the
  biased HSIC is ``sum(K * L[p][:, p])``; the unbiased one needs that, the diagonals and the row sums
  (``kernels.cka``'s formula), whose permuted forms are gathers. The norms do not change. Both kinds in one pass.
- ``knn_null``, ``cycle_knn_null``: a neighbour list of y[p] is y's list of row ``p[i]`` renamed by the inverse
  permutation.
- ``kernels.cca.svcca_null`` / ``pwcca_null`` and ``kernels.cknna.cknna_null``: the SVDs and lists of each view once.

Summaries (``summarise``), with ``P`` null scores per cell:

- ``null_mean``, ``null_q95`` (NumPy's linear-interpolation quantile);
- ``p_value = (1 + #{null >= value}) / (P + 1)``, the permutation p-value that counts the observed correspondence
  as one of the permutations (Phipson and Smyth 2010), so it is never 0: with P = 200 the smallest is 1/201.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError

_HIGHEST = jax.lax.Precision.HIGHEST
CHUNK = 4  # permutations sharing one pass over a's Grams
ROWS = 16  # Gram rows per block: a block of a's Grams and CHUNK permuted blocks of b's stay in cache


def permutations(n: int, count: int, seed) -> np.ndarray:
    """i32[count, n]: ``count`` random permutations of n rows from ``np.random.default_rng(seed)`` (reproducible)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(count)]).astype(np.int32) if count else np.zeros((0, n), int)


def summarise(value: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(null_mean, null_q95, p_value), each f64[...], of scores ``value: f[...]`` against ``null: f[P, ...]``.
    NaN where the value or any null score is NaN (not measured), or where P is 0."""
    value, null = np.asarray(value, np.float64), np.asarray(null, np.float64)
    if null.shape[1:] != value.shape:
        raise ShapeError(f"null f[P, ...] must end in the values' shape {value.shape}, got {null.shape}")
    if not len(null):
        nan = np.full(value.shape, np.nan)
        return nan, nan.copy(), nan.copy()
    missing = np.isnan(value) | np.isnan(null).any(0)
    with np.errstate(invalid="ignore"):
        mean = np.where(missing, np.nan, null.mean(0))
        q95 = np.where(missing, np.nan, np.quantile(null, 0.95, axis=0))
        p = np.where(missing, np.nan, (1.0 + np.sum(null >= value, axis=0)) / (len(null) + 1.0))
    return mean, q95, p


def _unbiased(n, cross, sum_k, sum_l, row_dot):
    """As ``kernels.cka._unbiased``: n (n - 3) HSIC_u from its four terms (the factor cancels in CKA). Unbiased HSIC
    needs n >= 4 examples (``kernels.cka`` refuses fewer): below that it is NaN, not measured, and so is its null."""
    if n < 4:
        return jnp.full(jnp.shape(cross), jnp.nan, jnp.float32)
    return cross + sum_k * sum_l / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * row_dot


def _terms(grams):
    """Per view: the flat Gram, its diagonal, the row sums and total of the zero-diagonal Gram, and both self-HSICs."""
    n = grams.shape[-1]
    diag = jnp.diagonal(grams, axis1=1, axis2=2)
    off = grams * (1.0 - jnp.eye(n, dtype=grams.dtype))
    rows = jnp.sum(off, axis=2)
    total = jnp.sum(rows, axis=1)
    biased = jnp.sum(grams * grams, axis=(1, 2))
    unbiased = _unbiased(n, jnp.sum(off * off, axis=(1, 2)), total, total, jnp.sum(rows * rows, axis=1))
    return grams.reshape(len(grams), -1), diag, rows, total, biased, unbiased


@functools.partial(jax.jit, static_argnames=("chunk", "rows"))
def _cka_null(grams_a, grams_b, perms, chunk, rows):
    """Per permutation, ``sum(K * L[p][:, p])`` streamed in blocks of ``rows`` rows: each block of a's Grams is read
    once for ``chunk`` permutations and b's permuted rows are gathered a block at a time (no permuted Gram is
    formed), so a permutation costs one pass over b's Grams and a ``1 / chunk`` share of one over a's."""
    n = grams_a.shape[-1]
    _, diag_a, rows_a, total_a, biased_aa, unbiased_aa = _terms(grams_a)
    _, diag_b, rows_b, total_b, biased_bb, unbiased_bb = _terms(grams_b)
    blocks = -(-n // rows)
    padded_a = jnp.pad(grams_a, ((0, 0), (0, blocks * rows - n), (0, 0)))  # zero rows add nothing

    def crosses(ps):  # i32[chunk, n] -> f32[chunk, La, Lb]
        order = jnp.pad(ps, ((0, 0), (0, blocks * rows - n)))

        def block(total, start):
            a = jax.lax.dynamic_slice_in_dim(padded_a, start, rows, axis=1)  # [La, rows, n]
            idx = jax.lax.dynamic_slice_in_dim(order, start, rows, axis=1)  # [chunk, rows]
            b = jax.vmap(lambda i, p: jnp.take(jnp.take(grams_b, i, axis=1), p, axis=2))(idx, ps)  # [c, Lb, rows, n]
            return total + jnp.einsum("lrn,cmrn->clm", a, b, precision=_HIGHEST), None

        zero = jnp.zeros((ps.shape[0], grams_a.shape[0], grams_b.shape[0]), jnp.float32)
        return jax.lax.scan(block, zero, jnp.arange(blocks) * rows)[0]

    def summary(p, cross):
        off_cross = cross - jnp.matmul(diag_a, diag_b[:, p].T, precision=_HIGHEST)
        row_dot = jnp.matmul(rows_a, rows_b[:, p].T, precision=_HIGHEST)
        unbiased = _unbiased(n, off_cross, total_a[:, None], total_b[None, :], row_dot)
        return (
            cross / jnp.sqrt(biased_aa[:, None] * biased_bb[None, :]),
            unbiased / jnp.sqrt(unbiased_aa[:, None] * unbiased_bb[None, :]),
        )

    count = perms.shape[0]
    groups = -(-count // chunk)
    grouped = jnp.pad(perms, ((0, groups * chunk - count), (0, 0))).reshape(groups, chunk, n)  # padding: perm 0s
    cross = jax.lax.map(crosses, grouped).reshape(groups * chunk, grams_a.shape[0], grams_b.shape[0])[:count]
    return jax.vmap(summary)(perms, cross)


def cka_null(
    grams_a, grams_b, perms: np.ndarray, *, chunk: int = CHUNK, rows: int = ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """(biased, unbiased), each f32[P, La, Lb]: linear CKA of every layer of a with every layer of b after each
    permutation of b's examples, from the centred Grams ``grams_a: f32[La, n, n]``, ``grams_b: f32[Lb, n, n]``
    (``kernels.cka.centred_gram``) and ``perms: i32[P, n]``. The side with fewer layers is the one gathered (a's
    Gram under the inverse permutation scores the same pairs)."""
    n = grams_a.shape[-1]
    if grams_b.shape[-1] != n or perms.ndim != 2 or perms.shape[1] != n:
        raise ShapeError(f"cka_null needs grams of one n and perms i32[P, n]; got {grams_a.shape}, {grams_b.shape}, "
                         f"{perms.shape}")  # fmt: skip
    if not len(perms):
        empty = np.zeros((0, len(grams_a), len(grams_b)), np.float32)
        return empty, empty.copy()
    if len(grams_a) < len(grams_b):
        biased, unbiased = _cka_null(grams_b, grams_a, jnp.asarray(np.argsort(perms, axis=1), jnp.int32), chunk, rows)
        return np.asarray(biased).transpose(0, 2, 1), np.asarray(unbiased).transpose(0, 2, 1)
    biased, unbiased = _cka_null(grams_a, grams_b, jnp.asarray(perms, jnp.int32), chunk, rows)
    return np.asarray(biased), np.asarray(unbiased)


def renamed_lists(lists, p):
    """The k-NN lists ``i32[..., n, k]`` of a view whose rows are permuted (row i of the new view = row ``p[i]``):
    row ``p[i]``'s list, each neighbour renamed to its new index (JAX; a permutation searches nothing again)."""
    inverse = jnp.zeros_like(p).at[p].set(jnp.arange(p.shape[0], dtype=p.dtype))
    return inverse[jnp.take(lists, p, axis=-2)]


@functools.partial(jax.jit, static_argnames=("chunk",))
def _knn_null(lists_a, lists_b, perms, chunk):
    k = lists_a.shape[-1]

    def one(p):
        moved = renamed_lists(lists_b, p)  # [Lb, n, k]: the lists of b[p]
        hits = lists_a[:, None, :, :, None] == moved[None, :, :, None, :]  # [La, Lb, n, k, k]
        return jnp.mean(jnp.sum(hits, axis=(3, 4)), axis=2) / k

    return jax.lax.map(one, perms, batch_size=chunk)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _cycle_null(lists_a, lists_b, perms, chunk):
    rows = jnp.arange(lists_a.shape[1], dtype=lists_a.dtype)[:, None, None]

    def one(p):
        moved = renamed_lists(lists_b, p)  # [Lb, n, k]: the lists of b[p], the view gone out through
        back = lists_a[:, moved]  # [La, Lb, n, k, k]: a's lists of the rows of each b[p] list
        return jnp.mean(jnp.any(back == rows, axis=(3, 4)), axis=2)

    return jax.lax.map(one, perms, batch_size=chunk)


def _lists_null(kernel, what: str, lists_a, lists_b, perms: np.ndarray, chunk: int) -> np.ndarray:
    lists_a, lists_b = jnp.asarray(lists_a), jnp.asarray(lists_b)
    if lists_a.shape[1:] != lists_b.shape[1:] or perms.shape[1:] != lists_a.shape[1:2]:
        raise ShapeError(f"{what} needs lists of the same n and k and perms i32[P, n]; got {lists_a.shape}, "
                         f"{lists_b.shape}, {perms.shape}")  # fmt: skip
    if not len(perms):
        return np.zeros((0, lists_a.shape[0], lists_b.shape[0]), np.float32)
    return np.asarray(kernel(lists_a, lists_b, jnp.asarray(perms, jnp.int32), chunk))


def knn_null(lists_a, lists_b, perms: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """f32[P, La, Lb]: mutual k-NN of every layer of a with every layer of b after each permutation of b's examples,
    from the neighbour lists ``i32[L, n, k]`` of each layer (``kernels.knn.knn``), which a permutation only renames
    (``kernels.knn.overlap`` per pair)."""
    return _lists_null(_knn_null, "knn_null", lists_a, lists_b, perms, chunk)


def cycle_knn_null(lists_a, lists_b, perms: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """f32[P, La, Lb]: cycle k-NN ``kernels.knn.cycle(a's list, b[p]'s list)`` of every layer of a with every layer
    of b after each permutation of b's examples (out through b[p], back through a), from the same lists as
    ``knn_null``."""
    return _lists_null(_cycle_null, "cycle_knn_null", lists_a, lists_b, perms, chunk)
