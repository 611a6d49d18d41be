"""Choosing tokens from a decode step's logits over the vocabulary: the greedy pick and the beam's top-k.

Both give exactly what ``jnp.argmax`` and ``jax.lax.top_k`` give (the first index among equal values; best first,
ties to the lower index), in fewer passes over ``f32[rows, vocab]``: on XLA CPU the variadic reduce of ``argmax`` and
the partial sort of ``top_k`` touch every one of the 51865 entries of a row one at a time, where a ``max`` is a
vectorised reduction. ``reference_top_k`` is the NumPy twin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 512  # at most this many vocabulary entries per chunk of top_k_chunked (whisper's 51865: 115 chunks of 451)


def first_argmax(x):
    """``jnp.argmax(x, axis=-1)`` of ``x: f[..., n]`` without NaNs, as ``(index i32[...], max f[...])``: a max and a
    min over the indices that reach it, two vectorised reductions instead of one variadic one."""
    best = jnp.max(x, axis=-1, keepdims=True)
    n = x.shape[-1]
    index = jnp.min(jnp.where(x == best, jnp.arange(n, dtype=jnp.int32), jnp.int32(n)), axis=-1)
    return index, best[..., 0]


def greedy_pick(last_logits, first: bool, suppress, suppress_begin=None):
    """The most probable token of ``last_logits: f[rows, vocab]`` after suppression (``suppress_begin`` too at the
    ``first`` sampled step), and its log-probability. Picked on the log-probabilities, as CTranslate2 does: the
    subtraction of the log-sum-exp can round two near-equal logits to one value, which then ties to the lower token."""
    logprobs = jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1)
    mask = suppress | suppress_begin if first else suppress
    return first_argmax(jnp.where(mask[None, :], jnp.float32(-jnp.inf), logprobs))


def top_k_chunked(x, k: int, chunk: int = CHUNK):
    """``jax.lax.top_k(x, k)`` of ``x: f[..., n]`` without NaNs: ``(values f[..., k], indices i32[..., k])``.

    Exact: the ``k`` best entries lie in the ``k`` chunks with the best maxima (ties to the lower chunk), since each of
    those chunks' maxima ranks before any entry of another chunk. So one vectorised max per chunk, a top-k of the chunk
    maxima, and a top-k of those ``k`` chunks gathered in index order (so that ties still go to the lower index).
    """
    n = x.shape[-1]
    # A chunk size that divides the row if one is near: padding the row to whole chunks copied all of it (~1 ms of
    # the ~2 ms for 40 rows of whisper's vocabulary).
    chunk = next((d for d in range(chunk, chunk // 2, -1) if n % d == 0), chunk)
    n_chunks = -(-n // chunk)
    if n_chunks <= k:
        return jax.lax.top_k(x, k)
    pad = n_chunks * chunk - n
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf) if pad else x
    chunks = padded.reshape(*x.shape[:-1], n_chunks, chunk)
    _, best = jax.lax.top_k(jnp.max(chunks, axis=-1), k)
    best = jnp.sort(best, axis=-1)  # index order
    taken = jnp.take_along_axis(chunks, best[..., None], axis=-2)  # f[..., k, chunk]
    values, at = jax.lax.top_k(taken.reshape(*x.shape[:-1], k * chunk), k)
    index = jnp.take_along_axis(best, at // chunk, axis=-1) * chunk + at % chunk
    return values, index.astype(jnp.int32)


def reference_top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of ``top_k_chunked`` (and ``jax.lax.top_k``): the ``k`` largest of each row, best first, ties to the
    lower index."""
    x = np.asarray(x)
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, order, axis=-1), order.astype(np.int32)
