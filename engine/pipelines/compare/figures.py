"""The compare job's figures as PNG bytes: retrieval against normalised depth, and layer x layer heatmaps.

Plain data in, PNG bytes out, with ``engine.figures``' conventions (matplotlib object API, Agg canvas, its DPI).
"""

from __future__ import annotations

import numpy as np

from engine.figures import Figure, _png, set_title  # the canvas, resolution and PNG writer of every babelgrid figure
from engine.pipelines.compare.measures import TITLES as MEASURE_TITLES

DEPTH_LABEL = "depth = layer / (L + 1): 0 = conv stem, 1 = ln_post"
PAST_TOWER_LABEL = "\npast 1: a speech LLM's projector, one block past its tower"


def by_depth_png(curves: dict[str, dict[str, tuple[list, list, list, int]]], *, subtitle: str = "") -> bytes:
    """One panel per metric: curves[metric][model] = (depths, values, randoms, n per layer), pooled over pairs."""
    fig = Figure(figsize=(6.0 * len(curves), 4.2), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    # a projector store sits past its tower's last layer (Family.store_depth): widen the axis to show it
    deepest = max((max(d) for models in curves.values() for d, *_ in models.values() if len(d)), default=1.0)
    for ax, (metric, models) in zip(axes, curves.items(), strict=True):
        for i, (model, (depths, values, randoms, n)) in enumerate(sorted(models.items())):
            order = np.argsort(depths)
            color = f"C{i}"
            ax.plot(np.asarray(depths)[order], np.asarray(values)[order], "o-", color=color, label=f"{model} (n={n})")
            ax.plot(np.asarray(depths)[order], np.asarray(randoms)[order], "--", color=color, lw=1, alpha=0.6)
        ax.plot([], [], "k--", lw=1, alpha=0.6, label="random ranking (expected)")
        ax.set_xlabel(DEPTH_LABEL + (PAST_TOWER_LABEL if deepest > 1.0 else ""))
        ax.set_ylabel(metric)
        ax.set_xlim(-0.03, max(1.0, deepest) + 0.03)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric}, mean over directed language pairs", fontsize=9)
    title = "cross-lingual retrieval by depth"
    set_title(fig, title, subtitle)
    return _png(fig)


def heatmaps_png(grids: dict[str, np.ndarray], layers_a: list[int], layers_b: list[int], **names) -> bytes:
    """``heatmaps_figure`` as PNG bytes."""
    return _png(heatmaps_figure(grids, layers_a, layers_b, **names))


ALPHA = 0.05  # a cell whose permutation p-value is above this is "not above the null"


def heatmaps_figure(
    grids: dict[str, np.ndarray],
    layers_a: list[int],
    layers_b: list[int],
    *,
    model_a: str,
    model_b: str,
    title: str,
    subtitle: str = "",
    p_values: dict[str, np.ndarray] | None = None,
    null_means: dict[str, np.ndarray] | None = None,
) -> Figure:
    """One panel per measure with a value: grids[measure]: f[La, Lb], rows = model a's layers, columns = model b's.
    With the permutation null, ``p_values[measure]`` and ``null_means[measure]`` (f[La, Lb], NaN: no null): cells
    with p above ALPHA are hatched and marked (ns), "not above the null", the subtitle counts them, and each measure
    with a null gets a second panel, the calibrated score: its value less the null mean.

    A measure with no value at any layer pair (PWCCA on the demo: too few examples for its directions) gets no panel,
    which would be a blank square that reads as a broken figure; the subtitle names it instead. At least one grid must
    hold a value (the caller draws no figure from no data)."""
    empty = [m for m, grid in grids.items() if not np.isfinite(grid).any()]
    grids = {m: grid for m, grid in grids.items() if m not in empty}
    if not grids:
        raise ValueError("heatmaps_figure: no measure has a value; draw no figure")
    if empty:
        left_out = ", ".join(MEASURE_TITLES.get(m, m) for m in empty)
        subtitle = "; ".join(p for p in (subtitle, f"not measured (too few examples): {left_out}") if p)
    p_values, null_means = p_values or {}, null_means or {}
    panels = [(MEASURE_TITLES.get(m, m), grid, p_values.get(m)) for m, grid in grids.items()]
    calibrated = [m for m in grids if m in null_means and np.isfinite(null_means[m]).any()]
    panels += [(f"{MEASURE_TITLES.get(m, m)}\nless its null mean", grids[m] - null_means[m], p_values.get(m))
               for m in calibrated]  # fmt: skip
    side_w, side_h = max(3.0, 0.32 * len(layers_b) + 1.4), max(2.6, 0.32 * len(layers_a) + 1.2)
    cols = min(len(grids), 3) if not calibrated else len(grids)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(side_w * cols + 0.8, side_h * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, (name, grid, p) in zip(axes, panels, strict=False):
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="magma", origin="lower", aspect="auto")
        blank = "" if np.isfinite(grid).all() else " (blank: not measured)"
        ax.set_title(name + blank, fontsize=9)
        ax.set_xticks(range(len(layers_b)), layers_b, fontsize=7)
        ax.set_yticks(range(len(layers_a)), layers_a, fontsize=7)
        ax.set_xlabel(f"{model_b} layer", fontsize=8)
        ax.set_ylabel(f"{model_a} layer", fontsize=8)
        if p is not None:
            from matplotlib.patches import Rectangle  # after engine.figures, which names a missing matplotlib

            for i, j in zip(*np.nonzero(p > ALPHA), strict=True):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="0.55", lw=0))
        if len(layers_a) * len(layers_b) <= 100:
            for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
                value = grid[i, j]
                crossed = p is not None and p[i, j] > ALPHA
                text = f"{value:.2f}" + ("\n(ns)" if crossed else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="k" if value > 0.6 else "w")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if any(np.isfinite(p).any() for m, p in p_values.items() if m in grids):
        count = sum(int(np.sum(p > ALPHA)) for m, p in p_values.items() if m in grids)
        permutations = "" if not calibrated else "; second row: each score less the mean of its permutation null"
        note = f"hatched, (ns): not above the permutation null (p > {ALPHA}): {count} cells{permutations}"
        subtitle = "; ".join(part for part in (subtitle, note) if part)
    fig.colorbar(image, ax=list(axes[: len(panels)]), shrink=0.8, label="similarity (below 0: darkest)")
    set_title(fig, title, subtitle)
    return fig
