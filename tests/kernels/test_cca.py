"""CCA, SVCCA and PWCCA against their float64 NumPy twins, cca-zoo's CCA (an implementation we did not write) and
known answers. Tolerances: 1e-4 on correlations in [0, 1], float32 SVDs of well-conditioned random views."""

import numpy as np
import pytest
from cca_zoo.linear import CCA

from engine.errors import ShapeError
from kernels import cca


def views(rng, n, d1, d2, shared=3, noise=0.5):
    """x, y sharing `shared` latent directions plus independent noise, both with non-zero means."""
    z = rng.standard_normal((n, shared))
    x = z @ rng.standard_normal((shared, d1)) + noise * rng.standard_normal((n, d1)) + 2.0
    y = z @ rng.standard_normal((shared, d2)) + noise * rng.standard_normal((n, d2)) - 1.0
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_cca_vs_reference(epsilon):
    rng = np.random.default_rng(0)
    x, y = views(rng, 80, 9, 6)
    got = cca.cca(x, y, epsilon=epsilon)
    assert got.rho.shape == (6,) and got.x_weights.shape == (9, 6) and got.y_weights.shape == (6, 6)
    np.testing.assert_allclose(got.rho, cca.reference_cca(x, y, epsilon), atol=1e-4)
    assert np.all(np.diff(np.asarray(got.rho)) <= 1e-6)


def test_cca_vs_cca_zoo():
    rng = np.random.default_rng(1)
    x, y = views(rng, 120, 7, 5)
    z1, z2 = CCA(n_components=5).fit_transform([x.astype(np.float64), y.astype(np.float64)])
    zoo = np.array([abs(np.corrcoef(z1[:, i], z2[:, i])[0, 1]) for i in range(5)])
    np.testing.assert_allclose(cca.cca(x, y).rho, np.sort(zoo)[::-1], atol=1e-4)


def test_weights_give_the_canonical_variates():
    rng = np.random.default_rng(2)
    x, y = views(rng, 100, 6, 8)
    got = cca.cca(x, y)
    u = (x - x.mean(0)) @ np.asarray(got.x_weights, np.float64)
    v = (y - y.mean(0)) @ np.asarray(got.y_weights, np.float64)
    np.testing.assert_allclose(np.cov(u.T), np.eye(6), atol=1e-3)  # unit variance, uncorrelated
    np.testing.assert_allclose([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(6)], got.rho, atol=1e-4)


def test_invertible_map_and_rank_deficiency():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 5)).astype(np.float32)
    a = rng.standard_normal((5, 5)).astype(np.float32) + 3 * np.eye(5, dtype=np.float32)
    got = cca.cca(x, x @ a + 7.0)
    np.testing.assert_allclose(got.rho, 1.0, atol=1e-4)
    # Fewer examples than dimensions: the centred rows span n - 1 directions, all perfectly correlated.
    wide = cca.cca(rng.standard_normal((8, 10)).astype(np.float32), rng.standard_normal((8, 12)).astype(np.float32))
    assert int(wide.rank) == 7 and wide.rho.shape == (8,)
    np.testing.assert_allclose(wide.rho, [1.0] * 7 + [0.0], atol=1e-4)


def test_svcca_vs_reference_and_invariance():
    rng = np.random.default_rng(4)
    x, y = views(rng, 150, 10, 12, shared=4, noise=0.3)
    for keep in (0.99, 0.9, 1.0):
        assert float(cca.svcca(x, y, keep=keep)) == pytest.approx(cca.reference_svcca(x, y, keep), abs=1e-4)
    # Any invertible map keeps the whole space (keep = 1); an orthogonal map times a scale keeps the spectrum's
    # order, so the 99% subspace too.
    a = rng.standard_normal((10, 10)).astype(np.float32) + 3 * np.eye(10, dtype=np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    base = float(cca.svcca(x, y, keep=1.0))
    assert float(cca.svcca(x @ a, y, keep=1.0)) == pytest.approx(base, abs=1e-4)
    rotated = float(cca.svcca(3.0 * x, (y @ q).astype(np.float32), keep=0.99))
    assert rotated == pytest.approx(float(cca.svcca(x, y, keep=0.99)), abs=1e-4)


@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_pwcca_vs_reference(epsilon):
    rng = np.random.default_rng(5)
    x, y = views(rng, 90, 8, 11)
    got = float(cca.pwcca(x, y, epsilon=epsilon))
    assert got == pytest.approx(cca.reference_pwcca(x, y, epsilon), abs=1e-4)
    assert 0.0 <= got <= float(cca.cca(x, y, epsilon=epsilon).rho[0]) + 1e-6  # a weighted mean of the rho
    assert float(cca.pwcca(x, x)) == pytest.approx(1.0, abs=1e-4)


def test_shapes_are_checked():
    with pytest.raises(ShapeError, match="same rows"):
        cca.cca(np.zeros((5, 3), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ShapeError, match="at least 2"):
        cca.svcca(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32))
