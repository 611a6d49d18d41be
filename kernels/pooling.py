"""Pooled baselines that SeqSim is compared against, as all-pairs similarity matrices.

- mean-pooled cosine: cosine of the utterances' mean valid frames;
- centre-frame cosine: cosine of the frames at index ``length // 2``;
- duration similarity: ``1 - |len_a - len_b| / max(len_a, len_b)``, which knows nothing but the lengths.

Conventions as in ``kernels.frames``: padding frames (index >= length) may hold anything, NaN included, and are
never read; lengths are >= 1; cosines divide by ``max(|x|, COS_EPS)``. ``mean_pool`` (the series and compare jobs'
pooling, on the device) accumulates in float32; the two cosine matrices pool and multiply on the host in float64, so
that any block of utterances gives the same bits as the whole (below).
Shapes: A: f32|bf16[N, m, embed], len_A: i32[N]; B: [M, n, embed], len_B: i32[M]; results f32[N, M].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels.frames import COS_EPS, frame_mask, unit_rows


def mean_pool(x: jax.Array, length) -> jax.Array:
    """f32[embed]: mean of the valid frames of x: [frame, embed] (float32 accumulation)."""
    valid = frame_mask(x.shape[0], length)[:, None]
    return jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0), axis=0) / length


def center_frame(x: jax.Array, length) -> jax.Array:
    """f32[embed]: the frame at index ``length // 2`` of x: [frame, embed] (the later one of two middle frames)."""
    return jax.lax.dynamic_index_in_dim(x, length // 2, axis=0, keepdims=False).astype(jnp.float32)


def cosine_matrix(p: jax.Array, q: jax.Array) -> jax.Array:
    """f32[N, M] cosines between the rows of p: f32[N, embed] and q: f32[M, embed]."""
    return jnp.matmul(unit_rows(p), unit_rows(q).T, precision=jax.lax.Precision.HIGHEST)


# The seqsim job scores a pair whole or, where --memory_budget splits it, in blocks of utterances: the blocks must give
# the same bits, or two runs (two workers with two budgets) write other bytes into one store. XLA's float32 pooling
# and product do not: a batch of 1 or 2 utterances pooled in another order than one of 40 (up to 279 of 384 values
# differed), and the product of a 13-row block differed from the same rows of a 40-row product by up to 6.7e-8. So
# the pooled baselines are computed on the host in float64: each utterance's valid frames summed alone
# (``host_pools``; the seqsim job pools each held piece once, for every pair it is scored in), and the cosines in
# tiles of TILE x TILE rows, every tile one BLAS product of the same shape, whatever block the rows came from
# (``host_cosines``), then rounded once to float32. Every value then depends on its own utterances only: measured
# equal for every block (tests/kernels/test_pooling.py, which fails on a BLAS for which that stops holding). One pair
# of 500 x 500 utterances at d=1280 (bench/pooling.py, AVX-512): 0.48 s pooling and product against 2.6 s for the XLA
# path; the tiled product alone 0.030 s, NumPy's einsum (which needs no tiles) 0.13 s.
TILE = 64


def host_pools(x, lengths, centre: bool = False) -> np.ndarray:
    """f64[N, embed]: the mean of each utterance's valid frames, or its centre frame (index ``length // 2``)."""
    x, lengths = np.asarray(x), np.asarray(lengths)  # states on a CPU device: no copy
    if centre:
        return x[np.arange(len(x)), lengths // 2].astype(np.float64)
    return np.stack([x[i, :n].astype(np.float64).sum(axis=0) / n for i, n in enumerate(lengths)])


def host_cosines(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """f32[N, M] cosines of the rows of p: f64[N, embed] and q: f64[M, embed] (see above)."""
    tiles = []
    for rows in (p, q):
        unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), COS_EPS)
        padded = np.zeros((-(-len(rows) // TILE) * TILE, rows.shape[1]))
        padded[: len(rows)] = unit
        tiles.append(padded)
    out = np.empty((len(tiles[0]), len(tiles[1])))
    for i in range(0, len(tiles[0]), TILE):
        for j in range(0, len(tiles[1]), TILE):
            out[i : i + TILE, j : j + TILE] = tiles[0][i : i + TILE] @ tiles[1][j : j + TILE].T
    return out[: len(p), : len(q)].astype(np.float32)


def mean_pooled_cosine_matrix(A, len_A, B, len_B) -> np.ndarray:
    """f32[N, M]: cosine of mean-pooled valid frames for every pair (see module docstring for shapes)."""
    return host_cosines(host_pools(A, len_A), host_pools(B, len_B))


def center_frame_cosine_matrix(A, len_A, B, len_B) -> np.ndarray:
    """f32[N, M]: cosine of the centre frames (index ``length // 2``) for every pair."""
    return host_cosines(host_pools(A, len_A, centre=True), host_pools(B, len_B, centre=True))


def duration_similarity(len_a, len_b) -> jax.Array:
    """f32[]: ``1 - |len_a - len_b| / max(len_a, len_b)``, 1 for equal lengths, towards 0 for very unequal ones."""
    len_a = jnp.asarray(len_a, jnp.float32)
    len_b = jnp.asarray(len_b, jnp.float32)
    return 1.0 - jnp.abs(len_a - len_b) / jnp.maximum(len_a, len_b)


@jax.jit
def duration_similarity_matrix(len_A, len_B) -> jax.Array:
    """f32[N, M]: ``duration_similarity`` of every pair of lengths len_A: i32[N], len_B: i32[M]."""
    return jax.vmap(jax.vmap(duration_similarity, (None, 0)), (0, None))(len_A, len_B)


# ----------------------------------------------------------------------------------------------------------------
# References: slow, obvious, float64.


def _reference_cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (max(np.linalg.norm(u), COS_EPS) * max(np.linalg.norm(v), COS_EPS)))


def reference_mean_pooled_cosine_matrix(A, len_A, B, len_B) -> np.ndarray:
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    out = np.zeros((len(A), len(B)))
    for i in range(len(A)):
        for j in range(len(B)):
            out[i, j] = _reference_cosine(A[i, : len_A[i]].mean(axis=0), B[j, : len_B[j]].mean(axis=0))
    return out


def reference_center_frame_cosine_matrix(A, len_A, B, len_B) -> np.ndarray:
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    out = np.zeros((len(A), len(B)))
    for i in range(len(A)):
        for j in range(len(B)):
            out[i, j] = _reference_cosine(A[i, len_A[i] // 2], B[j, len_B[j] // 2])
    return out


def reference_duration_similarity_matrix(len_A, len_B) -> np.ndarray:
    out = np.zeros((len(len_A), len(len_B)))
    for i, la in enumerate(len_A):
        for j, lb in enumerate(len_B):
            out[i, j] = 1.0 - abs(int(la) - int(lb)) / max(int(la), int(lb))
    return out
