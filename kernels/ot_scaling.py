"""Sinkhorn in kernel (scaling) mode on a batch of cost matrices, for ``kernels.ot_matrix``'s rounds.

The iterates are ott-jax's ``Sinkhorn(lse_mode=False, momentum=Momentum(OVER_RELAXATION))``, update for update
(``kernel_step``: the column scaling v first, then the row scaling u, each over-relaxed as
``old ** (1 - w) * new ** w``), and the stopping rule is ott's: the L1 error of the column marginal,
``sum_j |v_j (K^T u)_j - b_j|``, below ``threshold``. Two things differ from calling ott under ``vmap``, and neither
changes the fixed point or the bound a converged pair meets:

- the error is checked after every iteration, not every ``INNER_ITERATIONS``: ``K^T u``, the product the error
  needs, is the one the next update of v computes anyway, so a check costs no extra mat-vec, and a pair stops at
  the first iterate that meets the threshold instead of running up to 9 more (random utterances need 11-13
  iterations, which ott rounded up to 20). Every returned pair still has an error below ``threshold``;
- an iteration is written for a batch of pairs (two batched mat-vecs and a few vector operations), where ott under
  ``vmap`` carries its error history, a ``cond`` turned into a ``select`` (the error computed at every iteration,
  a third mat-vec) and per-pair geometry objects; and the transport cost <P, C> = sum u_i K_ij v_j C_ij is one
  pass over K and C, without an exp per cell.

Shapes: kernel, cost f32[pair, m, n]; weights a f32[pair, m], b f32[pair, n] (0 on padding); scalings u f32[pair, m],
v f32[pair, n] (0 on padding). ``reference_scaling_sinkhorn`` is the NumPy twin (float64, one pair, same rule).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax


def _relax(old, new, weight: float):
    """ott's Momentum in kernel mode: old ** (1 - w) * new ** w, with an old 0 (padding, the start) read as 1."""
    old = jnp.where(old > 0.0, old, 1.0)
    if weight == 1.5:  # the default OVER_RELAXATION: a square root, not two powers (an exp and a log each)
        return new * jnp.sqrt(new / old)
    return old ** (1.0 - weight) * new**weight


def _guard(x):
    """ott's update_scaling divides by the kernel product where it is > 0, by 1 elsewhere."""
    return jnp.where(x > 0, x, 1.0)


def scaling_sinkhorn(kernel, cost, a, b, u, v, *, threshold: float, iterations: int, weight: float):
    """At most ``iterations`` over-relaxed Sinkhorn iterations of every pair from scalings (u, v), each pair stopping
    at its first iterate whose column-marginal L1 error is below ``threshold``.

    kernel = exp(-cost / epsilon), cost: f32[p, m, n]; a: f32[p, m], b: f32[p, n] (weights, 0 on padding);
    u: f32[p, m], v: f32[p, n]. Returns (transport cost <P, C>: f32[p], converged: bool[p], u, v, done
    iterations: i32[p]). ``converged``: the error met the threshold (False on NaN, like ott).
    """

    def col_error(u, v):
        kt = jnp.einsum("pmn,pm->pn", kernel, u)
        return kt, jnp.sum(jnp.abs(v * kt - b), axis=1)

    def cond(state):
        step, _, _, _, err, _ = state
        return (step < iterations) & jnp.any(~(err < threshold) & ~jnp.isnan(err))

    def body(state):
        step, u, v, kt, err, count = state
        running = ~(err < threshold) & ~jnp.isnan(err)
        # A pair that stopped keeps its scalings through the selects, applied before each product: the products and
        # errors recomputed from them are its own again (the same mat-vecs of the same operands), so that kt and
        # err need no select and the new scalings no second copy: 12 XLA ops an iteration instead of 17.
        keep = running[:, None]
        v = jnp.where(keep, _relax(v, b / _guard(kt), weight), v)
        kv = jnp.einsum("pmn,pn->pm", kernel, v)
        u = jnp.where(keep, _relax(u, a / _guard(kv), weight), u)
        # Over-relaxed, the update of u leaves the rows off too: both marginals must meet the threshold (the row
        # error is free, K v is the product just taken).
        kt, err = col_error(u, v)
        err = jnp.maximum(err, jnp.sum(jnp.abs(u * kv - a), axis=1))
        return step + 1, u, v, kt, err, count + running.astype(jnp.int32)

    # The start's error is not checked (ott's loop runs at least one iteration): inf marks it as running.
    kt = jnp.einsum("pmn,pm->pn", kernel, u)
    err = jnp.full(u.shape[0], jnp.inf, kernel.dtype)
    count = jnp.zeros(u.shape[0], jnp.int32)
    _, u, v, _, err, count = lax.while_loop(cond, body, (0, u, v, kt, err, count))
    w = jnp.sum(kernel * cost * u[:, :, None] * v[:, None, :], axis=(1, 2))  # one fused pass, no exp per cell
    return w, err < threshold, u, v, count


# ----------------------------------------------------------------------------------------------------------------
# Reference: the same iterates for one pair in float64 NumPy.


def reference_scaling_sinkhorn(cost, a, b, epsilon: float, *, threshold: float, iterations: int, weight: float):
    """One pair, float64: (transport cost, converged, iterations done) of over-relaxed kernel-mode Sinkhorn from
    u = v = 1 on valid frames, stopping at the first iterate whose column-marginal L1 error is below ``threshold``.
    cost: [m, n]; a: [m], b: [n] weights (0 on padding)."""
    kernel = np.exp(-np.asarray(cost, np.float64) / epsilon)
    u, v = (a > 0).astype(np.float64), (b > 0).astype(np.float64)

    def relax(old, new):
        return np.where(old > 0, old, 1.0) ** (1 - weight) * new**weight

    def guard(x):
        return np.where(x > 0, x, 1.0)

    for step in range(1, iterations + 1):
        v = relax(v, b / guard(kernel.T @ u))
        u = relax(u, a / guard(kernel @ v))
        if max(np.abs(v * (kernel.T @ u) - b).sum(), np.abs(u * (kernel @ v) - a).sum()) < threshold:
            return float(np.sum(u[:, None] * kernel * v[None, :] * cost)), True, step
    return float(np.sum(u[:, None] * kernel * v[None, :] * cost)), False, iterations
