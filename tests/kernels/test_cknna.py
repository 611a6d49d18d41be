"""CKNNA against its NumPy twin: the dense n x n matrices, the k-NN masks by a stable sort per row and
platonic-rep's formula (``AlignmentMetrics.cknna``, unbiased, not distance-agnostic; ``hsic_unbiased``) as written,
in float64. The kernel never builds an n x n matrix (sums over the k-NN lists), so this also checks that rewrite.

Tolerance 1e-5 absolute: the kernel sums n k float32 products of cosines (each term below 1, about 1e-7 relative
rounding each) into HSIC values of order 1e-3..1e-1 that partly cancel; measured differences are below 3e-7."""

import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import cknna


def _views(n, d1, d2, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1)).astype(np.float32)
    related = (x @ rng.standard_normal((d1, d2)) + 0.5 * rng.standard_normal((n, d2))).astype(np.float32)
    unrelated = rng.standard_normal((n, d2)).astype(np.float32)
    return x, related, unrelated


@pytest.mark.parametrize(("n", "k"), [(7, 2), (30, 5), (120, 10), (60, 59)])  # the smallest k, n - 1 neighbours
def test_cknna_vs_dense_reference(n, k):
    x, related, unrelated = _views(n, 16, 12, n)
    for y in (related, unrelated, x):
        assert float(cknna.cknna(x, y, k)) == pytest.approx(cknna.reference_cknna(x, y, k), abs=1e-5)
    assert float(cknna.cknna(x, related, k)) > float(cknna.cknna(x, unrelated, k))


def test_blocks_of_rows_do_not_change_the_value(monkeypatch):
    """More rows than one block (the neighbour cosines are gathered ROWS rows at a time)."""
    x, related, _ = _views(300, 8, 6, 3)
    whole = float(cknna.cknna(x, related, 10))
    monkeypatch.setattr(cknna, "ROWS", 64)  # 300 rows: 5 blocks, the last one padded
    cknna._neighbour_cosines.clear_cache()
    try:
        assert float(cknna.cknna(x, related, 10)) == pytest.approx(whole, abs=1e-6)
    finally:
        cknna._neighbour_cosines.clear_cache()
    assert whole == pytest.approx(cknna.reference_cknna(x, related, 10), abs=1e-5)


def test_views_are_prepared_once_and_scored_against_many():
    x, related, unrelated = _views(40, 8, 8, 5)
    a = cknna.View(x, 6)
    for y in (related, unrelated):
        assert float(cknna.cknna_views(a, cknna.View(y, 6))) == pytest.approx(cknna.reference_cknna(x, y, 6), abs=1e-5)


def test_refusals():
    x, y, _ = _views(10, 4, 4, 0)
    with pytest.raises(ShapeError, match="k in 2..n-1"):
        cknna.cknna(x, y, 1)
    with pytest.raises(ShapeError, match="k in 2..n-1"):
        cknna.cknna(x, y, 10)
    with pytest.raises(ShapeError, match="n >= 4"):
        cknna.cknna(x[:3], y[:3], 2)
    with pytest.raises(ShapeError, match="same examples"):
        cknna.cknna(x, y[:9], 3)
