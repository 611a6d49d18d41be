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
means the same blur at every layer. ``OT_EPSILON`` keeps a plan that picks a few partners per frame on encoder
states and converges well within ``OT_MAX_ITERATIONS``; a smaller epsilon is sharper and needs more iterations.

Glossary (axis names as in ``engine.axes``): ``frame`` is an encoder frame, ``embed`` the model width,
``utterance`` one utterance of one language; ``N``/``M`` count the utterances of the two languages, ``m``/``n``
their padded frame counts.

Conventions, as in ``kernels.frames``: frames at index ``>= length`` are padding and may hold anything (NaN, inf):
they are zeroed by ``normalize_frames`` and get zero weight, so their rows and columns of the plan are exactly 0.
Lengths must be ``>= 1``.

Convergence: Sinkhorn stops when the L1 error of the row marginal, ``sum_i |(P 1)_i - 1/m|``, falls below
``threshold`` (checked every ``INNER_ITERATIONS``), or after ``max_iterations``; ``converged`` is ott's flag
(False at the iteration limit or on NaN) and false also for a non-finite cost. Callers must not use the score of a
non-converged pair (``engine.pipelines.seqsim.run`` writes NaN and lists the pair in the done marker). The
updates are over-relaxed (ott's constant ``Momentum``, ``OVER_RELAXATION``): the same fixed point in fewer
iterations. All pairs of two languages: ``kernels.ot_matrix``, which also runs Sinkhorn in kernel (scaling) mode
(``kernel_mode``, ``kernels.ot_scaling``: there both marginals must meet the threshold, checked every iteration).

Measurements: ``bench/RESULTS.md``, sections "OT measure (kernels/ot.py) against POT" and "OT measure: design notes
(one-off measurements)" (epsilon and iteration counts on the demo store, over-relaxation, kernel mode).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.frames import frame_mask, normalize_frames, reference_unit_rows
from kernels.settings import DEFAULT_OT, INNER_ITERATIONS, OT_EPSILON, OtConfig

# Over-relaxation weight of the potential updates (ott's constant Momentum; 1 is plain Sinkhorn, < 2 converges).
# Larger weights cut the iterations on encoder states (bench/RESULTS.md, OT notes); 1.5 keeps a margin below 2.
OVER_RELAXATION = 1.5
# ot_similarity_matrix runs Sinkhorn in kernel (scaling) mode when every kernel entry exp(-C / epsilon) >=
# exp(-2 / epsilon) (cosine costs are <= 2) is at least exp(-KERNEL_MAX_EXPONENT) = 4e-18: a normal float32 with
# 10^20 of room for the scalings u, v and their over-relaxed powers. That holds from epsilon = 0.05 (the default) up;
# a smaller epsilon runs in the log domain. A pair whose scalings still leave float32 range falls back to the log
# domain (counted in OtResult.fallback).
KERNEL_MAX_EXPONENT = 40.0


def kernel_mode(config: OtConfig) -> bool:
    """Whether ``ot_similarity_matrix`` iterates on scalings with a precomputed kernel (``KERNEL_MAX_EXPONENT``)."""
    return 2.0 / config.epsilon <= KERNEL_MAX_EXPONENT


class OtResult(NamedTuple):
    """OT similarity: f32[] scalars for one pair, f32[N, M] / bool[N, M] for matrices (``ot_similarity_matrix``:
    NumPy arrays, on the host where its rounds finish).

    score: 1 - W (or 1 - the debiased divergence); cost: W(a, b); converged: every Sinkhorn solve behind the score
    met the threshold within max_iterations and gave a finite cost; fallback (``ot_similarity_matrix`` only, else
    None): a solve behind the score left float32 range in kernel mode and was finished in the log domain.
    """

    score: jax.Array
    cost: jax.Array
    converged: jax.Array
    fallback: jax.Array | None = None


# ----------------------------------------------------------------------------------------------------------------
# One pair.


# ott-jax is imported by the functions that solve, not with this module: its import (scipy.stats, jaxopt) was 5-21 s
# of the start of every seqsim process, which imports this module for its ot measure (python -X importtime, 2-core
# AVX2 VM, load 1-10), whether or not the run asks for ot.


def _solver(config: OtConfig, iterations: int | None, kernel: bool):
    from ott.solvers.linear import acceleration, sinkhorn

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
    from ott.geometry import costs, pointcloud
    from ott.problems.linear import linear_problem

    geom = pointcloud.PointCloud(a_unit, b_unit, cost_fn=costs.Cosine(), epsilon=config.epsilon)
    return _solver(config, None, kernel=False)(linear_problem.LinearProblem(geom, weight_a, weight_b))


def solve_cost(cost, len_a, len_b, config: OtConfig, iterations: int, init):
    """ott's Sinkhorn in the log domain on a cost matrix f32[m, n] (1 - cos of unit frames, 1 on padding) from
    potentials ``init`` (f, g), for at most ``iterations``. Kernel (scaling) mode, where ``kernel_mode(config)``, is
    ``kernels.ot_scaling``."""
    weight_a = frame_mask(cost.shape[0], len_a) / len_a
    weight_b = frame_mask(cost.shape[1], len_b) / len_b
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem

    geom = geometry.Geometry(cost, epsilon=config.epsilon)
    return _solver(config, iterations, kernel=False)(linear_problem.LinearProblem(geom, weight_a, weight_b), init=init)


def _transport_cost(a_unit, b_unit, len_a, len_b, config: OtConfig) -> tuple[jax.Array, jax.Array]:
    """(W = <P, C>: f32[], converged: bool[]) for unit frames."""
    out = _solve(a_unit, b_unit, len_a, len_b, config)
    cost = out.primal_cost
    return cost, out.converged & jnp.isfinite(cost)


def ot_plan(a: jax.Array, b: jax.Array, len_a, len_b, config: OtConfig = DEFAULT_OT) -> tuple[jax.Array, jax.Array]:
    """The entropic transport plan of one pair of padded utterances.

    a: f32[frames_a, embed]; b: f32[frames_b, embed]; len_a, len_b: i32[] valid frames, >= 1.
    Returns (plan f32[frames_a, frames_b]: rows sum to 1/len_a, columns to 1/len_b on valid frames, exactly 0 on
    padding; converged bool[]).
    """
    out = _solve(normalize_frames(a, len_a), normalize_frames(b, len_b), len_a, len_b, config)
    return out.matrix, out.converged


def ot_similarity(a: jax.Array, b: jax.Array, len_a, len_b, config: OtConfig = DEFAULT_OT) -> OtResult:
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
    return reference_unit_rows(np.asarray(x[:length], np.float64))


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
