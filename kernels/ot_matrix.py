"""Entropic OT similarity of every utterance of one language against every utterance of another (``kernels.ot``).

A vmapped Sinkhorn ``while_loop`` runs every pair of a batch until the slowest pair stops, and iteration counts of
real pairs are heavy-tailed. So pairs are solved in rounds of at most ``ROUND_ITERATIONS``: each round is one jitted
vmap per chunk of the pairs still running (in the first, one chunk per worker), warm-started from the potentials
where the last round left them, and converged pairs leave; inside a round, a chunk's pairs run in groups of
``GROUP_CELLS`` kernel cells, one after the other, so that a group's kernels stay in cache across its iterations.
The fixed point is that of an uninterrupted run; scores agree with one within 2 x threshold (ott's returned
potentials are not bit for bit its loop state). A batch then costs about its pairs' own iterations, not its slowest
pair's. The cost matrices are computed once and kept across rounds: where the grid fits in COST_CELLS, as one
product of the valid frames alone, from which each round cuts its pairs' windows (``_packed_grid``); else by blocks
of pairs, as tiles of the grid (one matrix product per tile). Where ``kernel_mode(config)`` Sinkhorn runs in kernel
(scaling) mode on the kernel exp(-C / epsilon), computed once per round (``kernels.ot_scaling``): an iteration is
two batched mat-vecs, whose products also give both marginals' errors, instead of log-sum-exps over every cell; the
same iterates in exact arithmetic. Pairs whose scalings leave float32 range are finished in the log domain and
flagged (``OtResult.fallback``). On CPU, chunks run on every core (``kernels._cpu``).

Shapes: A: f32|bf16[N, m, embed], len_A: i32[N]; B: [M, n, embed], len_B: i32[M]; results f32[N, M].
Measurements: ``bench/RESULTS.md``, sections "OT measure (kernels/ot.py) against POT" and "OT measure: design notes
(one-off measurements)" (rounds, cost tiles, kernel mode).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels._cpu import cpu_workers, on_cores
from kernels.frames import check_grid, frame_mask, leading, matmul_f32, normalize_frames, take_rows, unit_rows
from kernels.ot import OVER_RELAXATION, OtResult, kernel_mode, reference_ot_cost, solve_cost
from kernels.ot_scaling import scaling_sinkhorn

# Iterations per round of ot_similarity_matrix: a round wastes at most this many iterations on a pair of a chunk
from kernels.settings import DEFAULT_OT, OtConfig

# whose partners stopped earlier; shorter rounds mean more jitted calls (and cost matrices recomputed per round).
ROUND_ITERATIONS = 50
# Kernel cells of the pairs one round solves together (vmapped), 512 KiB of float32 (4 pairs of 150 x 190 frames):
# a chunk's groups run one after the other, so a group's kernels stay in a core's L2 (1 MiB here) across its
# iterations. A whole chunk vmapped (up to TILE_CELLS) streamed every kernel from L3 or memory at each mat-vec;
# groups also stop as their own pairs converge, not the chunk's slowest (bench/RESULTS.md, OT design notes).
GROUP_CELLS = 2**17
TILE_CELLS = 2**22  # cost-matrix cells of one chunk of utterance pairs: 16 MiB of float32 (~2 pairs of 1500 frames)
COST_CELLS = 2**25  # cost matrices kept between rounds, float32 (128 MiB): pairs per block of rounds
PACK_FRAMES = 128  # _packed_grid pads each side's valid frames to a multiple of this: few compiled shapes
# Cost windows and potentials are m x n frames with m, n the longest lengths rounded up to a multiple of this (the
# extra frames weigh 0, as padding does): rows of whole 32-byte vectors. Kernel-mode Sinkhorn on 150 x 150 windows
# took 1.08-1.24x as long as on 152 x 152, same pairs, same iterates; 160 x 160 (16) fell between, its extra cells
# costing what the alignment gained (bench/RESULTS.md, OT).
WINDOW_FRAMES = 8

log = logging.getLogger(__name__)


@jax.jit
def _pair_costs(X, Y, ix, iy):
    """f32[p, m, n]: the costs 1 - cos of the pairs (X[ix[p]], Y[iy[p]]) of unit frames (1 on padding)."""
    return 1.0 - jnp.einsum("pme,pne->pmn", X[ix], Y[iy])


@jax.jit
def _grid_costs(X, Y, rows, cols):
    """f32[r * c, m, n]: the costs of every pair of X[rows] x Y[cols] (r, c indices), row-major: one matrix
    product, faster per pair than a batch of per-pair products (bench/RESULTS.md, OT design notes)."""
    cost = 1.0 - jnp.einsum("ume,vne->uvmn", X[rows], Y[cols])
    return cost.reshape(-1, X.shape[1], Y.shape[1])


@jax.jit
def _packed_cosines(X, Y, at_x, at_y):
    """f32[r, c]: the cosines of the frames X.reshape(-1, embed)[at_x] against Y's [at_y], r and c indices of valid
    frames of the states X, Y as given (normalised here: only the frames multiplied), in one matrix product.
    Cosines, not costs: 1 - cos is taken in the rounds, fused with cutting the windows, not in a pass of its own."""

    def unit(Z, at):
        # As _unit_frames then float32: unit in float32, rounded to the states' dtype (bf16 stays bf16-exact).
        return unit_rows(Z.reshape(-1, Z.shape[-1])[at].astype(jnp.float32)).astype(Z.dtype).astype(jnp.float32)

    return matmul_f32(unit(X, at_x), unit(Y, at_y))


def _packed_grid(X, len_X: np.ndarray, Y, len_Y: np.ndarray, ix: np.ndarray, iy: np.ndarray, m: int, n: int):
    """The cost matrices of the pairs (X[ix[p]], Y[iy[p]]) as windows of one product of the valid frames alone:
    (cosines f32[r, c], row offsets i32[p], column offsets i32[p]), each pair's m x n window at its offsets (m, n at
    least the longest lengths); or None
    where the pairs do not fill most of a grid (the self terms of the debiased divergence) or the product would
    exceed COST_CELLS. Padded frames, 41-47% of the padded product's FLOPs on random and demo-store grids, are not
    multiplied, and one large product runs at 2-3x the rate of the per-tile products (bench/RESULTS.md, OT)."""
    us, vs = np.unique(ix), np.unique(iy)
    if len(us) * len(vs) > 2 * len(ix):
        return None
    rows, cols = _packed_frames(len_X, X.shape[1], m, us), _packed_frames(len_Y, Y.shape[1], n, vs)
    if len(rows[0]) * len(cols[0]) > COST_CELLS:
        return None
    at_x, at_y, offsets_x, offsets_y = jax.device_put((rows[0], cols[0], rows[1][ix], cols[1][iy]))
    return _packed_cosines(X, Y, at_x, at_y), offsets_x, offsets_y


def _packed_frames(
    lengths: np.ndarray, frames: int, window: int, utterances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the valid frames of ``utterances`` in states of ``frames`` frames, the longest utterance
    last, padded with a valid frame to a multiple of PACK_FRAMES (few compiled shapes) and to at least ``window``
    from the last one's start; offset of each utterance's first frame in them, -1 for utterances not listed). So
    every ``window``-long window from an utterance's offset lies inside: ``lax.dynamic_slice`` never clamps (shifts)
    one, and no padded copy is needed."""
    last = utterances[np.argmax(lengths[utterances])]
    order = np.append(utterances[utterances != last], last)
    at = np.concatenate([u * frames + np.arange(lengths[u]) for u in order])
    total = max(len(at), len(at) - lengths[order[-1]] + window)
    at = np.concatenate([at, np.full(total - len(at) + (-total % PACK_FRAMES), at[0])]).astype(np.int32)
    offset = np.full(len(lengths), -1, np.int32)
    offset[order] = np.concatenate([[0], np.cumsum(lengths[order])[:-1]])
    return at, offset


def _block_costs(X, Y, ix: np.ndarray, iy: np.ndarray, workers: int) -> jax.Array:
    """f32[p, m, n]: the cost matrices of the pairs (X[ix[p]], Y[iy[p]]), by chunks of at most TILE_CELLS cells on
    the workers. Where the pairs fill most of a grid (ot_similarity_matrix), tiles of that grid, else pair by pair
    (the self terms of the debiased divergence)."""
    m, n = X.shape[1], Y.shape[1]
    most = max(1, TILE_CELLS // (m * n))
    us, at_u = np.unique(ix, return_inverse=True)
    vs, at_v = np.unique(iy, return_inverse=True)
    if len(us) * len(vs) > 2 * len(ix):
        size = _chunk_size(len(ix), most, workers)

        def pairs(chunk):
            full = _padded(chunk, size)
            return leading(_pair_costs(X, Y, *jax.device_put((ix[full], iy[full]))), (len(chunk),))

        parts = on_cores(pairs, _chunks(np.arange(len(ix)), size), workers)
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    cc = min(len(vs), most)  # a tile: rr rows x cc columns of the grid us x vs
    rr = max(1, min(len(us), most // cc, -(-len(us) * len(vs) // (workers * cc))))
    # A divisor of the rows, if one is at least half as large, leaves no padded tile (and no gather below).
    rr = max([d for d in range(-(-rr // 2), rr + 1) if len(us) % d == 0] or [rr])
    tiles = [(r, c) for r in range(0, len(us), rr) for c in range(0, len(vs), cc)]

    def tile(rc):
        r, c = rc
        rows, cols = (
            us[_padded(np.arange(r, min(r + rr, len(us))), rr)],
            vs[_padded(np.arange(c, min(c + cc, len(vs))), cc)],
        )
        return _grid_costs(X, Y, *jax.device_put((rows, cols)))

    flat = jnp.concatenate(on_cores(tile, tiles, min(workers, len(tiles))))
    col_tiles = -(-len(vs) // cc)
    position = ((at_u // rr) * col_tiles + at_v // cc) * (rr * cc) + (at_u % rr) * cc + at_v % cc
    if len(position) == flat.shape[0] and np.array_equal(position, np.arange(len(position))):
        return flat  # the pairs are the grid in row-major order (ot_similarity_matrix), tiles without padding
    return take_rows(flat, jax.device_put(position))  # compiled: an eager gather sends a scalar to the device


@functools.partial(jax.jit, static_argnames=("config", "iterations", "kernel"))
def _round(cost, rows, len_x, len_y, f, g, *, config: OtConfig, iterations: int, kernel: bool):
    """At most ``iterations`` Sinkhorn iterations (in kernel mode if ``kernel``) of the pairs ``rows`` of the cost
    matrices ``cost``: f32[q, m, n], or ``_packed_grid``'s (cosines, row offsets i32[q], column offsets i32[q]); with
    valid frames len_x, len_y: i32[p], from potentials f: f32[p, m], g: f32[p, n]. Returns (W, converged, failed, f,
    g), [p] each but the potentials; ``failed``: a non-finite cost or potential on a valid frame, which more
    iterations will not mend (in kernel mode: scalings out of float32 range)."""
    m, n = f.shape[1], g.shape[1]

    def matrices(rows, len_x, len_y):
        if not isinstance(cost, tuple):
            return cost[rows]
        cosines, at_x, at_y = cost
        windows = jax.vmap(lambda i, j: lax.dynamic_slice(cosines, (i, j), (m, n)))(at_x[rows], at_y[rows])
        # Past a pair's lengths a window holds the next utterances' frames: cost 1, as zero padding frames have.
        valid = (jnp.arange(m)[:, None] < len_x[:, None, None]) & (jnp.arange(n) < len_y[:, None, None])
        return jnp.where(valid, 1.0 - windows, 1.0)

    def one(c, len_x, len_y, f, g):
        out = solve_cost(c, len_x, len_y, config, iterations, (f, g))
        return out.primal_cost, out.converged, out.f, out.g

    def scaling(c, len_x, len_y, f, g):
        eps = config.epsilon
        a = jax.vmap(frame_mask, (None, 0))(c.shape[1], len_x) / len_x[:, None]
        b = jax.vmap(frame_mask, (None, 0))(c.shape[2], len_y) / len_y[:, None]
        u, v = jnp.exp(f / eps), jnp.exp(g / eps)  # 0 on padding's -inf
        w, converged, u, v, _ = scaling_sinkhorn(
            jnp.exp(-c / eps), c, a, b, u, v, threshold=config.threshold, iterations=iterations, weight=OVER_RELAXATION
        )
        return w, converged, eps * jnp.log(u), eps * jnp.log(v)

    def group(args):
        rows, len_x, len_y, f, g = args
        c = matrices(rows, len_x, len_y)
        w, converged, f, g = scaling(c, len_x, len_y, f, g) if kernel else jax.vmap(one)(c, len_x, len_y, f, g)
        valid_f = jnp.arange(c.shape[1])[None, :] < len_x[:, None]
        valid_g = jnp.arange(c.shape[2])[None, :] < len_y[:, None]
        finite = jnp.isfinite(w) & jnp.all(jnp.isfinite(f) | ~valid_f, 1) & jnp.all(jnp.isfinite(g) | ~valid_g, 1)
        return w, converged & finite, ~finite, f, g

    pairs = rows.shape[0]
    size = _group_size(pairs, m * n)
    grouped = [x.reshape(pairs // size, size, *x.shape[1:]) for x in (rows, len_x, len_y, f, g)]
    return [x.reshape(pairs, *x.shape[2:]) for x in lax.map(group, grouped)]


def _group_size(pairs: int, cells: int) -> int:
    """Pairs solved together inside a round: the largest power of 2 dividing ``pairs`` whose kernels fit in
    ``GROUP_CELLS``."""
    size = 1
    while pairs % (2 * size) == 0 and 2 * size * cells <= GROUP_CELLS:
        size *= 2
    return size


def _initial_potentials(lengths: np.ndarray, frames: int) -> np.ndarray:
    """ott's default start in the log domain: 0 on valid frames, -inf on the zero-weight padding."""
    return np.where(np.arange(frames)[None, :] < lengths[:, None], 0.0, -np.inf).astype(np.float32)


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[k : k + size] for k in range(0, len(rows), size)]


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """rows padded to ``size`` with a repeat of the first: one compiled shape per chunk size."""
    return np.concatenate([rows, np.full(size - len(rows), rows[0])])


def _exact_chunks(rows: np.ndarray, most: int, workers: int) -> list[np.ndarray]:
    """rows in chunks whose sizes are powers of 4 <= most (few compiled shapes) and add up to len(rows): an equal
    share per worker, each share cut greedily (72 -> 64 + 4 + 4), largest chunks first so that the pool's workers
    finish together. Padding every chunk to one size instead wasted up to half the solves of a round, and left one
    worker alone with the last chunk (144 pairs on 2 workers: 3 chunks of 64)."""
    share = max(1, -(-len(rows) // workers))
    out = []
    for start in range(0, len(rows), share):
        part = rows[start : start + share]
        while len(part):
            size = 4 ** int(np.log(min(most, len(part))) / np.log(4) + 1e-9)
            out.append(part[:size])
            part = part[size:]
    return sorted(out, key=len, reverse=True)


def _round_chunks(rows: np.ndarray, most: int, workers: int, *, first: bool) -> list[np.ndarray]:
    """The chunks of a round: in the first, one per worker (an equal share of the block's pairs: one dispatch, one
    host transfer per worker; the first round's size is the grid's, so this compiles once per grid shape); in later
    rounds, whose sizes vary with the data, ``_exact_chunks`` (powers of 4: few compiled shapes)."""
    if not first:
        return _exact_chunks(rows, most, workers)
    return [part for part in np.array_split(rows, workers) if len(part)]


def _group_quantum(cells: int) -> int:
    """Chunks are padded to a multiple of this (at most 16 pairs), so that ``_round`` can group their pairs in
    ``GROUP_CELLS``: a chunk of an odd size would run its pairs one at a time."""
    size = 1
    while size < 16 and 2 * size * cells <= GROUP_CELLS:
        size *= 2
    return size


def _chunk_size(pairs: int, most: int, workers: int) -> int:
    """The largest power of 4 <= most that gives every worker a chunk (powers of 4: few compilations)."""
    return 4 ** int(np.log(min(most, -(-pairs // workers))) / np.log(4) + 1e-9)


def _solve_pairs(X, len_X, Y, len_Y, ix: np.ndarray, iy: np.ndarray, config: OtConfig, workers: int):
    """(W f32[p], converged bool[p], fallback bool[p]) of the pairs (X[ix[p]], Y[iy[p]]) of states X, Y (any float
    dtype, padding anything), in rounds (module docstring); in kernel mode where ``kernel_mode(config)``, pairs that
    fail there go on in the log domain."""
    len_X_np, len_Y_np = np.asarray(len_X), np.asarray(len_Y)
    # Windows (packed) or states (tiles) of m x n frames: the longest lengths, rounded up to WINDOW_FRAMES.
    m, n = (-(-int(lengths.max()) // WINDOW_FRAMES) * WINDOW_FRAMES for lengths in (len_X_np, len_Y_np))
    cost, converged = np.full(len(ix), np.nan, np.float32), np.zeros(len(ix), bool)
    fallback = np.zeros(len(ix), bool)
    most = max(1, TILE_CELLS // (m * n))
    packed = _packed_grid(X, len_X_np, Y, len_Y_np, ix, iy, m, n)
    if not packed:
        # Sinkhorn runs in float32 whatever the states' dtype: bf16 potentials would not reach the threshold.
        X = _unit_frames(X, jax.device_put(len_X_np), m)
        Y = X if Y is X else _unit_frames(Y, jax.device_put(len_Y_np), n)
    block = len(ix) if packed else max(most * workers, COST_CELLS // (m * n))
    for start in range(0, len(ix), block):
        pairs = np.arange(start, min(start + block, len(ix)))
        len_x, len_y = len_X_np[ix[pairs]], len_Y_np[iy[pairs]]
        # The block's cost matrices, once: a round then starts from them (an exp per cell in kernel mode).
        costs = packed or _block_costs(X, Y, ix[pairs], iy[pairs], workers)
        todo = np.arange(len(pairs))  # rows of the block still running
        f, g = _initial_potentials(len_x, m), _initial_potentials(len_y, n)
        used = 0
        while len(todo) and used < config.max_iterations:
            iterations = min(ROUND_ITERATIONS, config.max_iterations - used)
            kernel = kernel_mode(config) & ~fallback[pairs[todo]]
            # A chunk holds pairs of one mode; ``at`` indexes todo, f and g.
            chunks = [
                (at, mode)
                for mode in (True, False)
                for at in _round_chunks(np.flatnonzero(kernel == mode), most, workers, first=not used)
            ]

            # A worker's share in the first round, padded so that its pairs run in groups.
            pad = 1 if used else _group_quantum(m * n)

            def run(chunk, todo=todo, f=f, g=g, iterations=iterations, costs=costs, len_x=len_x, len_y=len_y, pad=pad):
                at, mode = chunk
                at = _padded(at, -(-len(at) // pad) * pad)
                rows = todo[at]
                return _round(
                    costs, *jax.device_put((rows, len_x[rows], len_y[rows], f[at], g[at])),
                    config=config, iterations=iterations, kernel=mode,
                )  # fmt: skip

            parts = on_cores(run, chunks, min(workers, len(chunks)))
            order = np.concatenate([at for at, _ in chunks])
            out = [
                np.concatenate([np.asarray(p[k])[: len(at)] for p, (at, _) in zip(parts, chunks, strict=True)])
                for k in range(5)
            ]
            round_cost, round_converged, failed, round_f, round_g = out
            # Pairs that fail in kernel mode go on in the log domain from where this round started.
            retry = failed & kernel[order]
            round_f[retry], round_g[retry] = f[order[retry]], g[order[retry]]
            todo, f, g = todo[order], round_f, round_g
            fallback[pairs[todo[retry]]] = True
            cost[pairs[todo]], converged[pairs[todo]] = round_cost, round_converged
            used += iterations
            keep = ~(round_converged | (failed & ~retry))
            todo, f, g = todo[keep], f[keep], g[keep]
    if fallback.any():
        log.warning(
            "ot: %d of %d pairs left float32 range in kernel mode and were solved in the log domain",
            fallback.sum(),
            len(ix),
        )
    return cost, converged, fallback


@functools.partial(jax.jit, static_argnames="frames")
def _unit_frames(X, lengths, frames: int):
    """f32[utterance, frames, embed]: X cropped or zero-padded to ``frames`` frames, valid frames unit, padding zero
    (in one call: a crop of its own copied the states, ~1 ms a call on the bench's grid)."""
    X = jnp.pad(X[:, :frames], ((0, 0), (0, max(0, frames - X.shape[1])), (0, 0)))
    return jax.vmap(normalize_frames)(X, lengths).astype(jnp.float32)


def ot_similarity_matrix(
    A: jax.Array, len_A: jax.Array, B: jax.Array, len_B: jax.Array, config: OtConfig = DEFAULT_OT, *, workers=None
) -> OtResult:
    """OT similarity of every utterance of A against every utterance of B: OtResult of f32[N, M] (bool converged,
    fallback), NumPy arrays on the host: the rounds finish there, and a device copy only to be read back cost
    four transfers a call.

    A: f32|bf16[N, m, embed], len_A: i32[N]; B: [M, n, embed], len_B: i32[M]; lengths in 1..frames. Frames past the
    longest length are cropped (cost windows: to a multiple of ``WINDOW_FRAMES``). Pairs run in rounds of at most
    ``ROUND_ITERATIONS`` iterations (module docstring), each a jitted vmap over chunks (one per worker in the first
    round, then of at most ``TILE_CELLS`` cost cells), on blocks of at most ``COST_CELLS`` cost cells computed once
    (memory stays bounded for 1500-frame utterances), in kernel mode where ``kernel_mode(config)``; on CPU, chunks
    run on every core (``workers``, default the process's cores). Results do not depend on the chunking or the
    workers; the rounds move them by less than 2 x threshold. With ``debiased``, the self terms W(a, a), W(b, b) are
    solved once per utterance, not once per pair.
    """
    A, B, n_a, n_b = check_grid(A, B, len_A, len_B)
    if not n_a or not n_b:
        empty = np.zeros((n_a, n_b), np.float32)
        return OtResult(empty, empty, np.ones((n_a, n_b), bool), np.zeros((n_a, n_b), bool))
    # Not cropped here to the longest lengths: _solve_pairs crops where it needs to (a crop copies the states).
    len_A, len_B = np.asarray(len_A, np.int32), np.asarray(len_B, np.int32)
    if workers is None:
        workers = cpu_workers() if jax.default_backend() == "cpu" else 1
    ia, ib = np.repeat(np.arange(n_a), n_b), np.tile(np.arange(n_b), n_a)
    cost, converged, fallback = _solve_pairs(A, len_A, B, len_B, ia, ib, config, workers)
    cost, converged, fallback = cost.reshape(n_a, n_b), converged.reshape(n_a, n_b), fallback.reshape(n_a, n_b)
    score = 1.0 - cost
    if config.debiased:
        cost_aa, conv_aa, back_aa = _solve_pairs(A, len_A, A, len_A, np.arange(n_a), np.arange(n_a), config, workers)
        cost_bb, conv_bb, back_bb = _solve_pairs(B, len_B, B, len_B, np.arange(n_b), np.arange(n_b), config, workers)
        score = 1.0 - (cost - 0.5 * (cost_aa[:, None] + cost_bb[None, :]))
        converged = converged & conv_aa[:, None] & conv_bb[None, :]
        fallback = fallback | back_aa[:, None] | back_bb[None, :]
    return OtResult(score, cost, converged, fallback)


# ----------------------------------------------------------------------------------------------------------------
# Reference: a double loop over pairs of kernels.ot's float64 NumPy Sinkhorn.


def reference_ot_similarity_matrix(A, len_A, B, len_B, config: OtConfig = DEFAULT_OT) -> np.ndarray:
    """ot_similarity_matrix's score by a double loop over pairs, f64[N, M]."""
    eps = config.epsilon
    self_a = [reference_ot_cost(a, a, la, la, eps) if config.debiased else 0.0 for a, la in zip(A, len_A, strict=True)]
    self_b = [reference_ot_cost(b, b, lb, lb, eps) if config.debiased else 0.0 for b, lb in zip(B, len_B, strict=True)]
    out = np.zeros((len(A), len(B)))
    for i, (a, la) in enumerate(zip(A, len_A, strict=True)):
        for j, (b, lb) in enumerate(zip(B, len_B, strict=True)):
            out[i, j] = 1.0 - (reference_ot_cost(a, b, la, lb, eps) - 0.5 * (self_a[i] + self_b[j]))
    return out
