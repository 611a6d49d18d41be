"""The series job's figures as PNG bytes: layer x step heatmaps, and the best layer over the series.

A heatmap's columns are the series' stores in order (labelled by their value: a step, a size); its rows are depth,
``layer / (L + 1)``, so that models of different depths share one axis: each cell spans its layer's depth to half way
to the layers beside it, so a deeper model's column has more, thinner cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import figures

DEPTH_LABEL = "depth, layer / (L + 1): 0 = stem"
PANELS = (  # (table, value column, title, colour map, centred at 0, what the colour bar counts)
    ("retrieval.csv", "r1", "R@1, mean over directed pairs", "viridis", False, "R@1"),
    ("centred.csv", "delta", "R@1 change with each language's mean removed", "RdBu_r", True,
     "R@1 change (centred \u2212 raw)"),
    ("lid.csv", "accuracy", "language-ID accuracy", "viridis", False, "accuracy"),
    ("cka.csv", "cka", "linear CKA with the final model's layer at the same depth", "magma", False, "linear CKA"),
)  # fmt: skip
COLUMN_OF = {  # the position of a value column in each table's rows (run.py's columns)
    ("retrieval.csv", "r1"): 7, ("centred.csv", "delta"): 9, ("lid.csv", "accuracy"): 4, ("cka.csv", "cka"): 7,
}  # fmt: skip


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cells(rows: Sequence[tuple], name: str, column: int) -> dict[str, list[tuple[float, float]]]:
    """model -> (depth, value) of its layers; retrieval and centred rows are the pooled (``all``) ones."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if name in ("retrieval.csv", "centred.csv") and r[4] != "all":
            continue
        v = r[column]
        out.setdefault(r[0], []).append((float(r[3]), np.nan if v is None else float(v)))
    return out


def _edges(depths: np.ndarray) -> np.ndarray:
    mid = (depths[1:] + depths[:-1]) / 2
    first = depths[0] - (mid[0] - depths[0] if len(mid) else 0.5)
    last = depths[-1] + (depths[-1] - mid[-1] if len(mid) else 0.5)
    return np.concatenate([[first], mid, [last]])


def heatmaps_png(tables: dict, models: Sequence[str], values: Sequence, axis: str, subtitle: str) -> bytes:
    fig = figures.Figure(figsize=(max(7.0, 0.5 * len(models) + 5.0), 7.6), layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    for ax, (name, column, title, cmap, centred, counts) in zip(axes, PANELS, strict=True):
        cells = _cells(tables[name], name, COLUMN_OF[name, column])
        found = [v for m in models for _, v in cells.get(m, []) if np.isfinite(v)]
        if centred:
            top = max([abs(v) for v in found] + [1e-6])
            lo, hi = -top, top
        else:
            lo, hi = (min(found), max(found)) if found else (0.0, 1.0)
            hi = hi if hi > lo else lo + 1e-6
        image = None
        for i, model in enumerate(models):
            own = sorted(cells.get(model, []))
            if not own:
                continue
            depth = np.array([d for d, _ in own])
            grid = np.ma.masked_invalid(np.array([[v] for _, v in own]))
            image = ax.pcolormesh([i - 0.5, i + 0.5], _edges(depth), grid, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(models)), [_label(v) for v in values], rotation=90 if len(models) > 8 else 0,
                      fontsize=7)  # fmt: skip
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_xlabel(axis, fontsize=8)
        ax.set_ylabel(DEPTH_LABEL, fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=ax, shrink=0.9).set_label(counts, fontsize=8)
    figures.set_title(fig, "Layer x series: where alignment emerges", subtitle, fontsize=9)
    return figures._png(fig)


def best_layer_png(best: Sequence[tuple], axis: str, subtitle: str) -> bytes:
    """The depth of the best-R@1 layer and of the meeting layer against the series' values (positions when the
    values are not numbers), and the best R@1 below."""
    x = np.array([float(r[1]) for r in best])
    fig = figures.Figure(figsize=(6.4, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    top.plot(x, [np.nan if r[3] is None else r[3] for r in best], "o-", label="best R@1 layer")
    top.plot(x, [np.nan if r[6] is None else r[6] for r in best], "s--", label="alignment meets separability")
    top.set_ylabel(DEPTH_LABEL, fontsize=8)
    top.set_ylim(-0.05, 1.05)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.plot(x, [r[4] for r in best], "o-", color="k", label="best layer's R@1")
    bottom.set_ylabel("R@1 (mean over pairs)", fontsize=8)
    bottom.set_xlabel(axis, fontsize=8)
    bottom.grid(alpha=0.3)
    figures.set_title(fig, "The best layer over the series", subtitle, fontsize=9)
    return figures._png(fig)


def series_figures(tables: dict, values: Sequence, axis: str, subtitle: str) -> dict[str, bytes]:
    models = [r[0] for r in tables["best.csv"]]
    return {
        "figures/heatmaps.png": heatmaps_png(tables, models, values, axis, subtitle),
        "figures/best_layer.png": best_layer_png(tables["best.csv"], axis, subtitle),
    }
