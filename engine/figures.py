"""Figures as PNG bytes: the retrieval heatmap and R@k against layer, and what every job's figures share (``_png``).

Plain data in, PNG bytes out, so that callers write them to any kvstore. Uses matplotlib's object API with the Agg
canvas (no pyplot, no global figure state, no display needed).
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"babelgrid's figures need matplotlib ({e}); install it: pip install matplotlib") from None

LAYER_LABEL = "layer (0 = conv stem, 1..L = blocks, L+1 = ln_post)"
# What each similarity measure is, in a panel title a reader understands without the docs (docs/similarity.md).
MEASURE_MEANINGS = {
    "seqsim": "best-matching frame cosine, averaged both ways (SeqSim)",
    "seqsim_a2b": "query frames to their best searched frame (SeqSim, one way)",
    "seqsim_b2a": "searched frames to their best query frame (SeqSim, one way)",
    "mean": "cosine of mean-pooled frames",
    "centre": "cosine of the centre frames",
    "duration": "utterance lengths only, no states (a baseline)",
    "dtw": "mean cosine along the DTW path",
    "ot": "1 - cost of the entropic optimal transport of frames (cosine cost)",
}


def measure_title(measure: str) -> str:
    meaning = MEASURE_MEANINGS.get(measure)
    return f"{measure}: {meaning}" if meaning else measure


ANNOTATE_MAX_LANGS = 16  # beyond this, numbers in the cells are unreadable
LEGEND_MAX_LINES = 12
DPI = 120


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes at ``DPI``, its title (the suptitle: what it shows, model, dataset, n) also in the
    PNG's ``Title`` text chunk, where a test or a reader's tool finds it without reading pixels (``png_title``)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Title": fig.get_suptitle()})
    return buf.getvalue()


def png_title(png: bytes) -> str:
    """The ``Title`` text chunk of PNG bytes written by ``_png``, its lines joined by single spaces ("" if none)."""
    from PIL import Image  # matplotlib's own PNG reader dependency

    with Image.open(io.BytesIO(png)) as image:
        return " ".join(image.text.get("Title", "").split())


def set_title(fig: Figure, *lines: str, fontsize: float = 10) -> None:
    """The figure's suptitle: ``lines`` (what it shows, then what it rests on: ``engine.captions``), empty ones left
    out, each wrapped to the figure's width so that a long model or dataset name is never cut off at its edges."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # an average glyph is about 0.55 em wide
    text = "\n".join(
        textwrap.fill(line, chars, break_on_hyphens=False, break_long_words=False) for line in lines if line
    )
    fig.suptitle(text, fontsize=fontsize)


def heatmap_png(
    grids: dict[str, np.ndarray], langs: list[str], *, title: str, metric: str = "R@1", subtitle: str = ""
) -> bytes:
    """One panel per measure: grids[measure]: f[lang, lang], row = query language, column = searched language.

    NaN cells (pairs not stored or not measured, the diagonal) are left blank. Values are in [0, 1]. ``subtitle``:
    what the figure rests on (model, store, n), under the title.
    """
    n = len(langs)
    # Panels on a grid of at most two columns: four measures at 8 languages make a figure about 1300 px wide (at
    # 100 dpi) whose cell numbers stay legible; small panels get a floor so that titles and ticks fit.
    side = max(4.0, 0.55 * n + 1.5)
    cols = min(len(grids), 2)
    rows = math.ceil(len(grids) / cols)
    fig = Figure(figsize=(side * cols + 1.2, side * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(grids) :]:
        ax.set_axis_off()
    axes = axes[: len(grids)]
    fig.get_layout_engine().set(hspace=0.12)  # room between a panel's x label and the next row's wrapped title
    image = None
    for ax, (measure, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(textwrap.fill(measure_title(measure), width=int(side * 9)), fontsize=9)
        ax.set_xticks(range(n), langs, rotation=90 if n > 6 else 0)
        ax.set_yticks(range(n), langs)
        ax.set_xlabel("searched language")
        ax.set_ylabel("query language")
        if n <= ANNOTATE_MAX_LANGS:
            for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
                value = grid[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color="k" if value > 0.6 else "w")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=metric)
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    return _png(fig)


def by_layer_png(
    curves: dict[str, dict[str, tuple[list, list, list]]], *, metric: str = "R@1", subtitle: str = ""
) -> bytes:
    """One panel per measure: curves[measure][pair label] = (layers, values, random baselines).

    One line per directed pair (labelled up to LEGEND_MAX_LINES pairs, else a faint unlabelled band); a thick line
    for their mean; the mean random baseline dashed.
    """
    cols = min(len(curves), 2)
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(6.0 * cols, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (measure, pairs) in zip(axes, curves.items(), strict=False):
        layers = sorted({layer for ls, _, _ in pairs.values() for layer in ls})
        mean, random = ({layer: [] for layer in layers} for _ in range(2))
        crowded = len(pairs) > LEGEND_MAX_LINES  # then pairs are a grey band behind the mean, unlabelled
        for label, (ls, values, randoms) in sorted(pairs.items()):
            order = np.argsort(ls)
            style = dict(color="tab:blue", lw=0.6, alpha=0.3) if crowded else dict(marker=".", lw=1, alpha=0.8)
            ax.plot(np.asarray(ls)[order], np.asarray(values)[order], label=None if crowded else label, **style)
            for layer, v, r in zip(ls, values, randoms, strict=True):
                if np.isfinite(v):
                    mean[layer].append(v)
                    random[layer].append(r)
        if crowded:  # one legend entry for the band of thin lines
            ax.plot([], [], color="tab:blue", lw=0.6, alpha=0.5, label=f"one directed pair ({len(pairs)} in all)")
        if len(pairs) > 1:
            ax.plot(layers, [np.mean(mean[la]) if mean[la] else np.nan for la in layers], "k-", lw=2.5, label="mean")
        rand = [np.mean(random[la]) if random[la] else np.nan for la in layers]
        ax.plot(layers, rand, color="0.4", ls="--", lw=1.5, label="random ranking (expected)")
        ax.set_title(f"{measure_title(measure)} ({len(pairs)} directed pairs)", fontsize=9)
        ax.set_xlabel(LAYER_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2 if 6 < len(pairs) <= LEGEND_MAX_LINES else 1)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    title = f"{metric} by layer (query \u2192 searched language)"
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    return _png(fig)
