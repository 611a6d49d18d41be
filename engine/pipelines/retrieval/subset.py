"""Retrieval on a challenge set, read against size-matched random subsets of the full set.

A challenge set (``engine.pipelines.challenge.run``) keeps fewer ids than the full set, and a smaller pool alone raises
R@1 (chance is 1/N). So ``jobs.retrieval --subset`` scores three things per directed pair, layer and measure: the
full set, the challenge set (its kept ids only) and ``draws`` seeded random subsets of the full set with as many ids
as kept (mean and 2.5-97.5% interval). ``engine.pipelines.retrieval.run`` calls ``score_subset``; the others are pure
functions of the matrices.

    OUT/subset_comparison.csv        SUBSET_COLUMNS
    OUT/figures/subset_by_layer.png  R@1 by layer: full, challenge, size-matched band
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from engine import captions
from engine.pipelines.stages.retrieval import drop_not_encoded, drop_unranked, first_hits, restrict
from engine.stores.records import csv_bytes
from kernels.metrics import ranked_retrieval_metrics, retrieval_metrics, unmeasured

SUBSET_CSV = "subset_comparison.csv"
SUBSET_FIGURE = "figures/subset_by_layer.png"
SUBSET_SETS = ("full", "challenge", "size_matched")
SUBSET_COLUMNS = (
    "lang_a",  # query language
    "lang_b",  # searched language
    "layer",
    "measure",
    "set",  # full, challenge (kept ids only), size_matched (random subsets of the full set, as many ids as kept)
    "metric",  # R@k or MRR
    "value",  # size_matched: the mean over draws
    "low",  # size_matched: 2.5th percentile over draws (= value for the other sets)
    "high",  # size_matched: 97.5th percentile over draws
    "random",  # the metric under random rankings (1/N for R@1 with one partner each)
    "ids",  # distinct ids in queries and candidates
    "draws",  # random subsets drawn (1 for full and challenge)
)


def size_matched_draws(pool: Sequence[str], size: int, draws: int, seed: int, lang_a: str, lang_b: str) -> list:
    """``draws`` random subsets of ``size`` ids of ``pool`` (sorted first), reproducible from ``seed`` and the pair,
    and the same for every layer and measure of the pair, so that curves over layers compare like with like."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{lang_a}|{lang_b}".encode())])
    pool = sorted(pool)
    return [set(rng.choice(pool, size=min(size, len(pool)), replace=False).tolist()) for _ in range(draws)]


def compare_subsets(scores, row_ids, col_ids, kept_ids: set, draws: list, *, ks, ties) -> dict:
    """Metrics of one finite matrix on the full set, the challenge set and each random subset.

    scores: f32[N, M] with every row and column scored (``engine.pipelines.stages.retrieval.drop_not_encoded`` applied).
    Returns {"full": RetrievalMetrics, "challenge": RetrievalMetrics, "size_matched": [RetrievalMetrics, ...],
    "challenge_firsts": the challenge set's per-id hits at rank 1 (``engine.pipelines.stages.retrieval.first_hits``)}.
    """

    def metrics(ids):
        kept, rows, cols = restrict(scores, row_ids, col_ids, ids)
        if not rows or not cols:
            return unmeasured(ks, excluded=len(rows)), {}
        measured, ranks = ranked_retrieval_metrics(kept, rows, cols, ks=ks, ties=ties)
        return measured, first_hits(rows, ranks)

    challenge, firsts = metrics(kept_ids)
    return {
        "full": retrieval_metrics(scores, row_ids, col_ids, ks=ks, ties=ties),
        "challenge": challenge,
        "size_matched": [metrics(d)[0] for d in draws],
        "challenge_firsts": firsts,
    }


def _values(m) -> list[tuple[str, float, float]]:
    return [(f"R@{k}", m.recall[k], m.random_recall[k]) for k in m.recall] + [("MRR", m.mrr, m.random_mrr)]


def comparison_rows(lang_a: str, lang_b: str, layer: int, measure: str, compared: dict, n_ids: dict) -> list[tuple]:
    """SUBSET_COLUMNS rows of one ``compare_subsets`` result; ``n_ids``: set name -> distinct ids."""
    rows = []
    for name in ("full", "challenge"):
        for metric, value, random in _values(compared[name]):
            rows.append((lang_a, lang_b, layer, measure, name, metric, value, value, value, random, n_ids[name], 1))
    draws = compared["size_matched"]
    if draws:
        per_draw = [_values(m) for m in draws]
        for i, (metric, _, _) in enumerate(per_draw[0]):
            values = np.array([d[i][1] for d in per_draw], float)
            randoms = np.array([d[i][2] for d in per_draw], float)
            low, high = np.percentile(values, [2.5, 97.5])
            rows.append(
                (lang_a, lang_b, layer, measure, "size_matched", metric, float(values.mean()), float(low))
                + (float(high), float(randoms.mean()), n_ids["size_matched"], len(draws))
            )
    return rows


def score_subset(matrix, row_ids, col_ids, scored, kept_ids: set, draws: dict, key, config, where, comparison: list):
    """Like ``score_matrix`` (the same five values), on the ids of ``kept_ids`` only; appends the full / challenge /
    size-matched rows of ``where`` = (lang_a, lang_b, layer, measure) to ``comparison``. ``draws[key]``: the random
    subsets of the pair, drawn at its first scored matrix from the ids shared by its rows and columns, then reused
    for every layer. The sets are taken before unranked queries are left out (``drop_unranked``, over all scored
    columns, as in ``score_matrix``), so that non-converged pairs remove those queries only, never candidates or
    draws."""
    measure = where[3]
    full, rows, cols, dropped_a, dropped_b = drop_not_encoded(matrix, row_ids, col_ids, scored, measure=measure)
    pool = set(rows) & set(cols)
    full, rows, unranked = drop_unranked(full, rows)
    if not pool or not rows:
        return unmeasured(tuple(config.ks), excluded=len(rows)), dropped_a, dropped_b, unranked, {}
    kept = kept_ids & pool
    if key not in draws:
        draws[key] = size_matched_draws(pool, len(kept), config.subset_draws, config.subset_seed, *key)
    compared = compare_subsets(full, rows, cols, kept, draws[key], ks=tuple(config.ks), ties=config.ties)
    n_ids = {"full": len(pool), "challenge": len(kept), "size_matched": len(kept)}
    comparison += comparison_rows(*where, compared, n_ids)
    return compared["challenge"], dropped_a, dropped_b, unranked, compared["challenge_firsts"]


def subset_csv_bytes(rows: Sequence[tuple]) -> bytes:
    return csv_bytes(SUBSET_COLUMNS, rows)


PANEL_MAX_PAIRS = 12  # beyond this (4 languages), a panel per query language instead of one per directed pair


def subset_figure(rows: Sequence[tuple], metric: str = "R@1", subtitle: str = "") -> bytes:
    """PNG: ``metric`` by layer for the full set, the challenge set and the size-matched random subsets (a band:
    the 95% interval over draws) of the first measure: one panel per directed pair, or beyond ``PANEL_MAX_PAIRS`` one
    per query language with each set averaged over its searched languages (8 languages: 8 panels, not 56).
    ``subtitle``: the model, dataset and subset; the ids each set rests on are added to it."""
    from engine import figures  # lazy: matplotlib, an optional dependency, only when figures are drawn

    measure = rows[0][3]
    own = [r for r in rows if r[3] == measure and r[5] == metric]
    pairs = list(dict.fromkeys((r[0], r[1]) for r in own))
    if len(pairs) > PANEL_MAX_PAIRS:  # panel key: the query language; title: what its lines average
        panels = {a: f"{a}\u2192* (mean over {sum(p[0] == a for p in pairs)} searched languages)" for a, _ in pairs}
        key = lambda r: r[0]
    else:
        panels = {(a, b): f"{a}\u2192{b}" for a, b in pairs}
        key = lambda r: (r[0], r[1])
    cols = min(4 if len(panels) > 6 else 3, len(panels))
    n_rows = -(-len(panels) // cols)
    width = 3.6 if cols == 4 else 4.2  # four columns: about 1700 px wide
    fig = figures.Figure(figsize=(width * cols, 3.2 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False, sharey=True)
    for ax, (panel, panel_title) in zip(axes.flat, panels.items(), strict=False):
        for name, style in zip(SUBSET_SETS, ("-o", "-s", "--"), strict=True):
            mine = [r for r in own if key(r) == panel and r[4] == name]
            layers = sorted({r[2] for r in mine})
            if not layers:
                continue
            value, low, high = (
                [float(np.mean([r[col] for r in mine if r[2] == layer])) for layer in layers] for col in (6, 7, 8)
            )
            drawn = ax.plot(layers, value, style, label=name, markersize=3)
            if name == "size_matched":
                ax.fill_between(layers, low, high, alpha=0.2, color=drawn[0].get_color())
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel(figures.LAYER_LABEL, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel(f"{metric} ({measure})")
    axes[0][0].legend(fontsize=7)
    ids = {name: [r[10] for r in own if r[4] == name] for name in SUBSET_SETS[:2]}
    n = "n = " + ", ".join(captions.count_range(ids[name], f"ids ({name})") for name in ids if ids[name])
    title = f"{metric}: full set vs challenge set vs size-matched random subsets (95% band)"
    figures.set_title(fig, title, "; ".join(p for p in (subtitle, n) if p), fontsize=9)
    return figures._png(fig)
