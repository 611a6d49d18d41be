"""Canonical correlation analysis by SVD, and the two summaries built on it: SVCCA and PWCCA.

Shapes: ``x: f32[n, d1]`` and ``y: f32[n, d2]`` hold the same n examples (rows) seen by two views (a layer, a
model); each view is centred over the rows first. ``k = min(n, d1, d2)`` canonical pairs are returned, padded with
zeros past the numerical rank.

Method (Bjorck and Golub 1973). With the thin SVDs ``xc = Ux Sx Vx^T`` and ``yc = Uy Sy Vy^T``, the canonical
correlations are the singular values of ``diag(ax) Ux^T Uy diag(ay)`` where, for each singular value s of a view,

    a = s / sqrt(s^2 + epsilon * s_max^2)        (0 for s at or below the rank tolerance)

``epsilon = 0`` is plain CCA; ``epsilon > 0`` is ridge CCA with ``epsilon * lambda_max`` added to the diagonal of
each view's covariance (``lambda_max`` its largest eigenvalue), so it does not depend on the scale of the view, as
google/svcca ``cca_core.py`` gets by dividing the covariance by its largest entry before adding epsilon.
Directions with ``s <= max(n, d) * eps_f32 * s_max`` (NumPy's ``matrix_rank`` tolerance) are dropped: they are
rounding noise and would otherwise correlate at random. No covariance is formed, so the condition number is that
of x, not its square.

Warning: with ``n <= d`` the centred rows span at most n - 1 directions and every correlation of plain CCA is 1;
regularise (epsilon), reduce (SVCCA) or use more examples.

- ``svcca(x, y, keep)`` (Raghu et al. 2017): keep each view's top singular directions holding ``keep`` of its
  variance (the fewest whose cumulative ``s^2`` reaches it), CCA on them, mean of the ``min(kx, ky)`` correlations.
- ``pwcca(x, y, epsilon)`` (Morcos et al. 2018, google/svcca ``pwcca.py``): the mean of the correlations weighted by
  ``alpha_i = sum_j |<h_i, x_j>|``, with ``h_i`` the orthonormalised (QR) canonical variates of x and ``x_j`` its
  centred neurons (columns), normalised to sum 1. Weights come from x's side always (``pwcca(x, y) != pwcca(y,
  x)``); ``pwcca.py`` takes the side with fewer neurons and forms its variates as ``Ux^T`` applied to the neurons
  without the whitening ``invsqrt_xx``, so its numbers differ from the paper's formula, which this follows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError
from kernels._cpu import one_lapack_thread  # noqa: F401  (the compare job's CCA runs under it)

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CcaResult:
    """Canonical pairs of x: f32[n, d1] and y: f32[n, d2], k = min(n, d1, d2), descending by correlation.

    ``xc @ x_weights[:, i]`` and ``yc @ y_weights[:, i]`` are the i-th canonical variates (unit variance with
    ``n - 1`` in the denominator when epsilon is 0; xc, yc the centred views); entries past ``rank`` are zero.
    """

    rho: jax.Array  # f32[k] canonical correlations, descending, in [0, 1]
    x_weights: jax.Array  # f32[d1, k]
    y_weights: jax.Array  # f32[d2, k]
    x_variates: jax.Array  # f32[n, k] canonical variates of x, scaled to unit norm (not unit variance)
    rank: jax.Array  # i32[] number of meaningful pairs: min of the two views' kept ranks


def _check(x, y) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"CCA takes x: f32[n, d1] and y: f32[n, d2] with the same rows (examples); got x {x.shape}, y {y.shape}: "
            "pool or pair the examples first"
        )
    if x.shape[0] < 2:
        raise ShapeError(f"CCA needs at least 2 examples (rows) to centre; got {x.shape[0]}")


def _view(x: jax.Array):
    """Thin SVD of the centred view and its kept mask: (u f32[n, r], s f32[r], vt f32[r, d], kept bool[r])."""
    x = x.astype(jnp.float32)
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    u, s, vt = jnp.linalg.svd(xc, full_matrices=False)
    tolerance = max(x.shape) * np.finfo(np.float32).eps * s[0]
    return u, s, vt, s > tolerance


def _cca(view_x, view_y, epsilon) -> CcaResult:
    ux, sx, vtx, kept_x = view_x
    uy, sy, vty, kept_y = view_y
    n = ux.shape[0]

    def shrink(s, kept):
        return jnp.where(kept, s / jnp.sqrt(s * s + epsilon * s[0] * s[0]), 0.0)

    ax, ay = shrink(sx, kept_x), shrink(sy, kept_y)
    m = ax[:, None] * jnp.matmul(ux.T, uy, precision=_HIGHEST) * ay[None, :]
    p, rho, qt = jnp.linalg.svd(m, full_matrices=False)  # rho: [min(rx, ry)], already descending
    rank = jnp.minimum(jnp.sum(kept_x), jnp.sum(kept_y)).astype(jnp.int32)
    valid = jnp.arange(rho.shape[0]) < rank
    rho = jnp.where(valid, jnp.clip(rho, 0.0, 1.0), 0.0)

    # Weights in the original coordinates: (cov + eps lambda_max I)^(-1/2) rotated to the canonical directions.
    def weights(s, kept, vt, rotation):
        scale = jnp.where(kept, jnp.sqrt(n - 1.0) / jnp.sqrt(s * s + epsilon * s[0] * s[0]), 0.0)
        return jnp.where(valid[None, :], jnp.matmul(vt.T * scale[None, :], rotation, precision=_HIGHEST), 0.0)

    x_weights = weights(sx, kept_x, vtx, p)
    y_weights = weights(sy, kept_y, vty, qt.T)
    variates = jnp.matmul(ux * ax[None, :], p, precision=_HIGHEST)  # xc @ x_weights / sqrt(n - 1)
    variates = jnp.where(valid[None, :], variates, 0.0)
    return CcaResult(rho=rho, x_weights=x_weights, y_weights=y_weights, x_variates=variates, rank=rank)


@jax.jit
def cca(x: jax.Array, y: jax.Array, *, epsilon: float = 0.0) -> CcaResult:
    """Canonical correlations of x: f32[n, d1] and y: f32[n, d2] (see module docstring)."""
    _check(x, y)
    return _cca(_view(x), _view(y), epsilon)


def _keep_variance(view, keep):
    u, s, vt, kept = view
    energy = s * s
    before = jnp.cumsum(energy) - energy  # variance of the directions ahead of each one
    return u, s, vt, kept & (before < keep * jnp.sum(energy))


@jax.jit
def svcca(x: jax.Array, y: jax.Array, *, keep: float = 0.99) -> jax.Array:
    """f32[]: mean CCA correlation after keeping the top singular directions that hold ``keep`` of each view's
    variance (x: f32[n, d1], y: f32[n, d2]). Invariant to invertible linear maps of either view only when the kept
    subspaces are (``keep = 1``); at 0.99 it is close."""
    _check(x, y)
    result = _cca(_keep_variance(_view(x), keep), _keep_variance(_view(y), keep), 0.0)
    return jnp.sum(result.rho) / jnp.maximum(result.rank, 1)


@jax.jit
def pwcca(x: jax.Array, y: jax.Array, *, epsilon: float = 0.0) -> jax.Array:
    """f32[]: projection-weighted mean CCA correlation, weights from x's neurons (see module docstring)."""
    _check(x, y)
    return _pwcca(_view(x), _view(y), epsilon)


def _permuted(view, p):
    """The thin SVD of a view whose rows are permuted (row i = row ``p[i]``): centring commutes with it."""
    u, s, vt, kept = view
    return u[p], s, vt, kept


NULL_BATCH = 8  # permutations scored at a time by the nulls


@jax.jit
def svcca_null(x: jax.Array, y: jax.Array, perms: jax.Array, *, keep: float = 0.99) -> jax.Array:
    """f32[P]: ``svcca(x, y[p])`` for each permutation ``p`` of ``perms: i32[P, n]`` (``kernels.null``), from one SVD
    of each view."""
    _check(x, y)
    view_x, view_y = _keep_variance(_view(x), keep), _keep_variance(_view(y), keep)

    def one(p):
        result = _cca(view_x, _permuted(view_y, p), 0.0)
        return jnp.sum(result.rho) / jnp.maximum(result.rank, 1)

    return jax.lax.map(one, perms, batch_size=NULL_BATCH)


@jax.jit
def pwcca_null(x: jax.Array, y: jax.Array, perms: jax.Array, *, epsilon: float = 0.0) -> jax.Array:
    """f32[P]: ``pwcca(x, y[p])`` for each permutation ``p`` of ``perms: i32[P, n]``, from one SVD of each view."""
    _check(x, y)
    view_x, view_y = _view(x), _view(y)
    return jax.lax.map(lambda p: _pwcca(view_x, _permuted(view_y, p), epsilon), perms, batch_size=NULL_BATCH)


def _pwcca(view_x, view_y, epsilon):
    result = _cca(view_x, view_y, epsilon)
    q, _ = jnp.linalg.qr(result.x_variates)  # QR keeps the first `rank` columns' span in order; the rest are masked
    ux, sx, vtx, _ = view_x
    xc = jnp.matmul(ux * sx[None, :], vtx, precision=_HIGHEST)
    alpha = jnp.sum(jnp.abs(jnp.matmul(q.T, xc, precision=_HIGHEST)), axis=1)
    alpha = jnp.where(jnp.arange(alpha.shape[0]) < result.rank, alpha, 0.0)
    return jnp.sum(alpha * result.rho) / jnp.sum(alpha)


# ----------------------------------------------------------------------------------------------------------------
# References: covariance matrices, eigendecompositions and float64, the textbook route (as google/svcca's).


def _reference_inv_sqrt(cov: np.ndarray, epsilon: float, tolerance: float) -> np.ndarray:
    """(cov + epsilon lambda_max I)^(-1/2) on the eigenvectors above tolerance, 0 on the others (a pseudo-inverse)."""
    w, v = np.linalg.eigh(cov)
    top = w.max()
    inv = np.where(w > tolerance, 1.0 / np.sqrt(np.maximum(w, 0.0) + epsilon * top), 0.0)
    return (v * inv) @ v.T


def _reference_whitened(x, y, epsilon):
    """Centred views, their whitening matrices and the whitened cross-covariance, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    xc, yc = x - x.mean(0), y - y.mean(0)
    cxx, cyy, cxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)

    def tolerance(c, d):  # covariance eigenvalues are s^2 / (n - 1): the kernel's singular-value tolerance, squared
        return (max(n, d) * np.finfo(np.float32).eps) ** 2 * np.linalg.eigvalsh(c).max()

    ix = _reference_inv_sqrt(cxx, epsilon, tolerance(cxx, x.shape[1]))
    iy = _reference_inv_sqrt(cyy, epsilon, tolerance(cyy, y.shape[1]))
    return xc, yc, ix, ix @ cxy @ iy


def reference_cca(x, y, epsilon: float = 0.0) -> np.ndarray:
    """f64[k]: canonical correlations, descending, zeros past the rank (as ``cca(...).rho``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    xc, yc, _, whitened = _reference_whitened(x, y, epsilon)
    rho = np.linalg.svd(whitened, compute_uv=False)
    rank = min(np.linalg.matrix_rank(xc), np.linalg.matrix_rank(yc))
    k = min(n, x.shape[1], y.shape[1])
    return np.where(np.arange(k) < rank, np.clip(rho[:k], 0.0, 1.0), 0.0)


def reference_svcca(x, y, keep: float = 0.99) -> float:
    def reduce(a):
        a = np.asarray(a, np.float64)
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        energy = np.cumsum(s**2) / np.sum(s**2)
        count = 1
        while energy[count - 1] < keep:  # the fewest directions whose variance reaches `keep`
            count += 1
        return u[:, :count] * s[:count]

    rx, ry = reduce(x), reduce(y)
    rho = reference_cca(rx, ry)
    return float(rho[: min(rx.shape[1], ry.shape[1])].mean())


def reference_pwcca(x, y, epsilon: float = 0.0) -> float:
    xc, yc, ix, whitened = _reference_whitened(x, y, epsilon)
    u, rho, _ = np.linalg.svd(whitened)
    k = min(np.linalg.matrix_rank(xc), np.linalg.matrix_rank(yc))
    h = xc @ ix @ u[:, :k]  # canonical variates of x, one per column
    q, _ = np.linalg.qr(h)
    alpha = np.abs(q.T @ xc).sum(axis=1)
    return float(np.sum(alpha * rho[:k]) / np.sum(alpha))
