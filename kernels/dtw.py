"""Dynamic time warping (DTW) over ragged batches of cost matrices, with openai-whisper's tie-breaking.

Glossary: ``token`` indexes the rows of a cost matrix (text tokens for word timestamps), ``frame`` its columns
(encoder frames, 50 per second); ``N``/``M`` are the valid rows/columns of one matrix (``n_tokens``/``n_frames``),
``T``/``F`` the padded ones. Cell ``(i, j)`` is 0-based; the cumulative cost ``C`` is 1-based with a boundary
row and column, as in ``whisper.timing.dtw_cpu``::

    C[0, 0] = 0,   C[0, j] = C[i, 0] = inf
    C[i, j] = cost[i-1, j-1] + pick(C[i-1, j-1], C[i-1, j], C[i, j-1])

Tie-breaking (``pick``), exactly as ``dtw_cpu``: take the diagonal only if it is strictly smaller than both up
and left; else take up only if it is strictly smaller than both diagonal and left; otherwise take left. So every
tie for the minimum goes left, even ``diagonal == up < left``, where the *larger* left value is taken (whisper's
quirk, kept so that paths match). Comparisons with NaN are false, so NaN also goes left.

Precision decides ties, so it is part of matching whisper. Numba compiles dtw_cpu's
``np.ones(..., dtype=np.float32) * np.inf`` to a *float64* array (numba promotes float32 * float64 scalars, NumPy 2
does not), so whisper's CPU DTW accumulates in float64; its GPU ``dtw_cuda`` accumulates in float32. Accumulated
in float32, paths differ from dtw_cpu's on 1 to 5% of random 448 x 1500 matrices (uniform, normal) and on all of
them when many costs are tiny (uniform**4: they vanish in float64 sums and make exact ties). So
``accumulator="float64"`` (default) runs the wavefront in float64, switching JAX's x64 flag on inside this kernel
only, and reproduces dtw_cpu bit for bit (0 differences in 192 such matrices); ``"float32"`` is up to ~1.3x
faster on CPU (``bench/dtw.py``), is what TPUs can run, and equals ``reference_dtw(cost, dtype=np.float32)``
(dtw_cuda's precision; not checked against dtw_cuda itself, which needs a GPU). A double-float float32 pair was
tried and dropped: more precise than float64 where a tiny cost vanishes in a float64 sum, it broke whisper's ties
the other way.

The path runs from ``(0, 0)`` to ``(N-1, M-1)`` as index arrays padded with ``PAD`` (-1) to length ``T + F``;
the backtrace starts at ``C[N, M]`` and on the boundary moves left along row 0 and up along column 0
(``trace[0, :] = 2; trace[:, 0] = 1`` in whisper), which finite costs never reach before ``(0, 0)``.

How the kernel runs: anti-diagonal wavefront. Diagonal ``k`` holds the cells with ``i + j == k``; each depends only
on diagonals ``k-1`` and ``k-2``, so one ``lax.scan`` step updates a whole diagonal of every matrix of the batch at
once (one fused loop over f[batch, tokens]). Only cells with ``i < N`` and ``j < M`` feed ``C[N, M]`` and the path,
so padding may hold anything (huge values, inf, NaN) and changes nothing. The backtrace is a second ``lax.scan``
per item on device over the int8 trace, so a batch is one jitted call. A scan runs on one core of XLA's CPU
backend, so on CPU ``dtw_batch`` splits the batch into one piece per core and runs the pieces' calls from a thread
pool; each reads its matrices in place from the batch's one buffer.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.errors import ShapeError
from kernels.seqsim import COS_EPS, check_lengths, even_split, normalize_frames

DIAG, UP, LEFT = 0, 1, 2  # trace codes of whisper's dtw_cpu: came from C[i-1, j-1], C[i-1, j], C[i, j-1]
PAD = -1  # fills the path arrays past the path length
# Diagonals per outer scan step. The cost values of a chunk of diagonals are fetched with one gather of contiguous
# windows (a per-cell gather costs ~3 ns a cell on CPU, more than the DP step itself), into a chunk buffer
# f32[batch, chunk, tokens] kept small: on CPU, XLA's temp buffers above glibc's 32 MiB mmap threshold are mapped
# afresh on every call, and their page faults cost more than the work (measured: ~0.35 ms per MiB). With two CPU
# pieces running at once, 2 MiB and at most 128 diagonals measured best in a one-off sweep (64-256 diagonals,
# 2-8 MiB; differences of 10-20%, near this VM's run-to-run noise).
CHUNK_DIAGONALS = 128
CHUNK_BYTES = 2 * 2**20  # target size of the chunk buffer; dtw_batch picks the chunk from it
BACKTRACE_BY_ITEM_MAX_BATCH = 128  # on CPU, dtw_batch backtracks up to this many matrices one by one
MIN_CELLS_PER_WORKER = 2**18  # dtw_batch's CPU split gives each thread at least this many cells (~0.2 ms of work)

ACCUMULATORS = ("float64", "float32")  # dtype of the cumulative cost C
# XLA:CPU emits 256-bit vectors by default; with 512 the wavefront ran 10-15% faster where the CPU has AVX-512
# (a one-off measurement on AMD Zen 5: one piece of 128 x 50 x 550 matrices 5.4 -> 4.6 ms, of 8 x 448 x 1500
# 7.5 -> 6.5 ms). Without AVX-512 LLVM cannot emit 512-bit vectors, and other backends ignore XLA:CPU's
# options. Comparisons and additions are exact, so paths and costs are the same bit for bit.
_JIT_OPTIONS = {"compiler_options": {"xla_cpu_prefer_vector_width": "512"}}


class DtwResult(NamedTuple):
    """DTW of one cost matrix (shapes below) or of a batch (a leading ``batch`` axis on each field).

    token_idx, frame_idx: i32[tokens + frames], the path cells in order from (0, 0), ``PAD`` past ``length``.
    length: i32[], number of cells on the path.
    cost: f32[], cumulative cost ``C[N, M]``: the sum of the costs on the path, accumulated in path order by the
        accumulator, rounded to float32.
    """

    token_idx: jax.Array
    frame_idx: jax.Array
    length: jax.Array
    cost: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# The wavefront and the backtrace.


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


def _diagonal_step(carry, inputs, *, last, n_tokens, want_length: bool):
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


def _wavefront(
    cost: jax.Array, n_tokens, n_frames, *, chunk: int, accumulator: str, want_trace: bool, first=0, count=None
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
    batch, tokens, frames = cost.shape
    count = batch if count is None else count
    n_diag = tokens + frames - 1
    n_chunks = -(-n_diag // max(1, min(chunk, frames)))
    chunk = -(-n_diag // n_chunks)  # evened out: the last chunk overshoots the last diagonal by < n_chunks
    want_length = not want_trace  # dtw_distance needs the path length but no path: it rides along
    n_tokens = jnp.asarray(n_tokens, jnp.int32)
    last = n_tokens + jnp.asarray(n_frames, jnp.int32) - 2
    step = functools.partial(_diagonal_step, last=last, n_tokens=n_tokens, want_length=want_length)
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


def _backtrace(trace: jax.Array, n_tokens, n_frames, frames: int):
    """Path from C[N, M] back to C[0, 0] through trace: i8[diagonals, tokens] (see ``_wavefront``), on device.

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


def dtw(
    cost: jax.Array, n_tokens, n_frames, *, accumulator: str = "float64", chunk: int = CHUNK_DIAGONALS
) -> DtwResult:
    """DTW of one padded cost matrix, with whisper's tie-breaking (module docstring).

    cost: f32[tokens, frames] (other dtypes are cast to float32, the dtype whisper computes its matrix in);
    n_tokens, n_frames: i32[] valid rows/columns, 1 <= N <= tokens, 1 <= M <= frames. Padding may hold anything.
    accumulator: "float64" (whisper's dtw_cpu, bit for bit) or "float32" (faster, TPU, whisper's dtw_cuda), see
    the module docstring. chunk: diagonals per outer scan step, speed and memory only.
    Pure and vmappable; ``dtw_batch`` runs many matrices as one batch (and on every CPU core).
    """
    total, _, trace = _wavefront(
        cost.astype(jnp.float32)[None],
        jnp.reshape(n_tokens, (1,)),
        jnp.reshape(n_frames, (1,)),
        chunk=chunk,
        accumulator=accumulator,
        want_trace=True,
    )
    token_idx, frame_idx, length = _backtrace(trace[0], n_tokens, n_frames, cost.shape[1])
    return DtwResult(token_idx, frame_idx, length, total[0])


def _dtw_batch_piece(
    cost, n_tokens, n_frames, first, *, size: int, accumulator: str, chunk: int, backtrace_by_item: bool
) -> DtwResult:
    """DTW of the matrices first..first + size - 1 of the batch (one piece of dtw_batch's split, or all of it)."""
    n_tokens, n_frames = (lax.dynamic_slice_in_dim(n, first, size) for n in (n_tokens, n_frames))
    total, _, trace = _wavefront(
        cost, n_tokens, n_frames, chunk=chunk, accumulator=accumulator, want_trace=True, first=first, count=size
    )
    backtrace = functools.partial(_backtrace, frames=cost.shape[2])
    if backtrace_by_item:  # see dtw_batch
        token_idx, frame_idx, length = lax.map(lambda args: backtrace(*args), (trace, n_tokens, n_frames))
    else:
        token_idx, frame_idx, length = jax.vmap(backtrace)(trace, n_tokens, n_frames)
    return DtwResult(token_idx, frame_idx, length, total)


def _jits(fn, static_argnames) -> tuple:
    """(jit with ``_JIT_OPTIONS``, plain jit): JAX takes compiler options on top-level jits only, so calls under the
    caller's jit take the plain one (``_traced``)."""
    return jax.jit(fn, static_argnames=static_argnames, **_JIT_OPTIONS), jax.jit(fn, static_argnames=static_argnames)


def _traced(*args) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in args)


_dtw_batch_jits = _jits(_dtw_batch_piece, ("size", "accumulator", "chunk", "backtrace_by_item"))


def choose_chunk(batch: int, tokens: int) -> int:
    """Diagonals per outer step so that the chunk buffer f32[batch, chunk, tokens] is about ``CHUNK_BYTES``."""
    return int(np.clip(CHUNK_BYTES // (4 * batch * tokens), 16, CHUNK_DIAGONALS))


def cpu_workers() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a batch scheduler's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="babelgrid-dtw")


def _on_cores(run, items, workers: int) -> list:
    """[run(item) for item in items], from the thread pool when workers > 1: each jitted call is waited for in its
    own thread, so on CPU the calls run on as many cores at once."""
    if workers <= 1:
        return [run(item) for item in items]
    return list(_pool(workers).map(lambda item: jax.block_until_ready(run(item)), items))


def dtw_batch(
    cost: jax.Array, n_tokens: jax.Array, n_frames: jax.Array, *, accumulator: str = "float64", workers=None
) -> DtwResult:
    """DTW of a batch of ragged cost matrices.

    cost: f32[batch, tokens, frames]; n_tokens, n_frames: i32[batch], valid rows/columns of each matrix (>= 1).
    Returns DtwResult with token_idx, frame_idx: i32[batch, tokens + frames], length: i32[batch], cost: f32[batch].
    Item b's path is ``np.stack([token_idx[b, :length[b]], frame_idx[b, :length[b]]])``, equal to
    ``whisper.timing.dtw_cpu(cost[b, :N, :M])`` (with the default accumulator).

    workers: on CPU the batch is split into this many pieces, one jitted call each, run from a thread pool: XLA's
    CPU backend runs the wavefront's sequential scan on one core, so the pieces are what puts every core to work.
    None (default): the cores this process may use on the CPU backend (``cpu_workers()``), at most one per
    ``MIN_CELLS_PER_WORKER`` cells; 1 on accelerators, where one call fills the device. Results do not depend on it.
    Memory: the trace is i8[batch, tokens + frames, tokens] (16 x 448 x 1500 matrices: 14 MiB).
    """
    if cost.ndim != 3:
        raise ShapeError(f"cost must be f32[batch, tokens, frames], got shape {cost.shape}")
    batch, tokens, frames = cost.shape
    check_lengths("n_tokens", n_tokens, batch, tokens, "matrix")
    check_lengths("n_frames", n_frames, batch, frames, "matrix")
    on_cpu = jax.default_backend() == "cpu"
    traced = _traced(cost, n_tokens, n_frames)
    if traced:  # under the caller's jit: one piece, in the caller's computation
        workers = 1
    elif workers is None:
        workers = min(cpu_workers(), -(-batch * tokens * frames // MIN_CELLS_PER_WORKER)) if on_cpu else 1
    workers = max(1, min(int(workers), batch))
    if cost.size >= 2**31:  # the kernel indexes the flattened batch with int32
        raise ShapeError(f"cost has {cost.size} cells, more than 2**31 - 1: pass the batch in parts")
    # One buffer for all pieces; each call reads its piece in place.
    cost = jnp.asarray(cost, jnp.float32)
    n_tokens, n_frames = jnp.asarray(n_tokens, jnp.int32), jnp.asarray(n_frames, jnp.int32)
    bounds = np.linspace(0, batch, workers + 1).round().astype(int)

    def run(b: int) -> DtwResult:
        size = int(bounds[b + 1] - bounds[b])
        # XLA's CPU backend runs a scalar loop at ~15 ns a step but a batch-wide one at ~2 us a step (it hands the
        # gather of each step to its thread pool): on CPU, up to ~128 matrices, backtracking one by one is faster.
        by_item = size <= BACKTRACE_BY_ITEM_MAX_BATCH and on_cpu
        return _dtw_batch_jits[traced](
            cost,
            n_tokens,
            n_frames,
            np.int32(bounds[b]),
            size=size,
            accumulator=accumulator,
            chunk=choose_chunk(size, tokens),
            backtrace_by_item=by_item,
        )

    parts = _on_cores(run, range(workers), workers)
    return parts[0] if workers == 1 else DtwResult(*(jnp.concatenate(fields) for fields in zip(*parts, strict=True)))


# ----------------------------------------------------------------------------------------------------------------
# DTW distance between two embedding sequences.


def _unit_frames(x: jax.Array, lengths) -> jax.Array:
    """f32[utterance, frame, embed]: valid frames divided by max(|x|, COS_EPS), padding frames zero."""
    return jax.vmap(normalize_frames)(x.astype(jnp.float32), lengths)


def _dtw_distances(a, b, len_a, len_b, *, accumulator: str, chunk: int) -> jax.Array:
    """dtw_distance of pairs: a: f[pair, m, embed], b: f[pair, n, embed], len_a, len_b: i32[pair] -> f32[pair]."""
    # HIGHEST: float32, not TF32, on GPUs (as in kernels.seqsim).
    cos = jnp.einsum(
        "pme,pne->pmn", _unit_frames(a, len_a), _unit_frames(b, len_b), precision=jax.lax.Precision.HIGHEST
    )  # f32[pair, m, n]
    # The path length rides along the forward pass: no trace or backtrace needed.
    total, length, _ = _wavefront(1.0 - cos, len_a, len_b, chunk=chunk, accumulator=accumulator, want_trace=False)
    return total / length


def dtw_distance(
    a: jax.Array, b: jax.Array, len_a, len_b, *, accumulator: str = "float32", chunk: int = CHUNK_DIAGONALS
) -> jax.Array:
    """Length-normalised DTW distance between two embedding sequences, cost ``1 - cos(a_i, b_j)``.

    a: f[m, embed], b: f[n, embed]; len_a, len_b: i32[] valid frames (>= 1); padding frames may hold anything.
    Returns f32[]: ``C[len_a, len_b] / L``, the cumulative cosine distance along the DTW path (whisper's
    tie-breaking) divided by the number L of cells on that path, i.e. the mean cosine distance of the aligned
    frame pairs, in [0, 2]. The path minimises the total, not the mean; L lies in max(len_a, len_b)..len_a+len_b-1.
    accumulator: "float32" by default (a similarity needs no bit-exact ties, and TPUs have no float64).
    Vmappable; ``dtw_distance_pairs`` runs many pairs batched.
    """
    one = functools.partial(jnp.reshape, shape=(1,))
    return _dtw_distances(a[None], b[None], one(len_a), one(len_b), accumulator=accumulator, chunk=chunk)[0]


_dtw_distance_pairs_jits = _jits(_dtw_distances, ("accumulator", "chunk"))


def dtw_distance_pairs(
    a: jax.Array, b: jax.Array, len_a: jax.Array, len_b: jax.Array, *, accumulator: str = "float32"
) -> jax.Array:
    """dtw_distance of aligned pairs in one jitted call: a: f[pair, m, embed], b: f[pair, n, embed], lengths
    i32[pair]. Returns f32[pair]. Memory: a cosine matrix f32[m, n] per pair, so pass pairs in blocks."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ShapeError(f"a, b must be [pair, frame, embed] with equal pair and embed axes, got {a.shape}, {b.shape}")
    check_lengths("len_a", len_a, a.shape[0], a.shape[1], "pair")
    check_lengths("len_b", len_b, a.shape[0], b.shape[1], "pair")
    chunk = choose_chunk(a.shape[0], a.shape[1])
    run = _dtw_distance_pairs_jits[_traced(a, b, len_a, len_b)]
    return run(a, b, len_a, len_b, accumulator=accumulator, chunk=chunk)


TILE_CELLS = 2**22  # cosine cells of one tile of utterance pairs (16 MiB of float32; XLA:CPU maps >32 MiB afresh)


@functools.partial(jax.jit, static_argnames=("accumulator", "chunk"), **_JIT_OPTIONS)
def _dtw_similarity_tile(A, len_A, B, len_B, *, accumulator: str, chunk: int) -> jax.Array:
    """1 - dtw_distance of every pair of a tile: A f[r, m, embed], B f[c, n, embed] -> f32[r, c].

    The cosine matrices of all r x c pairs come from one matrix product [r * m, embed] x [embed, c * n] at GEMM
    speed (a batched product per pair took ~90% of the time: in a one-off measurement, 30 x 30 utterances of 200
    frames took 1.13 s that way and 0.19 s this way), then one wavefront over the r * c matrices."""
    r, c = A.shape[0], B.shape[0]
    cos = jnp.einsum(
        "ame,bne->abmn", _unit_frames(A, len_A), _unit_frames(B, len_B), precision=jax.lax.Precision.HIGHEST
    )
    cost = (1.0 - cos).reshape(r * c, A.shape[1], B.shape[1])
    total, length, _ = _wavefront(
        cost, jnp.repeat(len_A, c), jnp.tile(len_B, r), chunk=chunk, accumulator=accumulator, want_trace=False
    )
    return 1.0 - (total / length).reshape(r, c)


def dtw_similarity_matrix(
    A: jax.Array, len_A: jax.Array, B: jax.Array, len_B: jax.Array, *, accumulator: str = "float32"
) -> jax.Array:
    """``1 - dtw_distance`` of every utterance of A against every utterance of B: f32[N, M], in [-1, 1].

    A: f[N, m, embed], len_A: i32[N]; B: f[M, n, embed], len_B: i32[M]; lengths in 1..frames. The score is the
    mean cosine similarity of the frame pairs on the DTW path, a similarity measure for the SeqSim job beside
    SeqSim's max-matching. Symmetric up to ties between equal-cost paths of different lengths. Frames past the
    longest length are cropped first; pairs run in tiles of rows x columns of about ``TILE_CELLS`` cosine cells (one
    jitted call each; the last row and column of tiles padded by repeating utterance 0); on CPU, tiles run on every
    core. Cost: N * M * m * n cells, the wavefront's ~1 ns a cell on one CPU core, plus one matrix product.
    """
    A, B = jnp.asarray(A), jnp.asarray(B)
    if A.ndim != 3 or B.ndim != 3 or A.shape[2] != B.shape[2]:
        raise ShapeError(f"A, B must be [utterance, frame, embed] with one embed size, got {A.shape}, {B.shape}")
    n_a, n_b = A.shape[0], B.shape[0]
    check_lengths("len_A", len_A, n_a, A.shape[1], "utterance")
    check_lengths("len_B", len_B, n_b, B.shape[1], "utterance")
    if not n_a or not n_b:
        return jnp.zeros((n_a, n_b), jnp.float32)
    len_A, len_B = np.asarray(len_A, np.int32), np.asarray(len_B, np.int32)
    A, B = A[:, : int(len_A.max())], B[:, : int(len_B.max())]
    workers = cpu_workers() if jax.default_backend() == "cpu" else 1
    # Pairs per tile: TILE_CELLS cosine cells, and at least one tile per worker where there are enough pairs.
    pairs = max(1, min(TILE_CELLS // (A.shape[1] * B.shape[1]), -(-n_a * n_b // workers)))
    r = even_split(n_a, int(np.sqrt(pairs)))  # square-ish: the product's rows and columns
    c = even_split(n_b, pairs // r)
    n_row_tiles, n_col_tiles = -(-n_a // r), -(-n_b // c)
    chunk = choose_chunk(r * c, A.shape[1])
    tiles = [(i, j) for i in range(n_row_tiles) for j in range(n_col_tiles)]
    workers = min(workers, len(tiles))

    def members(t: int, size: int, count: int) -> np.ndarray:
        idx = np.arange(t * size, (t + 1) * size)
        return np.where(idx < count, idx, 0)  # the last tile is padded by repeating utterance 0

    def run(tile: tuple[int, int]) -> jax.Array:
        ra, cb = members(tile[0], r, n_a), members(tile[1], c, n_b)
        return _dtw_similarity_tile(
            A[ra], jnp.asarray(len_A[ra]), B[cb], jnp.asarray(len_B[cb]), accumulator=accumulator, chunk=chunk
        )

    parts = _on_cores(run, tiles, workers)  # on CPU one core a tile (see dtw_batch)
    grid = jnp.concatenate(
        [jnp.concatenate(parts[i * n_col_tiles : (i + 1) * n_col_tiles], axis=1) for i in range(n_row_tiles)]
    )
    return grid[:n_a, :n_b]


# ----------------------------------------------------------------------------------------------------------------
# Reference: plain loops, as in whisper.timing.dtw_cpu and backtrace.


def reference_dtw(cost: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, float]:
    """DTW of one unpadded matrix cost: [N, M], by the textbook double loop, as whisper's dtw_cpu and backtrace.

    Returns (path: i64[2, L], rows token and frame indices from (0, 0), as whisper's ``backtrace``; C[N, M]).
    ``dtype`` is the accumulator: float64 (default) is what numba-compiled dtw_cpu uses, bit for bit; float32
    is what ``dtw(..., accumulator="float32")`` and whisper's dtw_cuda use.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype)
    trace = np.full((n + 1, m + 1), -1, np.int64)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, DIAG
            elif c1 < c0 and c1 < c2:
                c, t = c1, UP
            else:
                c, t = c2, LEFT
            acc[i, j] = dtype(cost[i - 1, j - 1]) + c
            trace[i, j] = t
    trace[0, :] = LEFT
    trace[:, 0] = UP
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = i - (t != LEFT), j - (t != UP)
    return np.array(path[::-1]).T, float(acc[n, m])


def reference_dtw_similarity_matrix(A, len_A, B, len_B) -> np.ndarray:
    """dtw_similarity_matrix by a double loop over pairs of reference_dtw_distance."""
    return np.array(
        [
            [1.0 - reference_dtw_distance(a[:la], b[:lb]) for b, lb in zip(B, len_B, strict=True)]
            for a, la in zip(A, len_A, strict=True)
        ]
    )


def reference_dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """dtw_distance of unpadded a: [m, embed], b: [n, embed] in float64 NumPy."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), COS_EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), COS_EPS)
    path, total = reference_dtw(1.0 - a @ b.T, dtype=np.float64)
    return total / path.shape[1]
