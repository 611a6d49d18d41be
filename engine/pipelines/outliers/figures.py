"""The outliers job's figure as PNG bytes: layer x language heatmaps of what the largest dimension carries, and
anisotropy and effective rank against layer."""

from __future__ import annotations

import numpy as np

from engine.figures import ANNOTATE_MAX_LANGS, LAYER_LABEL, LEGEND_MAX_LINES, Figure, MaxNLocator, _png, set_title

FIGURE = "figures/outliers.png"


def _heatmap(fig, ax, grid: np.ndarray, layers, langs, title: str, labels=None) -> None:
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", vmin=0.0, vmax=max(1.0, float(np.nanmax(grid)))
                      if np.isfinite(grid).any() else 1.0, aspect="auto")  # fmt: skip
    ax.set_xticks(range(len(layers)), layers, fontsize=7)
    ax.set_yticks(range(len(langs)), langs, fontsize=7)
    ax.set_xlabel(LAYER_LABEL, fontsize=7)
    ax.set_ylabel("language", fontsize=7)
    ax.set_title(title, fontsize=8)
    if len(langs) <= ANNOTATE_MAX_LANGS and len(layers) <= 34:
        for i in range(len(langs)):
            for j in range(len(layers)):
                value = grid[i, j]
                text = "NA" if not np.isfinite(value) else f"{value:.2f}"
                if labels is not None and np.isfinite(value):
                    text += f"\n#{labels[i, j]}"
                ax.text(j, i, text, ha="center", va="center", fontsize=5.5,
                        color="k" if np.isfinite(value) and value > 0.6 else "w")  # fmt: skip
    fig.colorbar(image, ax=ax, shrink=0.8, label="share")


def _curves(ax, table, column: str, langs, ylabel: str) -> None:
    crowded = len(langs) > LEGEND_MAX_LINES
    for lang in langs:
        own = sorted((r for r in table if r["lang"] == lang), key=lambda r: r["layer"])
        style = dict(color="tab:blue", lw=0.6, alpha=0.35) if crowded else dict(marker=".", lw=1)
        ax.plot([r["layer"] for r in own], [r[column] for r in own], label=None if crowded else lang, **style)
    ax.set_xlabel(LAYER_LABEL, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if not crowded:
        ax.legend(fontsize=6, ncols=2)


def outliers_png(table: list[dict], k: float, subtitle: str) -> bytes:
    """Four panels: the largest dimension's share of the mean squared norm (its index in each cell), the outlier
    dimensions' share of SeqSim's matched cosine between translations (NA: no translation pair), anisotropy and
    effective rank against layer, a line per language."""
    layers = sorted({r["layer"] for r in table})
    langs = list(dict.fromkeys(r["lang"] for r in table))
    at = {(r["lang"], r["layer"]): r for r in table}

    def grid(column):
        return np.array([[at[lang, layer][column] for layer in layers] for lang in langs], np.float64)

    labels = np.array([[at[lang, layer]["top_dimension"] for layer in layers] for lang in langs])
    side = max(3.2, 0.32 * len(langs) + 1.6)
    fig = Figure(figsize=(max(11.0, 0.55 * len(layers) * 2 + 3), side * 2 + 1.2), layout="constrained")
    axes = fig.subplots(2, 2)
    _heatmap(fig, axes[0, 0], grid("top_norm_share"), layers, langs,
             "largest dimension's share of the mean squared norm (#: the dimension)", labels)  # fmt: skip
    _heatmap(
        fig,
        axes[0, 1],
        grid("outlier_seqsim_share"),
        layers,
        langs,
        f"outlier dimensions' (magnitude > {k:g} x median) share of SeqSim's cosine between translations",
    )
    _curves(axes[1, 0], table, "anisotropy", langs, "anisotropy (mean cosine of random frame pairs)")
    _curves(axes[1, 1], table, "effective_rank", langs, "effective rank (exp entropy of the covariance spectrum)")
    set_title(fig, "Outlier dimensions, anisotropy and effective rank per layer", subtitle, fontsize=9)
    return _png(fig)
