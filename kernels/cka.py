"""Linear centred kernel alignment (CKA) between two views of the same examples, exact, streamed or minibatched.

Shapes: ``x: f32[n, d1]`` and ``y: f32[n, d2]``, row i of both is example i. With ``K = x x^T`` and ``L = y y^T``:

    CKA(x, y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

- biased (Kornblith et al. 2019): ``HSIC = tr(K H L H)`` with H the centring matrix; with centred features it is
  ``||xc^T yc||_F^2``, so CKA = ``||xc^T yc||_F^2 / (||xc^T xc||_F ||yc^T yc||_F)``.
- unbiased (Song et al. 2012, as in Nguyen et al. 2021 and platonic-rep ``unbiased_cka``): with ``K~``, ``L~`` the
  Grams with a zeroed diagonal, ``n (n - 3) HSIC_u = tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
  - 2 / (n - 2) (K~ 1)^T (L~ 1)``; needs n >= 4. Independent views score about 0 (the biased one does not).

Both are invariant to orthogonal maps and to scaling of either view, and (being built on centred or shift-free
statistics) to shifting it. ``linear_cka`` takes the cheaper route for the shapes, decided when traced: the feature
route costs ``n (d1 d2 + d1^2 + d2^2)`` multiply-adds and holds d x d matrices; the Gram route ``n^2 (d1 + d2)`` and
holds two n x n ones. Views are scaled to unit Frobenius norm first, so float32 sums cannot overflow.

``cka_matrix`` scores every layer of one model against every layer of another at once from their centred Grams
(n x n per layer: for n up to a few thousand examples).

For sets too large to hold:
- ``cka_moments`` / ``cka_from_moments``: exact CKA (both kinds) from sums accumulated block by block; memory
  ``d1 d2 + d1^2 + d2^2`` floats whatever n. Shift the blocks by one fixed vector per view (the first block's mean)
  so that the sums do not cancel catastrophically: CKA does not change under a shift.
- ``minibatch_cka`` (Nguyen et al. 2021, google-research ``efficient_CKA.py``): the mean unbiased HSIC over
  minibatches of ``batch`` examples, then the ratio; the largest matrix built is ``batch x batch`` (the stated
  size: MINIBATCH_MAX). An estimate of CKA over the population, not the exact CKA of the n examples.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError

_HIGHEST = jax.lax.Precision.HIGHEST
MINIBATCH_MAX = 4096  # examples per minibatch: at most a 4096 x 4096 Gram (64 MiB in float32) per view


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def _check(x, y, minimum: int) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"CKA takes x: f32[n, d1] and y: f32[n, d2] with the same rows (examples); got x {x.shape}, y {y.shape}"
        )
    if x.shape[0] < minimum:
        raise ShapeError(f"this CKA needs at least {minimum} examples (rows), got {x.shape[0]}")


def _unit(x):
    x = x.astype(jnp.float32)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    return x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(jnp.float32).tiny)


def _unbiased(n, cross, sum_k, sum_l, row_dot):
    """n (n - 3) HSIC_u from tr(K~ L~), 1^T K~ 1, 1^T L~ 1 and (K~ 1)^T (L~ 1); the factor cancels in CKA."""
    return cross + sum_k * sum_l / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * row_dot


def feature_route(n: int, d1: int, d2: int) -> bool:
    """True when the feature route costs fewer multiply-adds than the Gram route for these shapes."""
    return n * (d1 * d2 + d1 * d1 + d2 * d2) <= n * n * (d1 + d2)


def _hsic_features(x, y, unbiased):
    if not unbiased:
        return jnp.sum(jnp.square(_mm(x.T, y)))
    n = x.shape[0]
    sx, sy = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)  # diagonals of K and L
    kx, ly = _mm(x, jnp.sum(x, axis=0)) - sx, _mm(y, jnp.sum(y, axis=0)) - sy  # K~ 1 and L~ 1
    cross = jnp.sum(jnp.square(_mm(x.T, y))) - jnp.sum(sx * sy)
    return _unbiased(n, cross, jnp.sum(kx), jnp.sum(ly), jnp.dot(kx, ly))


def _hsic_gram(gk, gl, unbiased):
    if not unbiased:  # the features were centred, so K and L are already H K H and H L H
        return jnp.sum(gk * gl)
    n = gk.shape[0]
    off = 1.0 - jnp.eye(n, dtype=gk.dtype)
    gk, gl = gk * off, gl * off
    return _unbiased(n, jnp.sum(gk * gl), jnp.sum(gk), jnp.sum(gl), jnp.dot(jnp.sum(gk, 1), jnp.sum(gl, 1)))


def _cka(x, y, unbiased):
    x, y = _unit(x), _unit(y)
    n, d1 = x.shape
    if feature_route(n, d1, y.shape[1]):
        xy, xx, yy = (_hsic_features(a, b, unbiased) for a, b in ((x, y), (x, x), (y, y)))
    else:
        gk, gl = _mm(x, x.T), _mm(y, y.T)
        xy, xx, yy = (_hsic_gram(a, b, unbiased) for a, b in ((gk, gl), (gk, gk), (gl, gl)))
    return xy / jnp.sqrt(xx * yy)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def linear_cka(x: jax.Array, y: jax.Array, *, unbiased: bool = False) -> jax.Array:
    """f32[]: linear CKA of x: f32[n, d1] and y: f32[n, d2], biased (n >= 2) or unbiased (n >= 4)."""
    _check(x, y, 4 if unbiased else 2)
    return _cka(x, y, unbiased)


@jax.jit
def centred_gram(x: jax.Array) -> jax.Array:
    """f32[n, n]: the linear Gram of x: f32[n, d] centred and scaled to unit Frobenius norm (``cka_matrix``'s input)."""
    x = _unit(x)
    return _mm(x, x.T)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def cka_matrix(grams_a: jax.Array, grams_b: jax.Array, *, unbiased: bool = False) -> jax.Array:
    """f32[La, Lb]: CKA of every view of ``grams_a: f32[La, n, n]`` with every view of ``grams_b: f32[Lb, n, n]``
    (``centred_gram`` of each layer, same n examples): every HSIC is an inner product of per-view terms, so the
    whole layer x layer matrix is a few matrix products, O((La + Lb) n^2) memory and ``La Lb n^2`` multiply-adds."""
    n = grams_a.shape[-1]
    if grams_b.shape[-1] != n or grams_a.shape[-2] != n or grams_b.shape[-2] != n:
        raise ShapeError(f"cka_matrix needs grams f32[L, n, n] of one n; got {grams_a.shape} and {grams_b.shape}")

    def terms(grams):
        if not unbiased:
            return grams.reshape(len(grams), -1), None, None
        grams = grams * (1.0 - jnp.eye(n, dtype=grams.dtype))
        return grams.reshape(len(grams), -1), jnp.sum(grams, axis=(1, 2)), jnp.sum(grams, axis=2)

    def hsic(p, q):
        cross = _mm(p[0], q[0].T)
        if not unbiased:
            return cross
        return _unbiased(n, cross, p[1][:, None], q[1][None, :], _mm(p[2], q[2].T))

    a, b = terms(grams_a), terms(grams_b)
    norm_a = jnp.sqrt(jnp.diagonal(hsic(a, a)))
    norm_b = jnp.sqrt(jnp.diagonal(hsic(b, b)))
    return hsic(a, b) / (norm_a[:, None] * norm_b[None, :])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CkaMoments:
    """Sums over examples that determine both CKAs exactly; add two with ``+`` (blocks of the same set)."""

    n: jax.Array  # f32[] examples
    sum_x: jax.Array  # f32[d1]      sum of x_i
    sum_y: jax.Array  # f32[d2]
    xx: jax.Array  # f32[d1, d1]     sum of x_i x_i^T
    yy: jax.Array  # f32[d2, d2]
    xy: jax.Array  # f32[d1, d2]
    x_by_ny: jax.Array  # f32[d1]    sum of x_i |y_i|^2
    y_by_nx: jax.Array  # f32[d2]    sum of y_i |x_i|^2
    x_by_nx: jax.Array  # f32[d1]    sum of x_i |x_i|^2
    y_by_ny: jax.Array  # f32[d2]
    nx_ny: jax.Array  # f32[]        sum of |x_i|^2 |y_i|^2
    nx_nx: jax.Array  # f32[]        sum of |x_i|^4
    ny_ny: jax.Array  # f32[]

    def __add__(self, other: CkaMoments) -> CkaMoments:
        return jax.tree.map(jnp.add, self, other)


@jax.jit
def cka_moments(x: jax.Array, y: jax.Array, valid: jax.Array | None = None) -> CkaMoments:
    """The sums of one block x: f32[b, d1], y: f32[b, d2]; rows where ``valid: bool[b]`` is False count as absent
    (padding, NaN included)."""
    _check(x, y, 1)
    valid = jnp.ones(x.shape[0], bool) if valid is None else valid
    x = jnp.where(valid[:, None], x.astype(jnp.float32), 0.0)
    y = jnp.where(valid[:, None], y.astype(jnp.float32), 0.0)
    nx, ny = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
    return CkaMoments(
        n=jnp.sum(valid, dtype=jnp.float32),
        sum_x=jnp.sum(x, 0),
        sum_y=jnp.sum(y, 0),
        xx=_mm(x.T, x),
        yy=_mm(y.T, y),
        xy=_mm(x.T, y),
        x_by_ny=_mm(ny, x),
        y_by_nx=_mm(nx, y),
        x_by_nx=_mm(nx, x),
        y_by_ny=_mm(ny, y),
        nx_ny=jnp.dot(nx, ny),
        nx_nx=jnp.dot(nx, nx),
        ny_ny=jnp.dot(ny, ny),
    )


def _hsic_moments(n, sa, sb, ab, a_by_nb, b_by_na, aa_tr, bb_tr, na_nb, unbiased):
    """HSIC of views a, b from their sums; ``aa_tr``, ``bb_tr``: sum |a_i|^2 and |b_i|^2."""
    if not unbiased:  # ||(A - mean)^T (B - mean)||^2 with the centred cross-product from the sums
        return jnp.sum(jnp.square(ab - jnp.outer(sa, sb) / n))
    cross = jnp.sum(jnp.square(ab)) - na_nb
    # (K~ 1)_i = a_i . sa - |a_i|^2, so (K~ 1).(L~ 1) = sa^T AB sb - sa . sum a_i |b_i|^2 - sb . sum b_i |a_i|^2
    #                                                   + sum |a_i|^2 |b_i|^2
    row_dot = jnp.dot(sa, _mm(ab, sb)) - jnp.dot(sa, a_by_nb) - jnp.dot(sb, b_by_na) + na_nb
    return _unbiased(n, cross, jnp.dot(sa, sa) - aa_tr, jnp.dot(sb, sb) - bb_tr, row_dot)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def cka_from_moments(m: CkaMoments, *, unbiased: bool = False) -> jax.Array:
    """f32[]: the exact linear CKA of every example summed into ``m`` (both kinds)."""
    tr_x, tr_y = jnp.trace(m.xx), jnp.trace(m.yy)
    xy = _hsic_moments(m.n, m.sum_x, m.sum_y, m.xy, m.x_by_ny, m.y_by_nx, tr_x, tr_y, m.nx_ny, unbiased)
    xx = _hsic_moments(m.n, m.sum_x, m.sum_x, m.xx, m.x_by_nx, m.x_by_nx, tr_x, tr_x, m.nx_nx, unbiased)
    yy = _hsic_moments(m.n, m.sum_y, m.sum_y, m.yy, m.y_by_ny, m.y_by_ny, tr_y, tr_y, m.ny_ny, unbiased)
    return xy / jnp.sqrt(xx * yy)


@jax.jit
def _minibatch(x, y):
    def step(total, batch):
        bx, by = batch
        gk, gl = _mm(bx, bx.T), _mm(by, by.T)
        return total + jnp.stack([_hsic_gram(a, b, True) for a, b in ((gk, gl), (gk, gk), (gl, gl))]), None

    total, _ = jax.lax.scan(step, jnp.zeros(3, jnp.float32), (x, y))
    return total[0] / jnp.sqrt(total[1] * total[2])


def minibatch_cka(x: jax.Array, y: jax.Array, batch: int) -> jax.Array:
    """f32[]: minibatch CKA of x: f32[n, d1], y: f32[n, d2] over consecutive minibatches of ``batch`` rows
    (4 <= batch <= MINIBATCH_MAX, n a multiple of batch: shuffle and trim first). Rows are used as given: shuffle
    them if their order is not random."""
    _check(x, y, 4)
    n = x.shape[0]
    if not 4 <= batch <= MINIBATCH_MAX or n % batch:
        raise ShapeError(
            f"minibatch_cka needs 4 <= batch <= {MINIBATCH_MAX} dividing n = {n}; got batch {batch}: trim the rows "
            f"to a multiple (n - n % batch) or pick another batch"
        )
    scale = lambda a: a.astype(jnp.float32) / jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32))))  # noqa: E731
    return _minibatch(scale(x).reshape(n // batch, batch, -1), scale(y).reshape(n // batch, batch, -1))


# ----------------------------------------------------------------------------------------------------------------
# References: the Gram-matrix formulas as written in the papers, float64, H as an explicit matrix.


def _reference_hsic(gk: np.ndarray, gl: np.ndarray, unbiased: bool) -> float:
    n = len(gk)
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(gk @ h @ gl @ h)) / (n - 1) ** 2
    gk, gl = gk.copy(), gl.copy()
    np.fill_diagonal(gk, 0.0)
    np.fill_diagonal(gl, 0.0)
    one = np.ones(n)
    value = np.trace(gk @ gl) + (one @ gk @ one) * (one @ gl @ one) / ((n - 1) * (n - 2))
    return float((value - 2 / (n - 2) * (one @ gk @ gl @ one)) / (n * (n - 3)))


def reference_linear_cka(x, y, unbiased: bool = False) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gk, gl = x @ x.T, y @ y.T
    hsic = [_reference_hsic(a, b, unbiased) for a, b in ((gk, gl), (gk, gk), (gl, gl))]
    return hsic[0] / np.sqrt(hsic[1] * hsic[2])


def reference_minibatch_cka(x, y, batch: int) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sums = np.zeros(3)
    for start in range(0, len(x), batch):
        bx, by = x[start : start + batch], y[start : start + batch]
        gk, gl = bx @ bx.T, by @ by.T
        sums += [_reference_hsic(gk, gl, True), _reference_hsic(gk, gk, True), _reference_hsic(gl, gl, True)]
    return float(sums[0] / np.sqrt(sums[1] * sums[2]))
