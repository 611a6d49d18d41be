"""What a retrieval run writes: ``retrieval.csv`` (``CSV_COLUMNS``) and its figures, and the choice of the
figures' layer::

    OUT/retrieval.csv                    one row per (lang_a, lang_b, layer, measure, metric)
    OUT/figures/retrieval_heatmap.png    R@1, query language x searched language, at one layer, a panel per measure
    OUT/figures/retrieval_by_layer.png   R@1 against layer per directed pair, a panel per measure, random dashed
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine.pipelines.retrieval.config import RetrievalError
from engine.pipelines.stages.retrieval import DirectedScore, mean_over_pairs
from engine.stores import kv, records
from engine.stores.integrity import write_outputs

CSV_NAME = "retrieval.csv"
FIGURES_DIR = "figures/"
HEATMAP_NAME = "retrieval_heatmap.png"
BY_LAYER_NAME = "retrieval_by_layer.png"
CSV_COLUMNS = (
    "lang_a",  # query language
    "lang_b",  # searched language
    "layer",  # babelgrid layer index: 0 = conv stem, 1..L = blocks, L+1 = ln_post
    "measure",
    "metric",  # R@k or MRR
    "value",
    "random",  # expectation of the metric under uniformly random rankings
    "queries",  # query utterances scored
    "excluded",  # encoded query utterances whose id has no partner among lang_b's encoded utterances
    "dropped_a",  # query utterances not encoded (all-NaN row)
    "dropped_b",  # searched utterances not encoded (all-NaN column)
    "unranked",  # scored query utterances left out because a score of theirs was not measured (ot: not converged)
)
FIGURE_MEASURE = "seqsim"  # measure whose best mean R@1 picks the figure layer


def csv_bytes(scores: Sequence[DirectedScore]) -> bytes:
    """The ``retrieval.csv`` table: CSV_COLUMNS, one row per directed pair, layer, measure and metric."""
    rows = (
        [s.lang_a, s.lang_b, s.layer, s.measure, metric, _na(value), _na(random), s.metrics.queries]
        + [s.metrics.excluded, s.dropped_a, s.dropped_b, s.unranked]
        for s in scores
        for metric, value, random in s.values()
    )
    return records.csv_bytes(CSV_COLUMNS, rows)


def _na(value: float):
    """NA for a metric that was not measured (no query with a partner), so that no reader takes it for 0."""
    return "NA" if math.isnan(value) else value


def pick_figure_layer(scores: Sequence[DirectedScore], asked: int | None) -> int | None:
    """``asked`` if scored, else the layer with the best mean R@k (the first k asked) of seqsim (or of the first
    measure)."""
    layers = sorted({s.layer for s in scores})
    if asked is not None:
        if asked not in layers:
            raise RetrievalError(f"figure layer {asked} was not scored; choose one of {layers}")
        return asked
    if not scores:
        return None
    measures = list(dict.fromkeys(s.measure for s in scores))
    measure = FIGURE_MEASURE if FIGURE_MEASURE in measures else measures[0]
    first_recall = scores[0].values()[0][0]
    means = {layer: value for layer, (value, _) in mean_over_pairs(scores, measure, first_recall).items()}
    return max(layers, key=lambda layer: (means.get(layer, -1.0), -layer))  # ties: the earlier layer


TINY_SET = 20  # a score resting on fewer queries than this is flagged: a few hits swing it by 0.05 or more


def rests_on(scores: Sequence[DirectedScore]) -> str:
    """What the scores rest on, for subtitles and reports: pairs and queries per directed pair."""
    measured = [s.metrics.queries for s in scores if s.metrics.queries]
    if not measured:
        return "no directed pair measured"
    pairs = len({(s.lang_a, s.lang_b) for s in scores if s.metrics.queries})
    low, high = min(measured), max(measured)
    return f"{pairs} directed pairs, n = {low if low == high else f'{low}-{high}'} queries each"


def tiny_scores(scores: Sequence[DirectedScore]) -> list[DirectedScore]:
    """Measured scores that rest on fewer than TINY_SET queries."""
    return [s for s in scores if 0 < s.metrics.queries < TINY_SET]


def figure_pngs(scores: Sequence[DirectedScore], figure_layer: int, subtitle: str, top_layer: int) -> dict[str, bytes]:
    from engine import figures  # lazy: matplotlib, an optional dependency, only when figures are drawn

    measures = list(dict.fromkeys(s.measure for s in scores))
    langs = sorted({s.lang_a for s in scores} | {s.lang_b for s in scores})
    index = {lang: i for i, lang in enumerate(langs)}
    first_k = next(iter(scores[0].metrics.recall))
    metric = f"R@{first_k}"
    grids = {m: np.full((len(langs), len(langs)), np.nan) for m in measures}
    curves: dict[str, dict[str, tuple[list[int], list[float], list[float]]]] = {m: {} for m in measures}
    for s in scores:
        if not s.metrics.queries:
            continue  # nothing measured: an empty heatmap cell and no curve, never a 0
        recall, random = s.metrics.recall[first_k], s.metrics.random_recall[first_k]
        if s.layer == figure_layer:
            grids[s.measure][index[s.lang_a], index[s.lang_b]] = recall
        layers, values, randoms = curves[s.measure].setdefault(f"{s.lang_a}\u2192{s.lang_b}", ([], [], []))
        layers.append(s.layer)
        values.append(recall)
        randoms.append(random)
    at = f"{metric} at layer {figure_layer}" + (" = L+1, the ln_post output" if figure_layer == top_layer else "")
    heatmap_scores = [s for s in scores if s.layer == figure_layer]
    return {
        HEATMAP_NAME: figures.heatmap_png(
            grids, langs, title=at, metric=metric, subtitle=f"{subtitle}\n{rests_on(heatmap_scores)}"
        ),
        BY_LAYER_NAME: figures.by_layer_png(curves, metric=metric, subtitle=f"{subtitle}\n{rests_on(scores)}"),
    }


def write_results(
    out: str, scores: Sequence[DirectedScore], figure_layer: int | None, subtitle: str = "", top_layer: int = -1
) -> tuple[str, list[str]]:
    """Writes the CSV and the figures under ``out``; returns their locations. ``subtitle``: the model and stores
    the figures name; ``top_layer``: L+1, named as the ln_post output."""
    _, store = kv.open_kvstore(out)
    root = out.rstrip("/") + "/"
    writes = {CSV_NAME: csv_bytes(scores)}
    if scores and figure_layer is not None:
        writes |= {
            FIGURES_DIR + name: png for name, png in figure_pngs(scores, figure_layer, subtitle, top_layer).items()
        }
    write_outputs(store, writes, out)
    paths = [root + key for key in writes]
    return paths[0], paths[1:]
