"""The anti-diagonal wavefront and the backtrace behind ``kernels.dtw`` (recurrence and tie-breaking there).

Diagonal ``k`` of a cost matrix holds the cells with ``i + j == k``; each depends only on diagonals ``k-1`` and
``k-2``, so one ``lax.scan`` step updates a whole diagonal of every matrix of the batch at once (one fused loop over
f[batch, tokens]). The cost values of a chunk of diagonals are fetched by one gather of contiguous windows of the
flattened batch into a chunk buffer f32[batch, chunk, tokens]. Only cells with ``i < N`` and ``j < M`` feed
``C[N, M]`` and the path, so padding may hold anything (huge values, inf, NaN) and changes nothing.

``wavefront`` returns ``C[N, M]`` of each matrix and either its path length (no path kept) or the int8 trace:
``trace[b, k, i]`` is the code (``DIAG``, ``UP``, ``LEFT``) of cell ``(i, k - i)``, batch-major.
``backtrace`` walks one matrix's trace from ``C[N, M]`` to ``C[0, 0]`` in a second ``lax.scan``, on device; on the
boundary it moves left along row 0 and up along column 0 (``trace[0, :] = 2; trace[:, 0] = 1`` in whisper), which
finite costs never reach before ``(0, 0)``.

Accumulator dtypes (``ACCUMULATORS``): "float64" switches JAX's x64 flag on inside ``wavefront`` only (the flag
stays as the caller set it); "float32" runs anywhere. Measurements: ``bench/RESULTS.md``, sections "dtw" and
"dtw kernel design notes (one-off measurements)".
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DIAG, UP, LEFT = 0, 1, 2  # trace codes of whisper's dtw_cpu: came from C[i-1, j-1], C[i-1, j], C[i, j-1]
PAD = -1  # fills the path arrays past the path length
ACCUMULATORS = ("float64", "float32")  # dtype of the cumulative cost C
TIES = ("dtw_cpu", "dtw_cuda")  # whose tie-breaking: whisper's two DTWs break ties differently (kernels.dtw)
# Diagonals per outer scan step, and the target size of the chunk buffer f32[batch, chunk, tokens]. A per-cell
# gather costs more than the DP step itself, hence one gather of windows per chunk; the buffer stays small because on
# CPU, XLA's temp buffers above glibc's 32 MiB mmap threshold are mapped afresh on every call and their page faults
# cost more than the work. Both were picked by a sweep (bench/RESULTS.md, "dtw kernel design notes").
CHUNK_DIAGONALS = 128
CHUNK_BYTES = 2 * 2**20


def choose_chunk(batch: int, tokens: int) -> int:
    """Diagonals per outer step so that the chunk buffer f32[batch, chunk, tokens] is about ``CHUNK_BYTES``."""
    return int(np.clip(CHUNK_BYTES // (4 * batch * tokens), 16, CHUNK_DIAGONALS))


def _chunk_of_diagonals(flat: jax.Array, last_row: jax.Array, items: jax.Array, k0, size: int, shape) -> jax.Array:
    """f32[items, size, tokens]: cost[b, i, k - i] for the diagonals k in [k0, k0 + size) of the matrices ``items``,
    garbage where k - i is outside the matrix.

    flat: the whole cost array f32[batch, tokens, frames] flattened (read in place: a batch's pieces share it);
    last_row: f32[items, tokens - 1 + frames + size], row tokens - 1 of each of these matrices, padded front and
    back. Cell (i, k - i) of matrix b sits at flat index b * tokens * frames + k + i * (frames - 1), so row i of the
    chunk is one contiguous window: one gather of windows instead of one gather per cell. A row's window may start
    in row i - 1 or run into row i + 1 (cells outside the matrix, never read); only the last row could run past the
    end of the array, so it comes from its own padded copy. Needs size <= frames (then rows < tokens - 1 stay in
    bounds) and k0 + size <= tokens + frames - 1 + size.
    """
    tokens, frames = shape
    rows = jnp.arange(tokens - 1, dtype=jnp.int32) * (frames - 1)
    starts = items[:, None] * (tokens * frames) + rows + k0  # i32[items, tokens - 1]
    dims = lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(), start_index_map=(0,))
    windows = lax.gather(flat, starts[..., None], dims, slice_sizes=(size,), mode=lax.GatherScatterMode.CLIP)
    last = lax.dynamic_slice_in_dim(last_row, k0, size, axis=1)  # cost[b, tokens - 1, k - (tokens - 1)]
    return jnp.swapaxes(jnp.concatenate([windows, last[:, None]], axis=1), 1, 2)


def _at_row(a: jax.Array, rows: jax.Array) -> jax.Array:
    """a[b, rows[b]] for every b: a: [batch, n], rows: i32[batch]."""
    return jnp.take_along_axis(a, rows[:, None], axis=1)[:, 0]


def _diagonal_step(carry, inputs, *, last, n_tokens, want_length: bool, ties: str = "dtw_cpu"):
    """One anti-diagonal k of the wavefront, for every matrix of the batch.

    carry: (prev2, prev1, final, trace). prev2/prev1: (C, lengths) on diagonals k-2/k-1, C: f[batch, tokens + 1] in
    the accumulator's dtype, lengths: i32[batch, tokens + 1] path lengths or None; column 0 is the boundary row
    i = 0 of C, column i its row i. final: (C[N, M]: f[batch], its path length: i32[batch] or None), taken when
    diagonal k is the item's last. trace: i8[batch, diagonals, tokens] filled diagonal by diagonal, or None.
    inputs: (k: i32[], x: f32[batch, tokens] = cost[b, i, k - i]); last: i32[batch] = N + M - 2, the diagonal of
    C[N, M]; n_tokens: i32[batch] = N.
    """
    k, x = inputs
    (acc2, len2), (acc1, len1), (final, final_len), trace = carry
    c0, c1, c2 = acc2[:, :-1], acc1[:, :-1], acc1[:, 1:]  # C[i-1, j-1], C[i-1, j], C[i, j-1] for rows i = 1..T
    if ties == "dtw_cuda":  # the first of diagonal, up, left that is <= both others (its Triton kernel's stores)
        diag = (c0 <= c1) & (c0 <= c2)
        up = ~diag & (c1 <= c0) & (c1 <= c2)
    else:  # dtw_cpu: diagonal or up only when strictly the smallest, every tie left
        diag = (c0 < c1) & (c0 < c2)
        up = (c1 < c0) & (c1 < c2)  # excludes diag: c1 < c0 contradicts c0 < c1
    best = jnp.where(diag, c0, jnp.where(up, c1, c2))
    # Cells with j < 0 lie before the matrix: inf, so that C[i, 0] reads as the inf boundary column.
    inside = jnp.arange(x.shape[1], dtype=jnp.int32) <= k
    new = jnp.where(inside, x.astype(best.dtype) + best, jnp.inf)  # as dtw_cpu: float64(x) + C
    new = lax.pad(new, jnp.asarray(jnp.inf, new.dtype), ((0, 0, 0), (1, 0, 0)))
    here = k == last
    # One value per matrix, not a select of the whole diagonal on every step.
    final = jnp.where(here, _at_row(new, n_tokens), final)
    new_len = None
    if want_length:
        steps = jnp.where(diag, len2[:, :-1], jnp.where(up, len1[:, :-1], len1[:, 1:])) + 1
        new_len = lax.pad(jnp.where(inside, steps, 0), jnp.int32(0), ((0, 0, 0), (1, 0, 0)))
        final_len = jnp.where(here, _at_row(new_len, n_tokens), final_len)
    if trace is not None:
        # Written in place into the carried buffer, batch-major for the backtrace.
        codes = jnp.where(diag, DIAG, jnp.where(up, UP, LEFT)).astype(jnp.int8)
        trace = lax.dynamic_update_index_in_dim(trace, codes, k, 1)
    return ((acc1, len1), (new, new_len), (final, final_len), trace), None


def wavefront(
    cost: jax.Array,
    n_tokens,
    n_frames,
    *,
    chunk: int,
    accumulator: str,
    want_trace: bool,
    first=0,
    count=None,
    ties: str = "dtw_cpu",
):
    """Forward pass over all T + F - 1 diagonals of the matrices first..first + count - 1 of a padded batch.

    cost: f32[batch, tokens, frames], read in place (not sliced: pieces of one batch share its buffer); first: i32[]
    (0), count: static (batch); n_tokens, n_frames: i32[count], of these matrices. The step is written for the
    batch (not vmapped from one matrix), so that each diagonal is one fused loop over f[count, tokens] and C[N, M]
    is picked per matrix. Returns (C[N, M]: f32[count], rounded from the accumulator; path length: i32[count],
    only without trace, else None; trace: i8[count, diagonals, tokens] or None, trace[b, k, i] the code of cell
    (i, k - i), rows past the last diagonal T + F - 2 unused).
    """
    if accumulator not in ACCUMULATORS:
        raise ValueError(f"accumulator must be one of {ACCUMULATORS}, got {accumulator!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    batch, tokens, frames = cost.shape
    count = batch if count is None else count
    n_diag = tokens + frames - 1
    n_chunks = -(-n_diag // max(1, min(chunk, frames)))
    chunk = -(-n_diag // n_chunks)  # evened out: the last chunk overshoots the last diagonal by < n_chunks
    want_length = not want_trace  # dtw_distance needs the path length but no path: it rides along
    n_tokens = jnp.asarray(n_tokens, jnp.int32)
    last = n_tokens + jnp.asarray(n_frames, jnp.int32) - 2
    step = functools.partial(_diagonal_step, last=last, n_tokens=n_tokens, want_length=want_length, ties=ties)
    items = jnp.asarray(first, jnp.int32) + jnp.arange(count, dtype=jnp.int32)
    flat = cost.reshape(-1)
    # Row tokens - 1 of each matrix, padded so that last_row[:, k]: cost[b, tokens - 1, k - (tokens - 1)].
    last_row = jnp.pad(lax.dynamic_slice_in_dim(cost[:, -1], first, count), ((0, 0), (tokens - 1, chunk)))

    def run_chunk(carry, c):
        k0 = c * chunk
        ks = k0 + jnp.arange(chunk, dtype=jnp.int32)
        xs = _chunk_of_diagonals(flat, last_row, items, k0, chunk, (tokens, frames))
        return lax.scan(step, carry, (ks, jnp.swapaxes(xs, 0, 1)))[0], None  # xs: f32[chunk, count, tokens]

    # float64 only inside: the x64 flag stays as the caller set it (this works under an outer jit and vmap).
    with jax.enable_x64(True) if accumulator == "float64" else contextlib.nullcontext():
        inf = jnp.full((count, tokens + 1), jnp.inf, accumulator)
        lengths = jnp.zeros((count, tokens + 1), jnp.int32) if want_length else None
        trace = jnp.zeros((count, n_chunks * chunk, tokens), jnp.int8) if want_trace else None
        final = (jnp.full(count, jnp.inf, accumulator), jnp.zeros(count, jnp.int32) if want_length else None)
        # Diagonals -2 (holding C[0, 0] = 0) and -1, C[N, M] of each matrix, the trace.
        carry = ((inf.at[:, 0].set(0.0), lengths), (inf, lengths), final, trace)
        (_, _, (final, final_len), trace), _ = lax.scan(run_chunk, carry, jnp.arange(n_chunks, dtype=jnp.int32))
        total = final.astype(jnp.float32)
    return total, final_len, trace


def backtrace(trace: jax.Array, n_tokens, n_frames, frames: int):
    """Path from C[N, M] back to C[0, 0] through trace: i8[diagonals, tokens] (see ``wavefront``), on device.

    Returns (token_idx, frame_idx: i32[tokens + frames] in path order, PAD-padded; length: i32[]).
    """
    tokens = trace.shape[1]
    steps = tokens + frames  # a path has at most N + M cells

    def step(state, _):
        i, j, length = state  # 1-based position in C, cells emitted so far
        alive = (i > 0) | (j > 0)
        k = jnp.maximum(i + j - 2, 0)  # diagonal of cell (i - 1, j - 1)
        code = trace[k, jnp.clip(i - 1, 0, tokens - 1)]
        code = jnp.where(i == 0, LEFT, jnp.where(j == 0, UP, code))  # whisper: trace[0, :] = 2; trace[:, 0] = 1
        emit = (jnp.where(alive, i - 1, PAD), jnp.where(alive, j - 1, PAD))
        i = i - (alive & (code != LEFT))
        j = j - (alive & (code != UP))
        return (i, j, length + alive), emit

    start = (jnp.asarray(n_tokens, jnp.int32), jnp.asarray(n_frames, jnp.int32), jnp.int32(0))
    (_, _, length), (rev_i, rev_j) = lax.scan(step, start, length=steps)
    pos = jnp.arange(steps)
    src = jnp.clip(length - 1 - pos, 0, steps - 1)
    keep = pos < length
    return jnp.where(keep, rev_i[src], PAD), jnp.where(keep, rev_j[src], PAD), length
