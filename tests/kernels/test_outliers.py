"""Outlier dimensions, anisotropy and effective rank (``kernels.outliers``) against their NumPy and SciPy twins, written
here from the definitions: streamed sums against every frame in one float64 array, the effective rank against
``scipy.stats.entropy`` of ``scipy.linalg.eigvalsh``'s spectrum of ``np.cov``, the cosine's split against the cosine
and SeqSim's own reference, the two ``--dimensions`` transforms against NumPy expressions.

Tolerances: streamed float64 sums about a shift, 1e-9 relative; a spectrum from LAPACK twice, 1e-9 on its rank."""

import ml_dtypes
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from engine.errors import ShapeError
from kernels import outliers
from kernels.pooling import reference_mean_pooled_cosine_matrix
from kernels.seqsim import reference_seqsim_matrix


def _frames(rng, n=300, d=16, big=7):
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d) + rng.standard_normal(d)
    x[:, big] = 40.0 + 5.0 * x[:, big]  # a planted massive dimension: large and of one sign
    return x.astype(np.float32)


def test_streamed_moments_equal_numpy_over_every_frame():
    rng = np.random.default_rng(0)
    x = _frames(rng)
    m = outliers.Moments()
    for part in np.array_split(x, 4):
        m.add(part, scatter=True)
    ref = x.astype(np.float64)
    assert m.count == len(x)
    np.testing.assert_allclose(m.mean, ref.mean(0), rtol=1e-9)
    np.testing.assert_allclose(m.magnitude, np.abs(ref).mean(0), rtol=1e-9)
    np.testing.assert_allclose(m.std, ref.std(0), rtol=1e-9)
    np.testing.assert_allclose(m.covariance(), np.cov(ref.T, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outliers.norm_shares(m.squares), (ref**2).sum(0) / (ref**2).sum(), rtol=1e-9)
    halves = outliers.Moments().add(x[:100]).merged(outliers.Moments().add(x[100:]))
    np.testing.assert_allclose(halves.std, ref.std(0), rtol=1e-9)
    with pytest.raises(ShapeError, match="scatter=True"):
        halves.covariance()


def test_a_planted_dimension_is_the_one_outlier():
    rng = np.random.default_rng(1)
    x = _frames(rng, big=5)
    magnitude = np.abs(x.astype(np.float64)).mean(0)
    found, median = outliers.outlier_dimensions(magnitude, 5.0)
    assert found.tolist() == [5] and median == pytest.approx(np.median(magnitude))
    assert outliers.outlier_dimensions(magnitude, magnitude[5] / median)[0].tolist() == []  # strictly above k
    assert outliers.top_dimensions(magnitude, 3)[0] == 5 and len(outliers.top_dimensions(magnitude, 3)) == 3
    assert outliers.top_dimensions(np.ones(4), 2).tolist() == [0, 1]  # ties by index


def test_effective_rank_equals_scipy_twin():
    rng = np.random.default_rng(2)
    x = _frames(rng).astype(np.float64)
    cov = np.cov(x.T, bias=True)
    twin = float(np.exp(scipy.stats.entropy(np.clip(scipy.linalg.eigvalsh(cov), 0, None))))
    assert outliers.effective_rank(outliers.spectrum(cov)) == pytest.approx(twin, rel=1e-9)
    assert outliers.effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)  # one direction of variance
    assert outliers.effective_rank(np.ones(8)) == pytest.approx(8.0)  # isotropic
    assert np.isnan(outliers.effective_rank(np.zeros(4)))


def test_anisotropy_pairs_are_row_cosines():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    want = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(outliers.frame_pair_cosines(x, y), want, rtol=1e-12)
    shifted = outliers.frame_pair_cosines(x + 50.0, y + 50.0)  # a common offset: every pair alike
    assert shifted.mean() > 0.99


def test_cosine_splits_into_the_pooled_cosine_and_seqsim():
    """Each pair's terms sum to its mean-pooled cosine and to SeqSim's two directions (the kernels' references), and
    equal a loop over a's frames and their best match written here."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((1, 9, 6)).astype(np.float32)
    b = rng.standard_normal((1, 13, 6)).astype(np.float32)
    la, lb = np.array([7]), np.array([11])
    u, v = a[0, :7], b[0, :11]
    pooled = outliers.pooled_contributions(u.mean(0), v.mean(0))
    assert pooled.sum() == pytest.approx(reference_mean_pooled_cosine_matrix(a, la, b, lb)[0, 0], abs=1e-6)
    a_to_b, b_to_a = outliers.matched_contributions(u, v)
    _, ref_a2b, ref_b2a = reference_seqsim_matrix(a, la, b, lb)
    assert a_to_b.sum() == pytest.approx(float(ref_a2b[0, 0]), abs=1e-6)
    assert b_to_a.sum() == pytest.approx(float(ref_b2a[0, 0]), abs=1e-6)
    uu = u / np.linalg.norm(u, axis=1, keepdims=True)
    vv = v / np.linalg.norm(v, axis=1, keepdims=True)
    loop = np.mean([f * vv[np.argmax(vv @ f)] for f in uu.astype(np.float64)], axis=0)
    np.testing.assert_allclose(a_to_b, loop, rtol=1e-6, atol=1e-9)
    with pytest.raises(ShapeError, match="frames on both sides"):
        outliers.matched_contributions(u[:0], v)


def test_dimension_transforms_equal_numpy():
    rng = np.random.default_rng(5)
    states = rng.standard_normal((3, 5, 6)).astype(np.float32)
    mean, scale = rng.standard_normal(6), rng.uniform(0.5, 2.0, 6)
    want = ((states - mean.astype(np.float32)) / scale.astype(np.float32)).astype(np.float32)
    np.testing.assert_array_equal(outliers.standardise(states.copy(), mean, scale), want)
    dropped = states.copy()
    dropped[..., [1, 4]] = 0
    np.testing.assert_array_equal(outliers.zero_dimensions(states.copy(), np.array([4, 1])), dropped)
    half = states.astype(ml_dtypes.bfloat16)
    got = outliers.zero_dimensions(half, np.array([0]))
    assert got.dtype == half.dtype and not np.asarray(got, np.float32)[..., 0].any()
