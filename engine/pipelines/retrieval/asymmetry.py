"""Retrieval's directional asymmetry: R@1 a -> b against b -> a of each stored pair, layer and measure, on the same
ids, with an exact sign test::

    OUT/asymmetry.csv                    ASYMMETRY_COLUMNS, one row per (stored pair {a, b}, layer, measure)
    OUT/figures/retrieval_asymmetry.png  the asymmetry against layer, a line per pair, a panel per measure, p < 0.05
                                         marked, a zero line

Retrieval runs both ways (``engine.pipelines.retrieval.run``), and a -> b need not retrieve as well as b -> a. The
two directions are compared on the ids scored in both: ids that are queries with a partner in a -> b (after dropped,
excluded and unranked queries) and also in b -> a. Each such id has a hit at rank 1 per direction (R@1 under
``--ties``, whatever ``--ks``); an id recorded several times in a language has the fraction of its recordings
ranked first. ``r1_a2b`` and ``r1_b2a`` are the mean hit over those shared ids, so they may differ from
``retrieval.csv``'s R@1, which averages each direction's own queries (recordings), where the directions' query sets
or recordings differ. ``asymmetry = r1_a2b - r1_b2a``. The discordant ids (``a2b_only``: hit in a -> b more than in
b -> a, with one recording each: hit a -> b and missed b -> a; ``b2a_only`` the other way) feed a two-sided exact
sign test, ``scipy.stats.binomtest(a2b_only, a2b_only + b2a_only, 0.5)``: ``p_value`` is NA without discordant ids,
and r1, asymmetry, the discordant counts and p are NA (``n_queries`` 0) where no id is scored both ways. The p-values
are per row, uncorrected for the many (pair, layer, measure) rows a run tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from engine import captions, figures
from engine.pipelines.stages.retrieval import DirectedScore
from engine.stores import records

ASYMMETRY_CSV = "asymmetry.csv"
ASYMMETRY_FIGURE = "figures/retrieval_asymmetry.png"
SIGNIFICANT = 0.05  # the figure's marked points and the report's line: p below this


class Asymmetry(NamedTuple):
    """One ``asymmetry.csv`` row; NaN (floats) and None (counts) are written NA: not measured."""

    lang_a: str  # first language of the stored pair
    lang_b: str  # second language of the stored pair
    layer: int
    measure: str
    r1_a2b: float  # R@1 of lang_a's queries searching lang_b, mean over the shared ids
    r1_b2a: float  # R@1 of lang_b's queries searching lang_a, mean over the same ids
    asymmetry: float  # r1_a2b - r1_b2a
    n_queries: int  # ids scored in both directions
    a2b_only: int | None  # ids that hit in a -> b more than in b -> a
    b2a_only: int | None  # ids that hit in b -> a more than in a -> b
    p_value: float  # exact two-sided sign test over the discordant ids; NaN without any


ASYMMETRY_COLUMNS = Asymmetry._fields


def pair_asymmetry(a2b: DirectedScore, b2a: DirectedScore) -> Asymmetry:
    """The row of one stored pair's two directions at one layer and measure (the module docstring)."""
    shared = sorted(a2b.firsts.keys() & b2a.firsts.keys())
    where = (a2b.lang_a, a2b.lang_b, a2b.layer, a2b.measure)
    if not shared:
        return Asymmetry(*where, math.nan, math.nan, math.nan, 0, None, None, math.nan)
    (hits_ab, n_ab), (hits_ba, n_ba) = (np.array([s.firsts[i] for i in shared]).T for s in (a2b, b2a))
    r1_ab, r1_ba = float(np.mean(hits_ab / n_ab)), float(np.mean(hits_ba / n_ba))
    ahead = np.sign(hits_ab * n_ba - hits_ba * n_ab)  # the hit fractions compared exactly, in integers
    a2b_only, b2a_only = int((ahead > 0).sum()), int((ahead < 0).sum())
    discordant = a2b_only + b2a_only
    p = float(stats.binomtest(a2b_only, discordant, 0.5).pvalue) if discordant else math.nan
    return Asymmetry(*where, r1_ab, r1_ba, r1_ab - r1_ba, len(shared), a2b_only, b2a_only, p)


def asymmetry_rows(scores: Sequence[DirectedScore]) -> list[Asymmetry]:
    """One row per stored pair, layer and measure scored in both directions (a layer missing in either is left out,
    as it is from ``retrieval.csv``), in ``scores``' order. ``scores`` as ``run.compute_scores`` returns them: each
    stored pair's a -> b scores come before its b -> a ones, which gives the pair's order."""
    by_direction = {(s.measure, s.lang_a, s.lang_b, s.layer): s for s in scores}
    stored: dict[tuple[str, frozenset], tuple[str, str]] = {}
    for s in scores:
        stored.setdefault((s.measure, frozenset((s.lang_a, s.lang_b))), (s.lang_a, s.lang_b))
    return [
        pair_asymmetry(s, by_direction[s.measure, s.lang_b, s.lang_a, s.layer])
        for s in scores
        if stored[s.measure, frozenset((s.lang_a, s.lang_b))] == (s.lang_a, s.lang_b)
        and (s.measure, s.lang_b, s.lang_a, s.layer) in by_direction
    ]


def _cell(value):
    return "NA" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def csv_bytes(rows: Sequence[Asymmetry]) -> bytes:
    """The ``asymmetry.csv`` table: ASYMMETRY_COLUMNS, NA where not measured, never 0."""
    return records.csv_bytes(ASYMMETRY_COLUMNS, ([_cell(v) for v in row] for row in rows))


HIGHLIGHTED = 3  # pairs named in the legend of a panel with more pairs than figures.LEGEND_MAX_LINES


def figure_png(rows: Sequence[Asymmetry], subtitle: str) -> bytes:
    return figures._png(figure(rows, subtitle))


def figure(rows: Sequence[Asymmetry], subtitle: str):
    """The asymmetry against layer, one line per stored pair, a panel per measure; points with p < SIGNIFICANT
    ringed in black; a zero line. Rows not measured are left out (a gap, never a 0). Every line is named in the
    legend; past ``figures.LEGEND_MAX_LINES`` pairs, the ``HIGHLIGHTED`` pairs of the largest asymmetry are drawn in
    colour and named, the others thin and grey under one legend entry, with the mean over pairs."""
    measured = [r for r in rows if not math.isnan(r.asymmetry)]
    measures = list(dict.fromkeys(r.measure for r in measured))
    cols = min(len(measures), 2)
    n_rows = math.ceil(len(measures) / cols)
    fig = figures.Figure(figsize=(6.0 * cols, 4.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    for ax, measure in zip(axes, measures, strict=False):
        own = [r for r in measured if r.measure == measure]
        pairs = list(dict.fromkeys((r.lang_a, r.lang_b) for r in own))
        crowded = len(pairs) > figures.LEGEND_MAX_LINES  # then the largest few named, the rest thin and grey
        lines = {p: sorted((r for r in own if (r.lang_a, r.lang_b) == p), key=lambda r: r.layer) for p in pairs}
        named = set(sorted(pairs, key=lambda p: -max(abs(r.asymmetry) for r in lines[p]))[:HIGHLIGHTED])
        for a, b in pairs:
            line = lines[(a, b)]
            label = f"{a}\u2192{b} \u2212 {b}\u2192{a}"
            if crowded and (a, b) not in named:
                style, label = dict(lw=0.6, alpha=0.4, color="0.6"), None
            else:
                style = dict(marker=".", lw=1.6 if crowded else 1, alpha=0.9 if crowded else 0.8, zorder=2)
            drawn = ax.plot([r.layer for r in line], [r.asymmetry for r in line], label=label, **style)
            marked = [r for r in line if r.p_value < SIGNIFICANT]  # NaN (no discordant id) is never marked
            ax.plot([r.layer for r in marked], [r.asymmetry for r in marked], "o", color=drawn[0].get_color(),
                    markeredgecolor="k", markersize=6, zorder=3)  # fmt: skip
        if crowded:
            ax.plot([], [], lw=0.6, color="0.6", label=f"each other pair ({len(pairs) - len(named)}: asymmetry.csv)")
            layers = sorted({r.layer for r in own})
            ax.plot(layers, [np.mean([r.asymmetry for r in own if r.layer == la]) for la in layers], "k-", lw=2.2,
                    label=f"mean over the {len(pairs)} pairs")  # fmt: skip
        ax.plot([], [], "o", color="w", markeredgecolor="k", label=f"p < {SIGNIFICANT} (sign test, uncorrected)")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_title(f"{figures.measure_title(measure)} ({len(pairs)} pairs)", fontsize=9)
        ax.set_xlabel(figures.LAYER_LABEL)
        ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
        ax.set_ylabel("R@1 a\u2192b \u2212 R@1 b\u2192a (same ids)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2 if 6 < len(pairs) <= figures.LEGEND_MAX_LINES else 1)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    n = "n = " + captions.count_range((r.n_queries for r in measured), "ids scored both ways per pair")
    figures.set_title(fig, "R@1 asymmetry by layer: each pair's two directions on the same ids", subtitle, n)
    return fig


def asymmetry_writes(rows: Sequence[Asymmetry], subtitle: str) -> dict[str, bytes]:
    """The CSV (always, its header alone without rows) and the figure (when some row was measured)."""
    writes = {ASYMMETRY_CSV: csv_bytes(rows)}
    if any(not math.isnan(r.asymmetry) for r in rows):
        writes[ASYMMETRY_FIGURE] = figure_png(rows, subtitle)
    return writes


def asymmetry_report(rows: Sequence[Asymmetry], out: str) -> str:
    """One line: the largest significant asymmetry (the largest |asymmetry| at p < SIGNIFICANT), or that none is."""
    tested = sum(not math.isnan(r.p_value) for r in rows)
    where = f"{out.rstrip('/')}/{ASYMMETRY_CSV}"
    significant = [r for r in rows if r.p_value < SIGNIFICANT]
    if not significant:
        return (
            f"asymmetry: no pair's two directions differ in R@1 at p < {SIGNIFICANT} ({tested} tested, sign test): "
            f"{where}"
        )
    top = max(significant, key=lambda r: (abs(r.asymmetry), -r.p_value))
    return (
        f"asymmetry: largest at p < {SIGNIFICANT} ({len(significant)} of {tested} tested, sign test, uncorrected): "
        f"{top.measure} layer {top.layer}, R@1 {top.lang_a}->{top.lang_b} {top.r1_a2b:.3f} against "
        f"{top.lang_b}->{top.lang_a} {top.r1_b2a:.3f} ({top.asymmetry:+.3f}; {top.a2b_only} against {top.b2a_only} "
        f"discordant of {top.n_queries} ids, p = {top.p_value:.2g}): {where}"
    )
