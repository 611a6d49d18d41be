"""Cross-lingual retrieval metrics on a similarity matrix: recall at k and mean reciprocal rank.

Row i of ``scores: f[N, M]`` queries the M columns. Column j is a correct partner of row i when their ids are
equal; a row may have several (FLEURS records several speakers per sentence id) and the query is scored by its
best-ranked correct partner. Rows whose id has no partner among the columns are excluded from every average and
counted in ``RetrievalMetrics.excluded``.

Ranking rule. With ``s`` the best score of row i's correct partners, its rank is::

    optimistic (default):  1 + #{columns j with scores[i, j] > s}
    pessimistic:           1 + #{incorrect columns j with scores[i, j] >= s}

Optimistic is the usual ``(sims > sims[gold]).sum() + 1`` of retrieval papers; it lets a tie between a correct and
an incorrect partner go the correct one's way. Scores with many ties (the duration baseline of ``kernels.pooling``
takes few distinct values) should be reported under both rules; the gap is the credit that ties get.
Scores must be finite (a NaN compares false and would count as a win) and are compared in float32, so float64
scores closer than float32 resolution become ties.

Random baseline: the expectation of each metric when every row ranks its columns by a uniformly random
permutation. With one correct partner among M it is ``R@k = k / M`` and ``MRR = H_M / M``; with ``c`` correct
partners, ``R@k = 1 - C(M - c, k) / C(M, k)`` and the best correct rank r has probability ``C(M - r, c - 1) / C(M, c)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError
from kernels.settings import DEFAULT_KS, TIE_RULES


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
    """Recall at k and MRR over the rows that have a partner, with the random-ranking baseline of each."""

    recall: dict[int, float]  # k -> fraction of queries whose best correct partner ranks <= k
    mrr: float
    random_recall: dict[int, float]  # k -> expectation under uniformly random rankings
    random_mrr: float
    queries: int  # rows with at least one correct partner
    excluded: int  # rows without one, left out of every average


def rank_of_best_partner(scores: jax.Array, correct: jax.Array, pessimistic: bool = False) -> jax.Array:
    """i32[]: 1-based rank of the best-scored correct column of one row (see module docstring for ties).

    scores: f32[M]; correct: bool[M]. A row without a correct column gets rank 1; callers drop it.
    """
    best = jnp.max(jnp.where(correct, scores, -jnp.inf))
    ahead = (scores >= best) if pessimistic else (scores > best)
    return 1 + jnp.sum(ahead & ~correct, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("ks", "pessimistic"))
def _metrics_jit(scores, row_codes, col_codes, ks: tuple[int, ...], pessimistic: bool):
    correct = row_codes[:, None] == col_codes[None, :]  # bool[N, M]
    ranks = jax.vmap(functools.partial(rank_of_best_partner, pessimistic=pessimistic))(scores, correct)
    has_partner = jnp.any(correct, axis=1)
    queries = jnp.sum(has_partner)
    denominator = jnp.maximum(queries, 1)
    recall = jnp.stack([jnp.sum(has_partner & (ranks <= k)) / denominator for k in ks])
    mrr = jnp.sum(jnp.where(has_partner, 1.0 / ranks, 0.0)) / denominator
    partners = jnp.sum(correct, axis=1)  # i32[N], the c of each row
    return recall, mrr, queries, partners, jnp.where(has_partner, ranks, 0)


def _codes(row_ids: Sequence[Hashable], col_ids: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes with equal codes exactly for equal ids; column-only ids never meet a row code."""
    table: dict[Hashable, int] = {}
    row_codes = np.array([table.setdefault(_key(i), len(table)) for i in row_ids], np.int32)
    col_codes = np.array([table.setdefault(_key(i), len(table)) for i in col_ids], np.int32)
    return row_codes, col_codes


def _key(x):
    # numpy scalars hash like Python scalars; unwrap them so that np.int64(3) and 3 are the same id.
    return x.item() if isinstance(x, np.generic) else x


def random_recall_at_k(columns: int, partners: int, k: int) -> float:
    """Probability that a uniformly random ranking of ``columns`` puts one of ``partners`` correct ones in the top k."""
    return 1.0 - math.comb(columns - partners, k) / math.comb(columns, k) if k < columns else 1.0


def random_reciprocal_rank(columns: int, partners: int) -> float:
    """Expected 1 / (best rank of ``partners`` correct columns) under a uniformly random ranking of ``columns``."""
    total = math.comb(columns, partners)
    return sum(math.comb(columns - r, partners - 1) / total / r for r in range(1, columns - partners + 2))


def unmeasured(ks: Sequence[int], excluded: int) -> RetrievalMetrics:
    """The metrics of a matrix with no query that has a partner: NaN (not measured), never 0."""
    nan = {int(k): math.nan for k in ks}
    return RetrievalMetrics(dict(nan), math.nan, dict(nan), math.nan, queries=0, excluded=excluded)


def retrieval_metrics(
    scores,
    row_ids: Sequence[Hashable],
    col_ids: Sequence[Hashable],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ties: str = "optimistic",
) -> RetrievalMetrics:
    """R@k and MRR of scores: f[N, M] (higher = more similar) with ids: N row ids, M column ids (hashable).

    ``ties`` is ``"optimistic"`` or ``"pessimistic"`` (module docstring). The random baseline averages, over the
    queries, the expectations for each query's own number of correct partners.
    """
    return ranked_retrieval_metrics(scores, row_ids, col_ids, ks=ks, ties=ties)[0]


def ranked_retrieval_metrics(
    scores,
    row_ids: Sequence[Hashable],
    col_ids: Sequence[Hashable],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ties: str = "optimistic",
) -> tuple[RetrievalMetrics, np.ndarray]:
    """``retrieval_metrics`` and the ranks they rest on, from the same pass: i32[N], each row's 1-based rank of its
    best correct partner under ``ties``, 0 for a row without a partner (per-query hits: ``ranks == 1``)."""
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 2 or scores.shape != (len(row_ids), len(col_ids)):
        expected = (len(row_ids), len(col_ids))
        raise ShapeError(f"scores must be f32[len(row_ids), len(col_ids)] = {list(expected)}, got {scores.shape}")
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    if not bool(jnp.all(jnp.isfinite(scores))):
        raise ValueError("scores contain NaN or inf; retrieval ranks need finite scores (check the padding lengths)")
    row_codes, col_codes = _codes(row_ids, col_ids)
    recall, mrr, queries, partners, ranks = _metrics_jit(scores, row_codes, col_codes, ks, ties == "pessimistic")
    queries, ranks = int(queries), np.asarray(ranks, np.int32)
    if not queries:
        return unmeasured(ks, excluded=len(row_ids)), ranks
    m = len(col_ids)
    # Rows share few distinct partner counts: weight each count's expectation by how many rows have it.
    counts, rows = np.unique(np.asarray(partners)[np.asarray(partners) > 0], return_counts=True)

    def random_mean(expectation):
        return float(sum(r * expectation(int(c)) for c, r in zip(counts, rows, strict=True)) / max(queries, 1))

    metrics = RetrievalMetrics(
        recall={k: float(r) for k, r in zip(ks, np.asarray(recall), strict=True)},
        mrr=float(mrr),
        random_recall={k: random_mean(lambda c, k=k: random_recall_at_k(m, c, k)) for k in ks},
        random_mrr=random_mean(lambda c: random_reciprocal_rank(m, c)),
        queries=queries,
        excluded=len(row_ids) - queries,
    )
    return metrics, ranks


# ----------------------------------------------------------------------------------------------------------------
# References: slow and obvious, by sorting each row.


def reference_retrieval_metrics(scores, row_ids, col_ids, *, ks=DEFAULT_KS, ties="optimistic") -> RetrievalMetrics:
    """Same result as ``retrieval_metrics``: sort each row with ties in the rule's order and find the first hit.

    The random baseline enumerates every placement of the correct columns, so keep M small (tests only).
    """
    scores = np.asarray(scores, np.float64)
    ranks, counts = [], []
    for i, rid in enumerate(row_ids):
        correct = [cid == rid for cid in col_ids]
        if not any(correct):
            continue
        # Descending score; among equal scores correct columns first (optimistic) or last (pessimistic).
        if ties == "optimistic":
            order = sorted(range(len(col_ids)), key=lambda j: (-scores[i, j], not correct[j]))
        else:
            order = sorted(range(len(col_ids)), key=lambda j: (-scores[i, j], correct[j]))
        ranks.append(next(pos + 1 for pos, j in enumerate(order) if correct[j]))
        counts.append(sum(correct))
    if not ranks:
        return unmeasured(ks, excluded=len(row_ids))
    n = len(ranks)
    randoms = [_enumerated_random(len(col_ids), c, tuple(ks)) for c in counts]
    return RetrievalMetrics(
        recall={k: sum(r <= k for r in ranks) / n for k in ks},
        mrr=sum(1.0 / r for r in ranks) / n,
        random_recall={k: float(np.mean([r[0][k] for r in randoms])) for k in ks},
        random_mrr=float(np.mean([r[1] for r in randoms])),
        queries=len(ranks),
        excluded=len(row_ids) - len(ranks),
    )


@functools.cache
def _enumerated_random(columns: int, partners: int, ks: tuple[int, ...]):
    """({k: E[R@k]}, E[1 / rank]) over every equally likely set of positions of the correct columns."""
    best = [min(positions) for positions in itertools.combinations(range(1, columns + 1), partners)]
    return {k: sum(b <= k for b in best) / len(best) for k in ks}, sum(1.0 / b for b in best) / len(best)
