"""Retrieval metrics against a sort-based NumPy reference, with planted ties and rows without partners."""

import math

import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import metrics, settings


def assert_metrics_equal(got, want):
    assert got.queries == want.queries and got.excluded == want.excluded
    assert got.recall.keys() == want.recall.keys()
    for k in want.recall:
        assert got.recall[k] == pytest.approx(want.recall[k], abs=1e-6), f"R@{k}"
        assert got.random_recall[k] == pytest.approx(want.random_recall[k], abs=1e-9), f"random R@{k}"
    assert got.mrr == pytest.approx(want.mrr, abs=1e-6)
    assert got.random_mrr == pytest.approx(want.random_mrr, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", settings.TIE_RULES)
def test_metrics_vs_reference(seed, ties):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 25), rng.integers(1, 14)
    # Few distinct ids (several partners per row), some rows without partners, scores on a coarse grid (ties).
    row_ids = [f"s{i}" for i in rng.integers(0, 12, n)]
    col_ids = [f"s{i}" for i in rng.integers(0, 8, m)]
    scores = rng.integers(-3, 4, (n, m)) / 4.0
    ks = (1, 2, 5, 10, 20)
    got = metrics.retrieval_metrics(scores, row_ids, col_ids, ks=ks, ties=ties)
    assert_metrics_equal(got, metrics.reference_retrieval_metrics(scores, row_ids, col_ids, ks=ks, ties=ties))
    ranked, ranks = metrics.ranked_retrieval_metrics(scores, row_ids, col_ids, ks=ks, ties=ties)
    assert_metrics_equal(ranked, got)
    # Each row's rank by sorting its columns, ties toward its partners (optimistic) or away from them; 0: none.
    for i, row_id in enumerate(row_ids):
        late = [(c == row_id) != (ties == "optimistic") for c in col_ids]  # sorted after equal scores
        order = sorted(range(m), key=lambda j, i=i, late=late: (-scores[i, j], late[j]))
        correct = [c == row_id for c in col_ids]
        assert ranks[i] == next((p + 1 for p, j in enumerate(order) if correct[j]), 0), (i, row_id)


def test_ties_rules_differ_as_documented():
    # Row 0: correct column 0 ties with incorrect columns 1 and 2, one incorrect column scores higher.
    scores = np.array([[0.5, 0.5, 0.5, 0.9]])
    optimistic = metrics.retrieval_metrics(scores, [7], [7, 1, 2, 3], ks=(1, 2, 3))
    pessimistic = metrics.retrieval_metrics(scores, [7], [7, 1, 2, 3], ks=(1, 2, 3), ties="pessimistic")
    assert optimistic.mrr == pytest.approx(1 / 2) and optimistic.recall == {1: 0.0, 2: 1.0, 3: 1.0}
    assert pessimistic.mrr == pytest.approx(1 / 4) and pessimistic.recall == {1: 0.0, 2: 0.0, 3: 0.0}


def test_several_partners_and_missing_ones():
    scores = np.array(
        [
            [0.1, 0.9, 0.3, 0.8],  # id a: partners at columns 0 and 2; best 0.3 has 0.9, 0.8 above: rank 3
            [0.9, 0.2, 0.1, 0.0],  # id z: no partner, excluded
            [0.0, 0.5, 0.4, 0.7],  # id b: partner at column 3, best: rank 1
        ]
    )
    got = metrics.retrieval_metrics(scores, ["a", "z", "b"], ["a", "c", "a", "b"], ks=(1, 5))
    assert got.queries == 2 and got.excluded == 1
    assert got.recall == {1: 0.5, 5: 1.0}
    assert got.mrr == pytest.approx((1 / 3 + 1) / 2)


def test_integer_ids_of_mixed_types():
    scores = np.eye(3)
    got = metrics.retrieval_metrics(scores, np.arange(3), [0, 1, 2])
    assert got.recall[1] == 1.0 and got.mrr == 1.0 and got.excluded == 0


@pytest.mark.parametrize("columns", [1, 2, 7, 100, 2000])
def test_random_baseline_single_partner(columns):
    ids = list(range(columns))
    got = metrics.retrieval_metrics(np.zeros((columns, columns)), ids, ids)
    for k in settings.DEFAULT_KS:
        assert got.random_recall[k] == pytest.approx(min(k, columns) / columns)
    harmonic = sum(1 / r for r in range(1, columns + 1))
    assert got.random_mrr == pytest.approx(harmonic / columns)


def test_random_baseline_several_partners_by_enumeration():
    for columns in range(1, 9):
        for partners in range(1, columns + 1):
            recall, mrr = metrics._enumerated_random(columns, partners, (1, 2, 3, 10))
            for k in (1, 2, 3, 10):
                assert metrics.random_recall_at_k(columns, partners, k) == pytest.approx(recall[k])
            assert metrics.random_reciprocal_rank(columns, partners) == pytest.approx(mrr)
    assert metrics.random_recall_at_k(10, 2, 1) == pytest.approx(2 / 10)
    assert math.isclose(metrics.random_reciprocal_rank(3, 3), 1.0)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="row_ids"):
        metrics.retrieval_metrics(np.zeros((2, 3)), [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        metrics.retrieval_metrics(np.array([[np.nan]]), [1], [1])
    with pytest.raises(ValueError, match="ties"):
        metrics.retrieval_metrics(np.zeros((1, 1)), [1], [1], ties="random")
    # No query has a partner: nothing is measured, so every metric is NaN (never 0), as in the reference.
    for score in (metrics.retrieval_metrics, metrics.reference_retrieval_metrics):
        empty = score(np.zeros((2, 2)), [1, 2], [3, 4])
        assert empty.queries == 0 and empty.excluded == 2
        assert np.isnan([empty.mrr, empty.random_mrr, *empty.recall.values(), *empty.random_recall.values()]).all()
