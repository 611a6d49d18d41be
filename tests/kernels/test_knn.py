"""Blocked cosine k-NN against scikit-learn's NearestNeighbors (an implementation we did not write) and a float64
NumPy twin; mutual k-NN against its twin and known answers; cycle k-NN against a plain float64 loop written here and
platonic-rep's ``cycle_knn`` transcribed as written (torch), in both directions. Random Gaussian rows have no ties at
float32 resolution, so neighbour lists must match exactly; the scores are then counts over n rows, and 1e-6 absolute
covers only the float32 mean of n booleans (a relative rounding of about 6e-8)."""

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


def _platonic_cycle_knn(feats_a, feats_b, topk):
    """platonic-rep ``metrics.py`` (github.com/minyoungg/platonic-rep, commit 07ef02a): ``AlignmentMetrics.cycle_knn``
    and its helpers ``compute_nearest_neighbors``, ``compute_knn_accuracy``, as written, in float64 torch; fed unit
    rows, as its pipeline normalises features before it measures."""
    import torch  # only this check needs it
    import torch.nn.functional as F

    def compute_nearest_neighbors(feats, topk=1):
        assert feats.ndim == 2, f"Expected feats to be 2D, got {feats.ndim}"
        knn = (feats @ feats.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk]
        return knn

    def compute_knn_accuracy(knn):
        n = knn.shape[0]
        acc = knn == torch.arange(n, device=knn.device).view(-1, 1, 1)
        acc = acc.float().view(n, -1).max(dim=1).values.mean()
        return acc

    feats_a = F.normalize(torch.tensor(np.asarray(feats_a, np.float64)), dim=-1)
    feats_b = F.normalize(torch.tensor(np.asarray(feats_b, np.float64)), dim=-1)
    knn_A = compute_nearest_neighbors(feats_a, topk)
    knn_B = compute_nearest_neighbors(feats_b, topk)
    return compute_knn_accuracy(knn_A[knn_B]).item()


def _loop_cycle_knn(x, y, k):
    """The definition as a loop, float64: row i scores when some j among its k cosine neighbours in y (itself
    excluded) has i among its own k neighbours in x."""

    def lists(v):
        unit = np.asarray(v, np.float64) / np.linalg.norm(np.asarray(v, np.float64), axis=1, keepdims=True)
        out = []
        for i, row in enumerate(unit @ unit.T):
            order = [j for j in np.argsort(-row, kind="stable") if j != i]
            out.append(set(order[:k]))
        return out

    in_x, in_y = lists(x), lists(y)
    return sum(any(i in in_x[j] for j in in_y[i]) for i in range(len(in_x))) / len(in_x)


@pytest.mark.parametrize(("n", "k"), [(12, 1), (40, 3), (120, 10), (30, 29)])  # k = 1 and k = n - 1 too
def test_cycle_knn_vs_loop_and_platonic_rep_in_both_directions(n, k):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    related = (x @ rng.standard_normal((16, 16)) + 0.8 * rng.standard_normal((n, 16))).astype(np.float32)
    unrelated = rng.standard_normal((n, 16)).astype(np.float32)  # one width: one compiled search per n
    asymmetric = 0
    for y in (related, unrelated, x):
        forward, backward = float(knn.cycle_knn(x, y, k, block=17)), float(knn.cycle_knn(y, x, k, block=17))
        for got, (p, q) in ((forward, (x, y)), (backward, (y, x))):
            want = _loop_cycle_knn(p, q, k)
            assert got == pytest.approx(want, abs=1e-6)
            assert got == pytest.approx(_platonic_cycle_knn(p, q, k), abs=1e-6)
            assert got == pytest.approx(knn.reference_cycle_knn(p, q, k), abs=1e-6)
        asymmetric += forward != backward
    if k == n - 1:  # every other row is a neighbour: every cycle closes
        assert forward == backward == 1.0
    elif k == 1:
        assert not asymmetric  # one neighbour: the two directions agree (test_cycle_knn_known_answers)
    else:
        assert asymmetric  # directed: cycle_knn(x, y) != cycle_knn(y, x) here for some view
    if n == 120:
        assert float(knn.cycle_knn(x, related, k)) > float(knn.cycle_knn(x, unrelated, k)) + 0.3


def test_cycle_knn_known_answers():
    """Out through y's lists, back through x's, on lists given by hand (n = 4, k = 2). Row 3 is in no list of x, so
    no cycle back through x closes on it: cycle(x, y) = 3/4 (rows 0, 1 via 3, row 2 via 0). Out through x and back
    through y every row closes (3 -> 0 -> 3, as y's list of 0 holds 3): cycle(y, x) = 1. With k = 1 the two
    directions always agree (the rows i = x[y[i]] and j = y[x[j]] pair up by j = y[i]), so asymmetry needs k >= 2."""
    x = np.array([[1, 2], [0, 2], [0, 1], [0, 1]], np.int32)
    y = np.array([[3, 1], [3, 2], [3, 0], [0, 1]], np.int32)
    assert float(knn.cycle(x, y)) == 0.75 and float(knn.cycle(y, x)) == 1.0
    assert float(knn.cycle(x, x)) == 0.75  # a view with itself: the rows with a mutual neighbour
    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    rotated = (2.5 * x @ q).astype(np.float32)  # cosines kept: the same lists
    assert float(knn.cycle_knn(x, rotated, 2)) == float(knn.cycle_knn(x, x, 2)) < 1.0  # 0.85: 9 rows, no mutual
    with pytest.raises(ShapeError, match="same examples"):
        knn.cycle_knn(x, x[:50], 2)
