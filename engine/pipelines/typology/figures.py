"""The typology job's figures as PNG bytes: Mantel r against layer, the dendrograms, and where alignment and
separability meet."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import figures

SIGNIFICANT = 0.05
MARKERS = ("o", "s", "^", "D", "v", "P")


def correlation_png(rows: Sequence[dict], measures: Sequence[str], distances: Sequence[str], subtitle: str) -> bytes:
    """A panel per measure: Mantel r against layer, a line per URIEL distance; filled markers where p < 0.05."""
    cols = min(2, len(measures))
    grid_rows = -(-len(measures) // cols)
    fig = figures.Figure(figsize=(5.2 * cols, 3.6 * grid_rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, cols, squeeze=False)).ravel()
    for ax, measure in zip(axes, measures, strict=False):
        for k, distance in enumerate(distances):
            own = sorted((r for r in rows if r["measure"] == measure and r["distance"] == distance),
                         key=lambda r: r["layer"])  # fmt: skip
            if not own:
                continue
            layers = [r["layer"] for r in own]
            r = np.array([r["r"] for r in own], float)
            p = np.array([r["p_value"] for r in own], float)
            (line,) = ax.plot(layers, r, "-", lw=1.2, label=distance)
            marker = MARKERS[k % len(MARKERS)]
            significant = p < SIGNIFICANT
            ax.plot(np.array(layers)[significant], r[significant], marker, ls="", color=line.get_color(), ms=5)
            ax.plot(np.array(layers)[~significant], r[~significant], marker, ls="", mfc="none",
                    color=line.get_color(), ms=5)  # fmt: skip
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(measure, fontsize=9)
        ax.set_xlabel(figures.LAYER_LABEL, fontsize=8)
        ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
        ax.set_ylabel("Mantel r (model distance vs URIEL)", fontsize=8)
        ax.set_ylim(-1.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    for ax in axes[len(measures) :]:
        ax.set_visible(False)
    figures.set_title(
        fig, "Do the model's language distances follow typology? Mantel r per layer (filled: p < 0.05)", subtitle,
        fontsize=9,
    )  # fmt: skip
    return figures._png(fig)


def _linkage(matrix: np.ndarray):
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    return linkage(squareform(np.asarray(matrix, np.float64), checks=False), method="average")


def dendrogram_png(model: np.ndarray, genetic: np.ndarray | None, languages: Sequence[str], title: str,
                   subtitle: str) -> bytes:  # fmt: skip
    """The languages clustered by the model's distance (average linkage, UPGMA) beside the same languages clustered
    by URIEL's genetic distance."""
    from scipy.cluster.hierarchy import dendrogram

    panels = [(model, title)] + ([(genetic, "URIEL genetic distance")] if genetic is not None else [])
    fig = figures.Figure(figsize=(5.0 * len(panels), 0.35 * len(languages) + 2.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (matrix, name) in zip(axes, panels, strict=True):
        dendrogram(_linkage(matrix), labels=list(languages), orientation="left", ax=ax, color_threshold=0,
                   above_threshold_color="C0")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("distance (average linkage)", fontsize=8)
        ax.set_ylabel("language", fontsize=8)
    figures.set_title(fig, "Languages clustered by the model, beside their family tree", subtitle, fontsize=9)
    return figures._png(fig)


def meet_png(curves: Sequence, subtitle: str) -> bytes:
    """Alignment (solid) and separability (dashed) against depth, a colour per model, the chosen layer ringed."""
    fig = figures.Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, curve in enumerate(curves):
        alignment, separability = curve.shares()
        colour = f"C{k % 10}"
        ax.plot(curve.depth, alignment, "-o", ms=3, color=colour, label=f"{curve.model}: retrieval")
        ax.plot(curve.depth, separability, "--s", ms=3, color=colour, label=f"{curve.model}: language ID")
        pick = curve.chosen()
        if pick is not None:
            low = min(alignment[pick], separability[pick])
            ax.plot([curve.depth[pick]], [low], "o", ms=12, mfc="none", color=colour)
    ax.set_xlabel("depth (layer / (L + 1): 0 = conv stem, 1 = ln_post)", fontsize=8)
    ax.set_ylabel("share of the way from chance to perfect", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures.set_title(
        fig, "Where cross-lingual alignment and language separability meet (ringed: max of the smaller)", subtitle,
        fontsize=9,
    )  # fmt: skip
    return figures._png(fig)
