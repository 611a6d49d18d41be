"""Language x language distances per layer from a similarity store, in two kinds (``KINDS``).

For every stored pair (a, b) of a measure, both directions (a's utterances as queries among b's, and the reverse):

- ``r1``: ``1 - R@1``, R@1 scored as the retrieval job scores it (``engine.pipelines.stages.retrieval``: utterances
  not encoded dropped, unranked queries left out, ``kernels.metrics.retrieval_metrics`` with optimistic ties);
- ``gap``: ``1 - (mean score of parallel pairs - mean score of the other pairs)``: how far translations stand out of
  the crowd, on the measure's own scale (SeqSim's cosine), not only whether they rank first.

The two directions are averaged (the mean of a -> b and b -> a); the diagonal is zero. A pair with no shared id, or
not stored at that layer, is NaN: the run leaves a language out rather than fill it in (``complete``).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

from engine.pipelines.stages.retrieval import drop_not_encoded, drop_unranked
from engine.pipelines.typology.config import KINDS
from engine.stores.similarity import SimilarityError
from kernels.metrics import retrieval_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Geometry:
    languages: tuple[str, ...]
    layers: tuple[int, ...]
    # (measure, kind) -> f64[layer, n, n]: the symmetrised distance, NaN where not measured
    distances: dict[tuple[str, str], np.ndarray]
    # (measure, kind) -> f64[layer, n, n]: one direction, rows the query language (r1: R@1 itself, gap: the gap)
    directed: dict[tuple[str, str], np.ndarray]
    random: dict[str, np.ndarray]  # measure -> f64[layer, n, n]: R@1 of a random ranking, per direction

    def mean_r1(self, measure: str) -> tuple[np.ndarray, np.ndarray]:
        """(R@1, its random baseline) per layer, each the mean over measured directed pairs (NaN: none)."""
        r1, random = self.directed[measure, "r1"], self.random[measure]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no measured pair: NaN, said by the caller
            return np.nanmean(r1, axis=(1, 2)), np.nanmean(np.where(np.isnan(r1), np.nan, random), axis=(1, 2))


def directed_scores(matrix, row_ids, col_ids, scored, measure: str) -> tuple[float, float, float]:
    """(R@1, its random baseline, gap) of one directed matrix; NaN where nothing could be measured."""
    kept, rows, cols, _, _ = drop_not_encoded(matrix, row_ids, col_ids, scored, measure=measure)
    kept, rows, _ = drop_unranked(kept, rows)
    if not rows or not cols:
        return np.nan, np.nan, np.nan
    metrics = retrieval_metrics(kept, rows, cols, ks=(1,))
    r1, random = (metrics.recall[1], metrics.random_recall[1]) if metrics.queries else (np.nan, np.nan)
    parallel = np.asarray(rows, object)[:, None] == np.asarray(cols, object)[None, :]
    values = np.asarray(kept, np.float64)
    if not parallel.any() or parallel.all():
        return r1, random, np.nan
    gap = np.nanmean(values[parallel]) - np.nanmean(values[~parallel])
    return r1, random, float(gap)


def read_geometry(reader, measures, layers, languages) -> Geometry:
    """Every (measure, kind) distance of ``languages`` at ``layers`` from a ``SimilarityReader``."""
    n, index = len(languages), {lang: i for i, lang in enumerate(languages)}
    directed = {(m, k): np.full((len(layers), n, n), np.nan) for m in measures for k in KINDS}
    random = {m: np.full((len(layers), n, n), np.nan) for m in measures}
    for measure in measures:
        for a, b in reader.pairs(measure):
            if a not in index or b not in index:
                continue
            for query, searched in ((a, b), (b, a)):
                try:
                    done = set(reader.done(measure, query, searched))
                except SimilarityError:  # a directional measure stored one way only: the other is not measured
                    continue
                for li, layer in enumerate(layers):
                    if layer not in done:
                        continue
                    matrix, row_ids, col_ids = reader.matrix(measure, query, searched, layer)
                    scored = reader.scored(measure, query, searched, layer)
                    r1, chance, gap = directed_scores(matrix, row_ids, col_ids, scored, measure)
                    i, j = index[query], index[searched]
                    directed[measure, "r1"][li, i, j] = r1
                    random[measure][li, i, j] = chance
                    directed[measure, "gap"][li, i, j] = gap
    distances = {}
    for key, values in directed.items():
        both = 0.5 * (values + np.swapaxes(values, 1, 2))
        both = 1.0 - both
        for li in range(len(layers)):
            np.fill_diagonal(both[li], 0.0)
            np.fill_diagonal(values[li], np.nan)
        distances[key] = both
    return Geometry(tuple(languages), tuple(layers), distances, directed, random)


def complete(matrix: np.ndarray, languages) -> tuple[list[int], list[str]]:
    """(indices kept, languages left out): the languages with missing distances left out one at a time, the one
    missing most first, until the rest is complete."""
    keep = list(range(len(languages)))
    dropped = []
    while keep:
        sub = matrix[np.ix_(keep, keep)]
        holes = np.isnan(sub).sum(axis=1)
        if not holes.any():
            break
        worst = keep[int(np.argmax(holes))]
        keep.remove(worst)
        dropped.append(languages[worst])
    return keep, dropped
