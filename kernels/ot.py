"""Entropic optimal transport (OT) between the frames of two utterances: a soft alignment and a similarity.

For utterances ``a`` (valid frames a_1..a_m) and ``b`` (valid frames b_1..b_n), with uniform weights ``1/m`` and
``1/n`` on the valid frames and the cosine cost ``C_ij = 1 - cos(a_i, b_j)`` (in [0, 2])::

    P      = argmin_{P 1 = 1/m, P^T 1 = 1/n}  <P, C> - epsilon H(P)      (Sinkhorn, ott-jax)
    W(a,b) = <P, C>                                                     (transport cost of the entropic plan)
    score  = 1 - W(a, b)                                                (in [-1, 1], like SeqSim)
    debiased score = 1 - (W(a,b) - W(a,a)/2 - W(b,b)/2)                 (Sinkhorn divergence, 1 for a == b)

``W`` is the bare transport cost of the entropic plan, what POT's ``ot.sinkhorn2`` returns and what its
``empirical_sinkhorn_divergence`` debiases (Genevay et al. 2018), not ott's ``reg_ot_cost``, which adds the
entropy term (Feydy et al. 2019): scores stay on the cosine scale of SeqSim and the pooled baselines.

``epsilon`` is absolute, in the units of the cost ``1 - cos``: not relative to the mean cost, so one epsilon
means the same blur at every layer. On whisper-base frames of the demo store, costs between utterances of two
languages sit around 0.1 (layer 0) to 0.4 (layer 7); ``OT_EPSILON = 0.05`` gives a plan that still picks a few
partners per frame and converges in 40 to 130 iterations (median; at most ~700) there; 0.01 is sharper and
needs ~4x the iterations.

Glossary (axis names as in ``engine.axes``): ``frame`` is an encoder frame, ``embed`` the model width,
``utterance`` one utterance of one language; ``N``/``M`` count the utterances of the two languages, ``m``/``n``
their padded frame counts.

Conventions, as in ``kernels.seqsim``: frames at index ``>= length`` are padding and may hold anything (NaN, inf):
they are zeroed by ``normalize_frames`` and get zero weight, so their rows and columns of the plan are exactly 0.
Lengths must be ``>= 1``.

Convergence: Sinkhorn stops when the L1 error of the row marginal, ``sum_i |(P 1)_i - 1/m|``, falls below
``threshold`` (checked every ``INNER_ITERATIONS``), or after ``max_iterations``; ``converged`` is ott's flag
(False at the iteration limit or on NaN) and false also for a non-finite cost. Callers must not use the score of a
non-converged pair (``engine.pipelines.similarity.run`` writes NaN and lists the pair in the done marker). The
updates are
over-relaxed (ott's constant ``Momentum``, ``OVER_RELAXATION``): the same fixed point, reached in about half the
iterations on encoder states (demo store, layer 7: mean 104 -> 45 iterations at epsilon 0.05).

Speed (``ot_similarity_matrix``): a vmapped Sinkhorn ``while_loop`` runs every pair of a batch until the slowest
pair stops, and iteration counts of real pairs are heavy-tailed (demo store, layer 4: median 30, mean 43, max 1420).
So pairs are solved in rounds of at most ``ROUND_ITERATIONS``: each round is one jitted vmap per chunk of the pairs
still running, warm-started from the potentials where the last round left them, and converged pairs leave. The
fixed point is that of an uninterrupted run; scores agree with one within 2 x threshold (ott's returned potentials
are not bit for bit its loop state: 3e-6 apart in the test). A batch then costs about its pairs' own iterations, not
its slowest pair's. The cost matrices of a block of pairs are computed once, as tiles of the grid (one matrix
product per tile), and kept across rounds. At ``epsilon >= 2 / KERNEL_MAX_EXPONENT`` (the default 0.05) Sinkhorn
runs in kernel (scaling) mode on the kernel exp(-C / epsilon), computed once per round: an iteration is three
mat-vecs (two updates and the marginal check) instead of log-sum-exps over every cell, about 1/5 of the time (demo
store, layer 7); the same iterates in exact arithmetic, scores within 1.5e-6 of the log domain there. Pairs whose
scalings leave float32 range are finished in the log domain and flagged (``OtResult.fallback``; none on the demo store).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import costs, geometry, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, sinkhorn

from engine.errors import ShapeError
from kernels.dtw import _on_cores, cpu_workers
from kernels.seqsim import COS_EPS, check_lengths, frame_mask, normalize_frames

OT_EPSILON = 0.05  # entropic blur, in cost units (1 - cos, range [0, 2]); see the module docstring
# Default stopping threshold on the L1 row-marginal error. float32 sums of a plan of up to 1500 x 1500 entries
# carry rounding of ~1e-7 relative (~1e-6 in L1 at worst), so 1e-5 is reachable in float32 and keeps every
# marginal within 1e-5 of its weights; the similarity then moves by at most 2 * 1e-5 (costs are <= 2).
OT_THRESHOLD = 1e-5
OT_MAX_ITERATIONS = 2000  # the demo store's slowest pair at OT_EPSILON took ~700
INNER_ITERATIONS = 10  # Sinkhorn iterations between two convergence checks (ott's default)
# Over-relaxation weight of the potential updates (ott's constant Momentum; 1 is plain Sinkhorn, < 2 converges).
# On the demo store's states 1.3 / 1.6 cut the mean iterations from 104 to 60 / 45; 1.5 keeps a margin below 2.
OVER_RELAXATION = 1.5
# Iterations per round of ot_similarity_matrix: a round wastes at most this many iterations on a pair of a chunk
# whose partners stopped earlier; shorter rounds mean more jitted calls (and cost matrices recomputed per round).
ROUND_ITERATIONS = 50
TILE_CELLS = 2**22  # cost-matrix cells of one chunk of utterance pairs: 16 MiB of float32 (~2 pairs of 1500 frames)
COST_CELLS = 2**25  # cost matrices kept between rounds, float32 (128 MiB): pairs per block of rounds
# ot_similarity_matrix runs Sinkhorn in kernel (scaling) mode when every kernel entry exp(-C / epsilon) >=
# exp(-2 / epsilon) (cosine costs are <= 2) is at least exp(-KERNEL_MAX_EXPONENT) = 4e-18: a normal float32 with
# 10^20 of room for the scalings u, v and their over-relaxed powers. That holds from epsilon = 0.05 (the default) up;
# a smaller epsilon runs in the log domain. A pair whose scalings still leave float32 range falls back to the log
# domain (counted in OtResult.fallback).
KERNEL_MAX_EXPONENT = 40.0

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OtConfig:
    """Sinkhorn options: ``epsilon`` (absolute, cost units), the debiased divergence, the stopping rule."""

    epsilon: float = OT_EPSILON
    debiased: bool = False
    max_iterations: int = OT_MAX_ITERATIONS
    threshold: float = OT_THRESHOLD

    def __post_init__(self):
        if not self.epsilon > 0:
            raise ValueError(f"OT epsilon must be > 0 (in units of the cost 1 - cos), got {self.epsilon}")
        if not self.threshold > 0:
            raise ValueError(f"OT threshold must be > 0 (L1 marginal error), got {self.threshold}")
        if self.max_iterations < INNER_ITERATIONS:
            raise ValueError(
                f"OT max_iterations must be >= {INNER_ITERATIONS} (convergence is checked every "
                f"{INNER_ITERATIONS}), got {self.max_iterations}"
            )


def kernel_mode(config: OtConfig) -> bool:
    """Whether ``ot_similarity_matrix`` iterates on scalings with a precomputed kernel (``KERNEL_MAX_EXPONENT``)."""
    return 2.0 / config.epsilon <= KERNEL_MAX_EXPONENT


class OtResult(NamedTuple):
    """OT similarity: f32[] scalars for one pair, f32[N, M] / bool[N, M] for matrices.

    score: 1 - W (or 1 - the debiased divergence); cost: W(a, b); converged: every Sinkhorn solve behind the score
    met the threshold within max_iterations and gave a finite cost; fallback (``ot_similarity_matrix`` only, else
    None): a solve behind the score left float32 range in kernel mode and was finished in the log domain.
    """

    score: jax.Array
    cost: jax.Array
    converged: jax.Array
    fallback: jax.Array | None = None


@jax.tree_util.register_pytree_node_class
class _KernelGeometry(geometry.Geometry):
    """A geometry whose kernel exp(-C / epsilon) is computed once per solve, for kernel (scaling) mode.

    ott's ``Geometry.apply_kernel`` raises the kernel to the power ``epsilon / eps`` at every application (for
    epsilon schedules): an exp and a log per cell per mat-vec, which made kernel mode 3x slower than the log domain
    (demo store, layer 7). Here epsilon is fixed, the power is 1, and an application is a plain mat-vec: a Sinkhorn
    iteration costs about 1/5 of a log-domain one (0.40 vs 2.2 ns per cell, same 16 pairs, bench/RESULTS.md).
    """

    @property
    def kernel_matrix(self) -> jax.Array:
        return self._kernel_matrix

    def apply_kernel(self, vec: jax.Array, eps=None, axis: int = 0) -> jax.Array:
        return jnp.dot(self._kernel_matrix if axis == 1 else self._kernel_matrix.T, vec)


# ----------------------------------------------------------------------------------------------------------------
# One pair.


def _solver(config: OtConfig, iterations: int | None, kernel: bool) -> sinkhorn.Sinkhorn:
    return sinkhorn.Sinkhorn(
        lse_mode=not kernel,
        threshold=config.threshold,
        max_iterations=config.max_iterations if iterations is None else iterations,
        inner_iterations=INNER_ITERATIONS,
        momentum=acceleration.Momentum(value=OVER_RELAXATION),
    )


def _solve(a_unit, b_unit, len_a, len_b, config: OtConfig):
    """ott's Sinkhorn (log domain) on unit frames (zero padding) with uniform weights on the valid frames."""
    weight_a = frame_mask(a_unit.shape[0], len_a) / len_a
    weight_b = frame_mask(b_unit.shape[0], len_b) / len_b
    # Frames are already unit: Cosine's norms are 1 (its ridge, 1e-8, moves a cost by 1e-8) and 0 on padding,
    # whose cost 1 is finite and carries no weight.
    geom = pointcloud.PointCloud(a_unit, b_unit, cost_fn=costs.Cosine(), epsilon=config.epsilon)
    return _solver(config, None, kernel=False)(linear_problem.LinearProblem(geom, weight_a, weight_b))


def _solve_cost(cost, len_a, len_b, config: OtConfig, iterations: int, init, kernel: bool):
    """ott's Sinkhorn on a cost matrix f32[m, n] (1 - cos of unit frames, 1 on padding) from potentials ``init``
    (f, g), for at most ``iterations``; in kernel (scaling) mode if ``kernel`` (only where ``kernel_mode(config)``).
    The output's potentials are ott's, f = epsilon log u, in either mode."""
    weight_a = frame_mask(cost.shape[0], len_a) / len_a
    weight_b = frame_mask(cost.shape[1], len_b) / len_b
    if kernel:
        geom = _KernelGeometry(cost, kernel_matrix=jnp.exp(-cost / config.epsilon), epsilon=config.epsilon)
        init = (jnp.exp(init[0] / config.epsilon), jnp.exp(init[1] / config.epsilon))  # u: 0 on padding's -inf
    else:
        geom = geometry.Geometry(cost, epsilon=config.epsilon)
    return _solver(config, iterations, kernel)(linear_problem.LinearProblem(geom, weight_a, weight_b), init=init)


def _transport_cost(a_unit, b_unit, len_a, len_b, config: OtConfig) -> tuple[jax.Array, jax.Array]:
    """(W = <P, C>: f32[], converged: bool[]) for unit frames."""
    out = _solve(a_unit, b_unit, len_a, len_b, config)
    cost = out.primal_cost
    return cost, out.converged & jnp.isfinite(cost)


def ot_plan(a: jax.Array, b: jax.Array, len_a, len_b, config: OtConfig = OtConfig()) -> tuple[jax.Array, jax.Array]:
    """The entropic transport plan of one pair of padded utterances.

    a: f32[frames_a, embed]; b: f32[frames_b, embed]; len_a, len_b: i32[] valid frames, >= 1.
    Returns (plan f32[frames_a, frames_b]: rows sum to 1/len_a, columns to 1/len_b on valid frames, exactly 0 on
    padding; converged bool[]).
    """
    out = _solve(normalize_frames(a, len_a), normalize_frames(b, len_b), len_a, len_b, config)
    return out.matrix, out.converged


def ot_similarity(a: jax.Array, b: jax.Array, len_a, len_b, config: OtConfig = OtConfig()) -> OtResult:
    """OT similarity of one pair of padded utterances (shapes as ``ot_plan``); OtResult of scalars. With
    ``config.debiased`` it solves three problems (a-b, a-a, b-b)."""
    a_unit, b_unit = normalize_frames(a, len_a), normalize_frames(b, len_b)
    cost, converged = _transport_cost(a_unit, b_unit, len_a, len_b, config)
    score = 1.0 - cost
    if config.debiased:
        cost_aa, conv_aa = _transport_cost(a_unit, a_unit, len_a, len_a, config)
        cost_bb, conv_bb = _transport_cost(b_unit, b_unit, len_b, len_b, config)
        score = 1.0 - (cost - 0.5 * (cost_aa + cost_bb))
        converged = converged & conv_aa & conv_bb
    return OtResult(score, cost, converged)


# OT similarity of aligned pairs: a: [pair, frames_a, embed], b: [pair, frames_b, embed], lengths i32[pair].
ot_similarity_pairs = jax.jit(jax.vmap(ot_similarity, in_axes=(0, 0, 0, 0, None)), static_argnums=4)


# ----------------------------------------------------------------------------------------------------------------
# All pairs, by tiles.


@jax.jit
def _pair_costs(X, Y, ix, iy):
    """f32[p, m, n]: the costs 1 - cos of the pairs (X[ix[p]], Y[iy[p]]) of unit frames (1 on padding)."""
    return 1.0 - jnp.einsum("pme,pne->pmn", X[ix], Y[iy])


@jax.jit
def _grid_costs(X, Y, rows, cols):
    """f32[r * c, m, n]: the costs of every pair of X[rows] x Y[cols] (r, c indices), row-major: one matrix
    product, 2-4x faster per pair than a batch of per-pair products (demo store, 2 cores)."""
    cost = 1.0 - jnp.einsum("ume,vne->uvmn", X[rows], Y[cols])
    return cost.reshape(-1, X.shape[1], Y.shape[1])


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
            return _pair_costs(X, Y, ix[full], iy[full])[: len(chunk)]

        parts = _on_cores(pairs, _chunks(np.arange(len(ix)), size), workers)
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    cc = min(len(vs), most)  # a tile: rr rows x cc columns of the grid us x vs
    rr = max(1, min(len(us), most // cc, -(-len(us) * len(vs) // (workers * cc))))
    # A divisor of the rows, if one is at least half as large, leaves no padded tile (and no gather below).
    rr = max([d for d in range(-(-rr // 2), rr + 1) if len(us) % d == 0] or [rr])
    tiles = [(r, c) for r in range(0, len(us), rr) for c in range(0, len(vs), cc)]

    def tile(rc):
        r, c = rc
        return _grid_costs(X, Y, us[_padded(np.arange(r, min(r + rr, len(us))), rr)],
                           vs[_padded(np.arange(c, min(c + cc, len(vs))), cc)])  # fmt: skip

    flat = jnp.concatenate(_on_cores(tile, tiles, min(workers, len(tiles))))
    col_tiles = -(-len(vs) // cc)
    position = ((at_u // rr) * col_tiles + at_v // cc) * (rr * cc) + (at_u % rr) * cc + at_v % cc
    if len(position) == flat.shape[0] and np.array_equal(position, np.arange(len(position))):
        return flat  # the pairs are the grid in row-major order (ot_similarity_matrix), tiles without padding
    return flat[position]


@functools.partial(jax.jit, static_argnames=("config", "iterations", "kernel"))
def _round(cost, rows, len_x, len_y, f, g, *, config: OtConfig, iterations: int, kernel: bool):
    """At most ``iterations`` Sinkhorn iterations (in kernel mode if ``kernel``) of the pairs ``rows`` of the cost
    matrices ``cost`` f32[q, m, n], with valid frames len_x, len_y: i32[p], from potentials f: f32[p, m],
    g: f32[p, n]. Returns (W, converged, failed, f, g), [p] each but the potentials; ``failed``: a non-finite cost or
    potential on a valid frame, which more iterations will not mend (in kernel mode: scalings out of float32 range)."""

    def one(c, len_x, len_y, f, g):
        out = _solve_cost(c, len_x, len_y, config, iterations, (f, g), kernel)
        w = out.primal_cost
        valid_f, valid_g = frame_mask(c.shape[0], len_x), frame_mask(c.shape[1], len_y)
        finite = jnp.isfinite(w) & jnp.all(jnp.isfinite(out.f) | ~valid_f) & jnp.all(jnp.isfinite(out.g) | ~valid_g)
        return w, out.converged & finite, ~finite, out.f, out.g

    return jax.vmap(one)(cost[rows], len_x, len_y, f, g)


def _initial_potentials(lengths: np.ndarray, frames: int) -> np.ndarray:
    """ott's default start in the log domain: 0 on valid frames, -inf on the zero-weight padding."""
    return np.where(np.arange(frames)[None, :] < lengths[:, None], 0.0, -np.inf).astype(np.float32)


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[k : k + size] for k in range(0, len(rows), size)]


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """rows padded to ``size`` with a repeat of the first: one compiled shape per chunk size."""
    return np.concatenate([rows, np.full(size - len(rows), rows[0])])


def _chunk_size(pairs: int, most: int, workers: int) -> int:
    """The largest power of 4 <= most that gives every worker a chunk (powers of 4: few compilations)."""
    return 4 ** int(np.log(min(most, -(-pairs // workers))) / np.log(4) + 1e-9)


def _solve_pairs(X, len_X, Y, len_Y, ix: np.ndarray, iy: np.ndarray, config: OtConfig, workers: int):
    """(W f32[p], converged bool[p], fallback bool[p]) of the pairs (X[ix[p]], Y[iy[p]]), in rounds (module
    docstring); in kernel mode where ``kernel_mode(config)``, pairs that fail there go on in the log domain."""
    m, n = X.shape[1], Y.shape[1]
    len_X_np, len_Y_np = np.asarray(len_X), np.asarray(len_Y)
    cost, converged = np.full(len(ix), np.nan, np.float32), np.zeros(len(ix), bool)
    fallback = np.zeros(len(ix), bool)
    most = max(1, TILE_CELLS // (m * n))
    block = max(most * workers, COST_CELLS // (m * n))
    for start in range(0, len(ix), block):
        pairs = np.arange(start, min(start + block, len(ix)))
        len_x, len_y = len_X_np[ix[pairs]], len_Y_np[iy[pairs]]
        # The block's cost matrices, once: a round then starts from them (an exp per cell in kernel mode).
        costs = _block_costs(X, Y, ix[pairs], iy[pairs], workers)
        todo = np.arange(len(pairs))  # rows of the block still running
        f, g = _initial_potentials(len_x, m), _initial_potentials(len_y, n)
        used = 0
        while len(todo) and used < config.max_iterations:
            iterations = min(ROUND_ITERATIONS, config.max_iterations - used)
            kernel = kernel_mode(config) & ~fallback[pairs[todo]]
            size = _chunk_size(len(todo), most, workers)
            # A chunk holds pairs of one mode; ``at`` indexes todo, f and g.
            chunks = [(at, mode) for mode in (True, False) for at in _chunks(np.flatnonzero(kernel == mode), size)]

            def run(
                chunk, todo=todo, f=f, g=g, iterations=iterations, size=size, costs=costs, len_x=len_x, len_y=len_y
            ):
                at, mode = chunk
                full = _padded(at, size)
                rows = todo[full]
                return _round(
                    costs, rows, len_x[rows], len_y[rows], f[full], g[full],
                    config=config, iterations=iterations, kernel=mode,
                )  # fmt: skip

            parts = _on_cores(run, chunks, min(workers, len(chunks)))
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


_unit_frames = jax.jit(jax.vmap(normalize_frames))


def ot_similarity_matrix(
    A: jax.Array, len_A: jax.Array, B: jax.Array, len_B: jax.Array, config: OtConfig = OtConfig(), *, workers=None
) -> OtResult:
    """OT similarity of every utterance of A against every utterance of B: OtResult of f32[N, M] (bool converged,
    fallback).

    A: f32|bf16[N, m, embed], len_A: i32[N]; B: [M, n, embed], len_B: i32[M]; lengths in 1..frames. Frames past the
    longest length are cropped. Pairs run in rounds of at most ``ROUND_ITERATIONS`` iterations (module docstring),
    each a jitted vmap over chunks of at most ``TILE_CELLS`` cost cells, on blocks of at most ``COST_CELLS`` cost
    cells computed once (memory stays bounded for 1500-frame utterances), in kernel mode where
    ``kernel_mode(config)``; on CPU, chunks run on every core (``workers``, default the process's cores). Results do
    not depend on the chunking or the workers; the rounds move them by less than 2 x threshold. With ``debiased``,
    the self terms W(a, a), W(b, b) are solved once per utterance, not once per pair.
    """
    A, B = jnp.asarray(A), jnp.asarray(B)
    if A.ndim != 3 or B.ndim != 3 or A.shape[2] != B.shape[2]:
        raise ShapeError(f"A, B must be [utterance, frame, embed] with one embed size, got {A.shape}, {B.shape}")
    n_a, n_b = A.shape[0], B.shape[0]
    check_lengths("len_A", len_A, n_a, A.shape[1], "utterance")
    check_lengths("len_B", len_B, n_b, B.shape[1], "utterance")
    if not n_a or not n_b:
        empty = jnp.zeros((n_a, n_b), jnp.float32)
        return OtResult(empty, empty, jnp.ones((n_a, n_b), bool), jnp.zeros((n_a, n_b), bool))
    len_A, len_B = np.asarray(len_A, np.int32), np.asarray(len_B, np.int32)
    # Sinkhorn runs in float32 whatever the states' dtype: bf16 potentials would not reach the threshold.
    A = _unit_frames(A[:, : int(len_A.max())], jnp.asarray(len_A)).astype(jnp.float32)
    B = _unit_frames(B[:, : int(len_B.max())], jnp.asarray(len_B)).astype(jnp.float32)
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
    return OtResult(jnp.asarray(score), jnp.asarray(cost), jnp.asarray(converged), jnp.asarray(fallback))


# ----------------------------------------------------------------------------------------------------------------
# Reference: plain log-domain Sinkhorn in float64 NumPy, on the valid frames only.


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def reference_sinkhorn(
    weight_a: np.ndarray,
    weight_b: np.ndarray,
    cost: np.ndarray,
    epsilon: float,
    max_iterations=1_000_000,
    threshold=1e-8,
) -> tuple[np.ndarray, bool]:
    """Log-domain Sinkhorn, the textbook alternating updates of the dual potentials f, g.

    weight_a: [m] > 0, weight_b: [n] > 0 (each summing to 1), cost: [m, n]. Returns (plan f64[m, n], converged):
    stops when the L1 error of the row marginal is below ``threshold`` (columns are exact after each g update).
    The default 1e-8 moves W by at most 2e-8; tighter would take very long on self problems W(a, a), where plain
    Sinkhorn converges slowly (the potentials oscillate: 1e-8 after 10^4 iterations on some 9-frame utterances).
    """
    f, g = np.zeros(len(weight_a)), np.zeros(len(weight_b))
    log_a, log_b = np.log(weight_a), np.log(weight_b)
    for _ in range(max_iterations):
        f = epsilon * (log_a - _logsumexp((g[None, :] - cost) / epsilon, axis=1))
        g = epsilon * (log_b - _logsumexp((f[:, None] - cost) / epsilon, axis=0))
        plan = np.exp((f[:, None] + g[None, :] - cost) / epsilon)
        if np.abs(plan.sum(axis=1) - weight_a).sum() < threshold:
            return plan, True
    return plan, False


def _reference_unit(x: np.ndarray, length: int) -> np.ndarray:
    x = np.asarray(x[:length], np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COS_EPS)


def reference_ot_plan(a, b, len_a: int, len_b: int, epsilon: float = OT_EPSILON) -> np.ndarray:
    """f64[len_a, len_b]: the entropic plan of the valid frames with uniform weights and cost 1 - cos."""
    cost = 1.0 - _reference_unit(a, len_a) @ _reference_unit(b, len_b).T
    plan, converged = reference_sinkhorn(np.full(len_a, 1 / len_a), np.full(len_b, 1 / len_b), cost, epsilon)
    assert converged, "reference Sinkhorn did not converge: raise max_iterations or epsilon"
    return plan


def reference_ot_cost(a, b, len_a: int, len_b: int, epsilon: float = OT_EPSILON) -> float:
    """W(a, b) = <P, C> in float64."""
    cost = 1.0 - _reference_unit(a, len_a) @ _reference_unit(b, len_b).T
    return float(np.sum(reference_ot_plan(a, b, len_a, len_b, epsilon) * cost))


def reference_ot_similarity_matrix(A, len_A, B, len_B, config: OtConfig = OtConfig()) -> np.ndarray:
    """ot_similarity_matrix's score by a double loop over pairs, f64[N, M]."""
    eps = config.epsilon
    self_a = [reference_ot_cost(a, a, la, la, eps) if config.debiased else 0.0 for a, la in zip(A, len_A, strict=True)]
    self_b = [reference_ot_cost(b, b, lb, lb, eps) if config.debiased else 0.0 for b, lb in zip(B, len_B, strict=True)]
    out = np.zeros((len(A), len(B)))
    for i, (a, la) in enumerate(zip(A, len_A, strict=True)):
        for j, (b, lb) in enumerate(zip(B, len_B, strict=True)):
            out[i, j] = 1.0 - (reference_ot_cost(a, b, la, lb, eps) - 0.5 * (self_a[i] + self_b[j]))
    return out
