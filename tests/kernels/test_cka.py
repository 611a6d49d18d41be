"""Linear CKA (both routes, streamed moments, minibatches) against the papers' Gram formulas in float64 and known
answers. Tolerance 1e-5 on values in [-1, 1]: float32 products of unit-norm views at HIGHEST precision."""

import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import cka


def views(rng, n, d1, d2, noise=1.0):
    z = rng.standard_normal((n, 4))
    x = z @ rng.standard_normal((4, d1)) + noise * rng.standard_normal((n, d1)) + 5.0
    y = z @ rng.standard_normal((4, d2)) + noise * rng.standard_normal((n, d2)) - 3.0
    return x.astype(np.float32), y.astype(np.float32)


# (n, d1, d2): the first two take the feature route, the last two the Gram route.
SHAPES = [(64, 6, 9), (200, 16, 8), (12, 40, 30), (20, 64, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_vs_reference(shape, unbiased):
    n, d1, d2 = shape
    x, y = views(np.random.default_rng(n + d1), n, d1, d2)
    assert cka.feature_route(n, d1, d2) == (shape in SHAPES[:2])
    got = float(cka.linear_cka(x, y, unbiased=unbiased))
    assert got == pytest.approx(cka.reference_linear_cka(x, y, unbiased), abs=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_known_answers(unbiased):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    for same in (x @ q.astype(np.float32), -7.5 * x, x + 100.0, x):  # orthogonal map, scale, shift, itself
        assert float(cka.linear_cka(x, same, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-5)


def test_unbiased_cka_of_independent_data_is_about_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    y = rng.standard_normal((400, 48)).astype(np.float32)
    unbiased = float(cka.linear_cka(x, y, unbiased=True))
    biased = float(cka.linear_cka(x, y))
    # The unbiased estimate is centred on 0 with spread about 1/n; the biased one sits near sqrt(d1 d2) / n.
    assert abs(unbiased) < 0.01 and biased > 0.05


@pytest.mark.parametrize("unbiased", [False, True])
def test_moments_in_blocks_give_the_exact_cka(unbiased):
    rng = np.random.default_rng(3)
    x, y = views(rng, 300, 10, 7)
    valid = np.ones(320, bool)
    valid[300:] = False
    px, py = np.full((320, 10), np.nan, np.float32), np.full((320, 7), np.nan, np.float32)  # poisoned padding
    px[:300], py[:300] = x, y
    shift_x, shift_y = x[:64].mean(0), y[:64].mean(0)  # a fixed shift per view, as callers streaming blocks do
    total = None
    for start in range(0, 320, 64):
        block = cka.cka_moments(px[start : start + 64] - shift_x, py[start : start + 64] - shift_y, valid[start:][:64])
        total = block if total is None else total + block
    assert float(total.n) == 300
    got = float(cka.cka_from_moments(total, unbiased=unbiased))
    assert got == pytest.approx(cka.reference_linear_cka(x, y, unbiased), abs=1e-5)


def test_minibatch_cka_vs_reference():
    rng = np.random.default_rng(4)
    x, y = views(rng, 240, 20, 12)
    got = float(cka.minibatch_cka(x, y, 60))
    assert got == pytest.approx(cka.reference_minibatch_cka(x, y, 60), abs=1e-5)
    # On a set made of copies of one distribution it estimates the full-set unbiased CKA.
    assert got == pytest.approx(float(cka.linear_cka(x, y, unbiased=True)), abs=0.05)
    with pytest.raises(ShapeError, match="multiple"):
        cka.minibatch_cka(x, y, 70)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_is_pairwise_cka(unbiased):
    rng = np.random.default_rng(5)
    a = [views(rng, 40, 8, 8)[i] for i in (0, 1)] + [rng.standard_normal((40, 5)).astype(np.float32)]
    b = [views(rng, 40, 6, 12)[1], a[0]]
    got = cka.cka_matrix(
        np.stack([cka.centred_gram(x) for x in a]), np.stack([cka.centred_gram(y) for y in b]), unbiased=unbiased
    )
    want = [[cka.reference_linear_cka(x, y, unbiased) for y in b] for x in a]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(got[0, 1]) == pytest.approx(1.0, abs=1e-6)  # a view with itself


def test_shapes_are_checked():
    with pytest.raises(ShapeError, match="same rows"):
        cka.linear_cka(np.zeros((5, 3), np.float32), np.zeros((6, 3), np.float32))
    with pytest.raises(ShapeError, match="at least 4"):
        cka.linear_cka(np.ones((3, 3), np.float32), np.ones((3, 3), np.float32), unbiased=True)
