"""The heads job's figures as PNG bytes: layer x head heatmaps of every metric, and R@1 per language."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from engine.figures import Figure, _png, set_title
from engine.pipelines.heads.table import ATTENTION, HIGHER_IS_BETTER, SINK

FIGURE = "figures/heads.png"
BY_LANGUAGE = "figures/heads_by_language.png"
SHOWN = 12  # languages drawn in heads_by_language.png (all are in heads.parquet)
LABEL_CHARS = 28  # a colour bar label's line, in characters
TITLES = {
    "r1": "SeqSim R@1 change", "language_id": "language-ID accuracy change", "wer": "WER change", "cer": "CER change",
    "importance_contrastive": "importance: contrastive |grad|", "importance_ce": "importance: decoder CE |grad|",
    "attention_distance": "mean attention distance (frames)", "attention_entropy": "attention entropy (nats)",
    "attention_local": "attention share within the local window",
    "attention_sink": "attention share of the top k frames", "attention_first": "attention share of the first k frames",
}  # fmt: skip


def _grid(table_rows, blocks: int, heads: int, metric: str, scored, lang, change: bool) -> np.ndarray:
    """f[block, head] of one metric; blocks above a scored layer (which no ablation of theirs can reach: it is their
    input) are left blank."""
    grid = np.full((blocks, heads), np.nan)
    for b, h, m, s, la, pair, value, _, delta in table_rows:
        if m == metric and s == scored and la == lang and pair is None and (s is None or b <= s):
            grid[b - 1, h] = delta if change else value
    return grid


def _panels(table_rows) -> list[tuple[str, int | None]]:
    present = {(r[2], r[3]) for r in table_rows if r[4] is None and r[5] is None}
    order = ["r1", "language_id", "wer", "cer", "importance_contrastive", "importance_ce", *ATTENTION, *SINK]
    return [(m, s) for m in order for s in sorted({s for mm, s in present if mm == m}, key=lambda x: x or 0)]


def _draw(fig, ax, grid: np.ndarray, title: str, diverging: bool, lower_is_worse: bool = True, peak=None,
          label: str = ""):  # fmt: skip
    if diverging:
        if peak is None:
            peak = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        peak = peak or 1.0
        cmap = "RdBu" if lower_is_worse else "RdBu_r"
        image = ax.imshow(grid, cmap=cmap, vmin=-peak, vmax=peak, aspect="auto")
    else:
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
    blocks, heads = grid.shape
    ax.set_xticks(range(heads), range(heads), fontsize=6)
    ax.set_yticks(range(blocks), range(1, blocks + 1), fontsize=6)
    ax.set_xlabel("head", fontsize=7)
    ax.set_ylabel("block", fontsize=7)
    ax.set_title(title, fontsize=8)
    # The bar's label in the ticks' small type, wrapped to the panel's height: at the default size a long label ran
    # into the next panel and the figure's title.
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(textwrap.fill(label or title, LABEL_CHARS, break_long_words=False), fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _panel_grid(n: int, most_cols: int, blocks: int, heads: int):
    """A figure of ``n`` block x head panels, at most ``most_cols`` a row (the spare ones blank), and its axes."""
    cols = min(most_cols, max(1, n))
    rows = max(1, math.ceil(n / cols))
    side = max(2.6, 0.22 * heads + 1.4)
    fig = Figure(figsize=(side * cols + 0.8, (0.22 * blocks + 1.3) * rows + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes


def heads_png(table_rows, blocks: int, heads: int, subtitle: str = "", sink_frames: int = 0) -> bytes:
    """One panel per metric (and scored layer): every head's value over all languages. Ablation metrics show the
    change from the unablated model (red: worse: R@1 or language ID falls, WER or CER rises; blank: a block above the
    scored layer); importance and attention statistics their value; ``sink_frames``: the k of the sink panels."""
    panels = _panels(table_rows)
    fig, axes = _panel_grid(len(panels), 3, blocks, heads)
    for ax, (metric, scored) in zip(axes, panels, strict=False):
        change = metric in HIGHER_IS_BETTER
        grid = _grid(table_rows, blocks, heads, metric, scored, None, change)
        name = TITLES[metric].replace(" k ", f" {sink_frames} ") if metric in SINK else TITLES[metric]
        title = name + (f", layer {scored}" if scored is not None else "")
        label = f"{name} (ablated \u2212 unablated)" if change else name
        _draw(fig, ax, grid, title, change, HIGHER_IS_BETTER.get(metric, True), label=label)
    set_title(fig, "attention heads: each ablated alone (changes), gradient importance and attention statistics",
              subtitle)  # fmt: skip
    return _png(fig)


def by_language_png(table_rows, blocks: int, heads: int, subtitle: str = "") -> bytes:
    """Per language (at most ``SHOWN``), the change of its R@1 (mean over the pairs it is on) at the last scored
    layer with each head ablated, on one colour scale: a head that matters for one language shows in its panel
    alone."""
    r1 = [r for r in table_rows if r[2] == "r1" and r[4] is not None and r[5] is None]
    last = max((r[3] for r in r1), default=None)
    langs = list(dict.fromkeys(r[4] for r in r1 if r[3] == last))[:SHOWN]
    fig, axes = _panel_grid(len(langs), 4, blocks, heads)
    grids = {lang: _grid(table_rows, blocks, heads, "r1", last, lang, True) for lang in langs}
    values = np.concatenate([g[np.isfinite(g)] for g in grids.values()] or [np.zeros(1)])
    peak = float(np.abs(values).max()) if len(values) else 1.0  # one scale for every language: comparable
    for ax, lang in zip(axes, langs, strict=False):
        _draw(fig, ax, grids[lang], lang, True, peak=peak, label="R@1 change (ablated \u2212 unablated)")
    set_title(fig, f"SeqSim R@1 change per language with each head ablated, layer {last}", subtitle)
    return _png(fig)
