"""Retrieval on one similarity matrix: the utterances it scored, the queries it can rank, and their R@k and MRR, as
the retrieval job scores it and the typology, compare and heads jobs read it.

A matrix's rows and columns of utterances that were not encoded when it was computed are dropped and counted
(``drop_not_encoded``: the similarity store's done marker records which rows and columns it scored). A measure of
``NAN_MEASURES`` (``ot``, ``engine.stores.similarity``) writes NaN for a score it could not measure; a
query holding such a score cannot be ranked and is left out and counted (``drop_unranked``). NaN or inf among the
scored utterances of any other measure, or inf in ``ot``, is a damaged store: ``RetrievalError``. ``restrict`` keeps
the rows and columns of some ids (a challenge set), ``r1_of_similarity`` scores R@1 per ordered language pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from engine.errors import ShapeError
from engine.pipelines.stages.errors import RetrievalError
from engine.stores.similarity import NAN_MEASURES
from kernels.metrics import RetrievalMetrics, ranked_retrieval_metrics, unmeasured
from kernels.settings import DEFAULT_KS


@dataclasses.dataclass(frozen=True)
class DirectedScore:
    """Retrieval from ``lang_a`` (queries) into ``lang_b`` at one layer under one measure."""

    lang_a: str
    lang_b: str
    layer: int
    measure: str
    metrics: RetrievalMetrics
    dropped_a: int  # rows of utterances not encoded
    dropped_b: int  # columns of utterances not encoded
    unranked: int = 0  # scored queries left out: a score of theirs was not measured (NaN, ot not converged)
    # query id -> (its queries whose partner ranks first, its queries scored): R@1 per id, for the asymmetry
    firsts: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def values(self) -> list[tuple[str, float, float]]:
        """(metric name, value, random baseline) for R@k in ks order, then MRR."""
        m = self.metrics
        return [(f"R@{k}", m.recall[k], m.random_recall[k]) for k in m.recall] + [("MRR", m.mrr, m.random_mrr)]


def mean_over_pairs(scores: Sequence[DirectedScore], measure: str, metric: str) -> dict[int, tuple[float, float]]:
    """layer -> (mean value, mean random baseline) of ``metric`` over the directed pairs that have queries."""
    by_layer: dict[int, list[tuple[float, float]]] = {}
    for s in scores:
        if s.measure == measure and s.metrics.queries:
            value, random = next((v, r) for name, v, r in s.values() if name == metric)
            by_layer.setdefault(s.layer, []).append((value, random))
    return {layer: tuple(np.mean(v, axis=0)) for layer, v in sorted(by_layer.items())}


def drop_not_encoded(scores: np.ndarray, row_ids: Sequence, col_ids: Sequence, scored=None, *, measure=None):
    """Keeps the rows and columns of utterances that were scored (done in the layer store when the matrix was made).

    scores: f32[N, M]. ``scored``: ``(bool[N], bool[M])`` as the similarity store's done marker records them
    (``SimilarityReader.scored``). Only for matrices written before markers recorded them (``scored=None``) are
    they inferred: a column is dropped when it is NaN on every row, a row when it is NaN on every remaining column.
    Returns (scores f32[n, m], row_ids, col_ids, dropped rows, dropped columns). NaN or inf left among scored
    utterances is an error (the store is damaged), except NaN where ``measure`` is one of ``NAN_MEASURES``: those
    scores were not measured and are kept as NaN for ``drop_unranked``.
    """
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2 or scores.shape != (len(row_ids), len(col_ids)):
        expected = [len(row_ids), len(col_ids)]
        raise ShapeError(f"scores must be f32[len(row_ids), len(col_ids)] = {expected}, got {list(scores.shape)}")
    if scored is None:
        nan = np.isnan(scores)
        keep_cols = ~nan.all(axis=0)
        keep_rows = ~nan[:, keep_cols].all(axis=1) if keep_cols.any() else np.zeros(len(row_ids), bool)
    else:
        keep_rows, keep_cols = (np.asarray(m, bool) for m in scored)
        if keep_rows.shape != (len(row_ids),) or keep_cols.shape != (len(col_ids),):
            raise ShapeError(f"scored masks must be bool[{len(row_ids)}] and bool[{len(col_ids)}]")
    kept = scores[np.ix_(keep_rows, keep_cols)]
    bad = np.isinf(kept) if measure in NAN_MEASURES else ~np.isfinite(kept)
    if bad.any():
        which = "inf" if measure in NAN_MEASURES else "NaN or inf"
        raise RetrievalError(
            f"{int(bad.sum())} scores{'' if measure is None else f' of measure {measure!r}'} are {which} in rows and "
            "columns of encoded utterances: the similarity store is damaged or incomplete (only "
            f"{sorted(NAN_MEASURES)} write NaN, for scores they could not measure): recompute the pair "
            "(python -m jobs.seqsim; delete its done markers to force it)"
        )
    rows = [r for r, k in zip(row_ids, keep_rows, strict=True) if k]
    cols = [c for c, k in zip(col_ids, keep_cols, strict=True) if k]
    return kept, rows, cols, int((~keep_rows).sum()), int((~keep_cols).sum())


def drop_unranked(scores: np.ndarray, row_ids: Sequence) -> tuple[np.ndarray, list, int]:
    """Leaves out the queries (rows) that hold a NaN score: a candidate whose score is unknown makes the query's
    ranking unknown. Returns (scores f32[n', m], row_ids, rows left out)."""
    ranked = ~np.isnan(scores).any(axis=1)
    rows = [r for r, k in zip(row_ids, ranked, strict=True) if k]
    return scores[ranked], rows, int((~ranked).sum())


def first_hits(row_ids: Sequence, ranks: np.ndarray) -> dict[str, tuple[int, int]]:
    """Query id -> (its rows whose best correct partner ranks first, its rows with a partner), from the ranks of
    ``kernels.metrics.ranked_retrieval_metrics`` (0: no partner, left out). An id has several rows where it was
    recorded several times."""
    firsts: dict[str, list[int]] = {}
    for row_id, rank in zip(row_ids, np.asarray(ranks).tolist(), strict=True):
        if rank:
            count = firsts.setdefault(row_id, [0, 0])
            count[0] += rank == 1
            count[1] += 1
    return {row_id: (hits, n) for row_id, (hits, n) in firsts.items()}


def score_matrix(
    scores, row_ids, col_ids, *, scored=None, ks=DEFAULT_KS, ties="optimistic", measure=None
) -> tuple[RetrievalMetrics, int, int, int, dict[str, tuple[int, int]]]:
    """RetrievalMetrics of one f32[N, M] matrix over its scored utterances (``drop_not_encoded``) and ranked
    queries (``drop_unranked``), with the counts of rows and columns not encoded and of queries unranked, and the
    per-id hits at rank 1 (``first_hits``) of the queries scored."""
    kept, rows, cols, dropped_rows, dropped_cols = drop_not_encoded(scores, row_ids, col_ids, scored, measure=measure)
    kept, rows, unranked = drop_unranked(kept, rows)
    if not rows or not cols:
        return unmeasured(ks, excluded=len(rows)), dropped_rows, dropped_cols, unranked, {}
    metrics, ranks = ranked_retrieval_metrics(kept, rows, cols, ks=ks, ties=ties)
    return metrics, dropped_rows, dropped_cols, unranked, first_hits(rows, ranks)


def restrict(scores, row_ids: Sequence, col_ids: Sequence, ids: set):
    """The rows and columns of f32[N, M] ``scores`` whose id is in ``ids``: (f32[n, m], row ids, col ids)."""
    rows = np.array([r in ids for r in row_ids], bool)
    cols = np.array([c in ids for c in col_ids], bool)
    kept = np.asarray(scores)[np.ix_(rows, cols)]
    return (
        kept,
        [r for r, k in zip(row_ids, rows, strict=True) if k],
        [c for c, k in zip(col_ids, cols, strict=True) if k],
    )


def r1_of_similarity(sims: np.ndarray, label: np.ndarray, ids, n_langs: int) -> np.ndarray:
    """f64[language, language]: R@1 of every ordered pair (a, b), a != b, from any similarity of every utterance to
    every other, ``sims: f[utterance, utterance]`` (the heads job's SeqSim, the neurons job's mean-pooled cosine,
    ``engine.pipelines.neurons.intervene.r1_by_pair``), higher is more similar: the share of a's utterances (``label``
    a) whose most similar utterance of b is its translation (the same id); queries with no translation in b are left
    out, and a pair with none, and the diagonal, are NaN; so is every pair searching a language of one utterance,
    whose R@1 would be 1 whatever the similarity (the heads job's --utterances 1 wrote 1.0 for every head)."""
    ids = np.asarray(ids)
    out = np.full((n_langs, n_langs), np.nan)
    for b in range(n_langs):
        cols = np.flatnonzero(label == b)
        if len(cols) < 2:
            continue
        hit = ids[cols[np.argmax(sims[:, cols], axis=1)]] == ids
        partner = np.isin(ids, ids[cols])
        for a in range(n_langs):
            rows = (label == a) & partner
            if a != b and rows.any():
                out[a, b] = hit[rows].mean()
    return out
