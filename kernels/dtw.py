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
quirk, kept so that paths match). Comparisons with NaN are false, so NaN also goes left. Whisper's GPU DTW
(``dtw_cuda``, a Triton kernel) breaks ties the other way: the first of diagonal, up and left that is <= both
others. ``ties="dtw_cuda"`` follows it; on an H200 its paths differed from ``dtw_cpu``'s rule on random 448 x 1500
float32 matrices (bench/RESULTS.md, the GPU section).

Precision decides ties, so it is part of matching whisper. Numba compiles dtw_cpu's
``np.ones(..., dtype=np.float32) * np.inf`` to a *float64* array (numba promotes float32 * float64 scalars, NumPy 2
does not), so whisper's CPU DTW accumulates in float64; its GPU ``dtw_cuda`` accumulates in float32. Accumulated
in float32, paths differ from dtw_cpu's on some random matrices, and on most when many costs are tiny (they vanish
in float64 sums and make exact ties). So ``accumulator="float64"`` (default) runs the wavefront in float64 and
reproduces dtw_cpu bit for bit; ``"float32"`` is faster on CPU, is what TPUs can run, and equals
``reference_dtw(cost, dtype=np.float32)`` (dtw_cuda's precision; not checked against dtw_cuda itself, which needs
a GPU). A double-float float32 pair was tried and dropped: more precise than float64 where a tiny cost vanishes
in a float64 sum, it broke whisper's ties the other way.

The path runs from ``(0, 0)`` to ``(N-1, M-1)`` as index arrays padded with ``PAD`` (-1) to length ``T + F``.
Padding cells may hold anything (huge values, inf, NaN) and change nothing. The wavefront and the backtrace are in
``kernels.dtw_wavefront``; a batch is one jitted call per piece, and on CPU ``dtw_batch`` splits the batch into one
piece per core (``kernels._cpu``), each reading its matrices in place from the batch's one buffer.

Measurements: ``bench/RESULTS.md``, sections "dtw" (against whisper's dtw_cpu, float64 vs float32) and "dtw kernel
design notes (one-off measurements)" (the precision study, chunk sizes, vector width, backtrace, tiles).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.errors import ShapeError
from kernels._cpu import cpu_workers, on_cores
from kernels.dtw_wavefront import (
    CHUNK_DIAGONALS,
    DIAG,
    LEFT,
    TIES,
    UP,
    backtrace,
    choose_chunk,
    wavefront,
)
from kernels.frames import (
    check_grid,
    check_lengths,
    even_split,
    leading,
    normalize_frames,
    reference_unit_rows,
    take_rows,
    traced,
)

BACKTRACE_BY_ITEM_MAX_BATCH = 128  # on CPU, dtw_batch backtracks up to this many matrices one by one
MIN_CELLS_PER_WORKER = 2**18  # dtw_batch's CPU split gives each thread at least this many cells
# XLA:CPU emits 256-bit vectors by default; 512 runs the wavefront faster where the CPU has AVX-512
# (bench/RESULTS.md, "dtw kernel design notes"). Without AVX-512 LLVM cannot emit 512-bit vectors, and other backends
# ignore XLA:CPU's options. Comparisons and additions are exact, so paths and costs are the same bit for bit.
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


def dtw(
    cost: jax.Array,
    n_tokens,
    n_frames,
    *,
    accumulator: str = "float64",
    chunk: int = CHUNK_DIAGONALS,
    ties: str = "dtw_cpu",
) -> DtwResult:
    """DTW of one padded cost matrix, with whisper's tie-breaking (module docstring).

    cost: f32[tokens, frames] (other dtypes are cast to float32, the dtype whisper computes its matrix in);
    n_tokens, n_frames: i32[] valid rows/columns, 1 <= N <= tokens, 1 <= M <= frames. Padding may hold anything.
    accumulator: "float64" (whisper's dtw_cpu, bit for bit) or "float32" (faster, TPU, whisper's dtw_cuda), see
    the module docstring. chunk: diagonals per outer scan step, speed and memory only. ties: "dtw_cpu" (default)
    or "dtw_cuda", whose tie-breaking (module docstring); with ``accumulator="float32"``, "dtw_cuda" is whisper's
    GPU DTW. Pure and vmappable; ``dtw_batch`` runs many matrices as one batch (and on every CPU core).
    """
    total, _, trace = wavefront(
        cost.astype(jnp.float32)[None],
        jnp.reshape(n_tokens, (1,)),
        jnp.reshape(n_frames, (1,)),
        chunk=chunk,
        accumulator=accumulator,
        want_trace=True,
        ties=ties,
    )
    token_idx, frame_idx, length = backtrace(trace[0], n_tokens, n_frames, cost.shape[1])
    return DtwResult(token_idx, frame_idx, length, total[0])


def _dtw_batch_piece(
    cost,
    n_tokens,
    n_frames,
    first,
    *,
    size: int,
    accumulator: str,
    chunk: int,
    backtrace_by_item: bool,
    ties: str = "dtw_cpu",
) -> DtwResult:
    """DTW of the matrices first..first + size - 1 of the batch (one piece of dtw_batch's split, or all of it)."""
    n_tokens, n_frames = (lax.dynamic_slice_in_dim(n, first, size) for n in (n_tokens, n_frames))
    total, _, trace = wavefront(
        cost,
        n_tokens,
        n_frames,
        chunk=chunk,
        accumulator=accumulator,
        want_trace=True,
        first=first,
        count=size,
        ties=ties,
    )
    walk = functools.partial(backtrace, frames=cost.shape[2])
    if backtrace_by_item:  # see dtw_batch
        token_idx, frame_idx, length = lax.map(lambda args: walk(*args), (trace, n_tokens, n_frames))
    else:
        token_idx, frame_idx, length = jax.vmap(walk)(trace, n_tokens, n_frames)
    return DtwResult(token_idx, frame_idx, length, total)


def _jits(fn, static_argnames) -> tuple:
    """(jit with ``_JIT_OPTIONS``, plain jit): JAX takes compiler options on top-level jits only, so calls under the
    caller's jit take the plain one (``kernels.frames.traced``)."""
    return jax.jit(fn, static_argnames=static_argnames, **_JIT_OPTIONS), jax.jit(fn, static_argnames=static_argnames)


_dtw_batch_jits = _jits(_dtw_batch_piece, ("size", "accumulator", "chunk", "backtrace_by_item", "ties"))


def dtw_batch(
    cost: jax.Array,
    n_tokens: jax.Array,
    n_frames: jax.Array,
    *,
    accumulator: str = "float64",
    workers=None,
    ties: str = "dtw_cpu",
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
    under_jit = traced(cost, n_tokens, n_frames)
    if under_jit:  # under the caller's jit: one piece, in the caller's computation
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
        # XLA's CPU backend runs a scalar loop far faster per step than a batch-wide one (it hands the gather of each
        # step to its thread pool): on CPU, up to BACKTRACE_BY_ITEM_MAX_BATCH matrices, one by one is faster.
        by_item = size <= BACKTRACE_BY_ITEM_MAX_BATCH and on_cpu
        return _dtw_batch_jits[under_jit](
            cost,
            n_tokens,
            n_frames,
            np.int32(bounds[b]),
            size=size,
            accumulator=accumulator,
            chunk=choose_chunk(size, tokens),
            backtrace_by_item=by_item,
            ties=ties,
        )

    parts = on_cores(run, range(workers), workers)
    return parts[0] if workers == 1 else DtwResult(*(jnp.concatenate(fields) for fields in zip(*parts, strict=True)))


# ----------------------------------------------------------------------------------------------------------------
# DTW distance between two embedding sequences.


def _unit_frames(x: jax.Array, lengths) -> jax.Array:
    """f32[utterance, frame, embed]: valid frames of unit length, padding frames zero (``normalize_frames``)."""
    return jax.vmap(normalize_frames)(x.astype(jnp.float32), lengths)


def _dtw_distances(a, b, len_a, len_b, *, accumulator: str, chunk: int) -> jax.Array:
    """dtw_distance of pairs: a: f[pair, m, embed], b: f[pair, n, embed], len_a, len_b: i32[pair] -> f32[pair]."""
    # HIGHEST: float32, not TF32, on GPUs (as in kernels.seqsim).
    cos = jnp.einsum(
        "pme,pne->pmn", _unit_frames(a, len_a), _unit_frames(b, len_b), precision=jax.lax.Precision.HIGHEST
    )  # f32[pair, m, n]
    # The path length rides along the forward pass: no trace or backtrace needed.
    total, length, _ = wavefront(1.0 - cos, len_a, len_b, chunk=chunk, accumulator=accumulator, want_trace=False)
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
    run = _dtw_distance_pairs_jits[traced(a, b, len_a, len_b)]
    return run(a, b, len_a, len_b, accumulator=accumulator, chunk=chunk)


TILE_CELLS = 2**22  # cosine cells of one tile of utterance pairs (16 MiB of float32; XLA:CPU maps >32 MiB afresh)


@functools.partial(jax.jit, static_argnames=("accumulator", "chunk"), **_JIT_OPTIONS)
def _dtw_similarity_tile(A, len_A, B, len_B, *, accumulator: str, chunk: int) -> jax.Array:
    """1 - dtw_distance of every pair of a tile: A f[r, m, embed], B f[c, n, embed] -> f32[r, c].

    The cosine matrices of all r x c pairs come from one matrix product [r * m, embed] x [embed, c * n] at GEMM
    speed (a batched product per pair was far slower: bench/RESULTS.md, "dtw kernel design notes"), then one
    wavefront over the r * c matrices."""
    r, c = A.shape[0], B.shape[0]
    cos = jnp.einsum(
        "ame,bne->abmn", _unit_frames(A, len_A), _unit_frames(B, len_B), precision=jax.lax.Precision.HIGHEST
    )
    cost = (1.0 - cos).reshape(r * c, A.shape[1], B.shape[1])
    total, length, _ = wavefront(
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
    core. Cost: N * M * m * n wavefront cells plus one matrix product.
    """
    A, B, n_a, n_b = check_grid(A, B, len_A, len_B)
    if not n_a or not n_b:
        return jnp.zeros((n_a, n_b), jnp.float32)
    len_A, len_B = np.asarray(len_A, np.int32), np.asarray(len_B, np.int32)
    A, B = leading(A, (n_a, int(len_A.max()))), leading(B, (n_b, int(len_B.max())))
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
        ra_, la, cb_, lb = jax.device_put((ra, len_A[ra], cb, len_B[cb]))  # deliberate: the tile's indices, once
        return _dtw_similarity_tile(take_rows(A, ra_), la, take_rows(B, cb_), lb, accumulator=accumulator, chunk=chunk)

    parts = on_cores(run, tiles, workers)  # on CPU one core a tile (see dtw_batch)
    grid = jnp.concatenate(
        [jnp.concatenate(parts[i * n_col_tiles : (i + 1) * n_col_tiles], axis=1) for i in range(n_row_tiles)]
    )
    return leading(grid, (n_a, n_b))


# ----------------------------------------------------------------------------------------------------------------
# Reference: plain loops, as in whisper.timing.dtw_cpu and backtrace.


def reference_dtw(cost: np.ndarray, dtype=np.float64, ties: str = "dtw_cpu") -> tuple[np.ndarray, float]:
    """DTW of one unpadded matrix cost: [N, M], by the textbook double loop, as whisper's dtw_cpu and backtrace.

    Returns (path: i64[2, L], rows token and frame indices from (0, 0), as whisper's ``backtrace``; C[N, M]).
    ``dtype`` is the accumulator: float64 (default) is what numba-compiled dtw_cpu uses, bit for bit; float32
    is what ``dtw(..., accumulator="float32")`` and whisper's dtw_cuda use. ``ties="dtw_cuda"``: the tie-breaking
    of whisper's Triton kernel (``whisper/triton_ops.py``: it stores code 2, then 1, then 0, each where that
    neighbour is <= both others, so the last store that applies wins).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype)
    trace = np.full((n + 1, m + 1), -1, np.int64)
    acc[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if ties == "dtw_cuda":
                t = DIAG if c0 <= c1 and c0 <= c2 else UP if c1 <= c0 and c1 <= c2 else LEFT
                c = (c0, c1, c2)[t]
            elif c0 < c1 and c0 < c2:
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
    path, total = reference_dtw(1.0 - reference_unit_rows(a) @ reference_unit_rows(b).T, dtype=np.float64)
    return total / path.shape[1]
