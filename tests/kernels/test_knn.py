"""Blocked cosine k-NN against scikit-learn's NearestNeighbors (an implementation we did not write) and a float64
NumPy twin; mutual k-NN against its twin and known answers. Random Gaussian rows have no ties at float32 resolution,
so neighbour lists must match exactly."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from engine.errors import ShapeError
from kernels import knn


@pytest.mark.parametrize("block", [7, 64, 1024])  # blocks that do not divide n, one block, more than n
def test_knn_vs_sklearn_and_reference(block):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 12)).astype(np.float32) + 0.5
    got = np.asarray(knn.knn(x, 5, block=block))
    # sklearn's first neighbour of a point in the fitted set is the point itself: ask for k + 1 and drop it.
    ref = NearestNeighbors(n_neighbors=6, metric="cosine").fit(x).kneighbors(x, return_distance=False)
    assert np.all(ref[:, 0] == np.arange(90))
    np.testing.assert_array_equal(got, ref[:, 1:])
    np.testing.assert_array_equal(got, knn.reference_knn(x, 5))


def test_mutual_knn_vs_reference_and_known_answers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 16)).astype(np.float32)
    y = (x @ rng.standard_normal((16, 10)) + 0.8 * rng.standard_normal((120, 10))).astype(np.float32)
    got = float(knn.mutual_knn(x, y, 8, block=50))
    assert got == pytest.approx(knn.reference_mutual_knn(x, y, 8), abs=1e-6)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert float(knn.mutual_knn(x, 3.0 * x @ q.astype(np.float32), 8)) == 1.0  # cosine is kept by rotation, scale
    unrelated = rng.standard_normal((120, 16)).astype(np.float32)
    assert float(knn.mutual_knn(x, unrelated, 8)) < 0.2  # chance is k / (n - 1) = 0.067


def test_arguments_are_checked():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ShapeError, match="k must be in 1..n-1"):
        knn.knn(x, 10)
    with pytest.raises(ShapeError, match="same examples"):
        knn.mutual_knn(x, np.zeros((9, 3), np.float32), 2)
