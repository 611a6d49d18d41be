"""The sae job's figures as PNG bytes: what the SAEs keep by layer, and the language of their features by layer."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.lines import Line2D

from engine import figures


def _layer_axis(ax, ylabel: str) -> None:
    ax.set_xlabel(figures.LAYER_LABEL, fontsize=8)
    ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def kept_png(rows: Sequence[dict], subtitle: str) -> bytes:
    """Panels against layer: FVU; retrieval R@1 and language ID on stored and reconstructed states; dead and dense
    shares; and, where the run decoded (``--model``), early-exit WER and CER from the stored and reconstructed
    layer."""
    decoded = any(np.isfinite(r.get("wer", np.nan)) for r in rows)
    fig = figures.Figure(figsize=(17.0 if decoded else 13.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 4 if decoded else 3)
    layers = [r["layer"] for r in rows]
    axes[0].plot(layers, [r["fvu"] for r in rows], "-o", ms=4)
    _layer_axis(axes[0], "fraction of variance unexplained")
    axes[0].set_ylim(bottom=0)
    for key, label, colour in (("r1", "retrieval R@1", "C0"), ("lid", "language ID", "C1")):
        axes[1].plot(layers, [r[key] for r in rows], "-o", ms=4, color=colour, label=f"{label}, stored")
        axes[1].plot(layers, [r[f"{key}_reconstructed"] for r in rows], "--s", ms=4, color=colour,
                     label=f"{label}, reconstructed")  # fmt: skip
    _layer_axis(axes[1], "score")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7)
    axes[2].plot(layers, [r["dead_share"] for r in rows], "-o", ms=4, label="dead (never fire)")
    axes[2].plot(layers, [r["dense_share"] for r in rows], "-s", ms=4, label="dense (fire on > 10% of frames)")
    _layer_axis(axes[2], "share of features")
    axes[2].legend(fontsize=7)
    if decoded:
        for key, label, colour in (("wer", "WER", "C2"), ("cer", "CER", "C3")):
            axes[3].plot(layers, [r[key] for r in rows], "-o", ms=4, color=colour, label=f"{label}, stored")
            axes[3].plot(layers, [r[f"{key}_reconstructed"] for r in rows], "--s", ms=4, color=colour,
                         label=f"{label}, reconstructed")  # fmt: skip
        _layer_axis(axes[3], "early-exit error rate (lower is better)")
        axes[3].set_ylim(bottom=0)
        axes[3].legend(fontsize=7)
    figures.set_title(fig, "What each layer's sparse autoencoder keeps", subtitle, fontsize=9)
    return figures._png(fig)


def languages_png(rows: Sequence[dict], selective: np.ndarray, languages: Sequence[str], subtitle: str) -> bytes:
    return figures._png(languages_figure(rows, selective, languages, subtitle))


def languages_figure(rows: Sequence[dict], selective: np.ndarray, languages: Sequence[str], subtitle: str):
    """Left: shares of language-selective and shared features against layer. Right: selective features per
    language and layer (``selective``: i64[layer, language]), its colour bar labelled; where every count is 0, the
    panel says so in words instead of drawing a blank heatmap."""
    fig = figures.Figure(figsize=(11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = [r["layer"] for r in rows]
    left.plot(layers, [r["selective_share"] for r in rows], "-o", ms=4, label="language-selective (LAPE)")
    left.plot(layers, [r["shared_share"] for r in rows], "-s", ms=4, label="shared by every language")
    _layer_axis(left, "share of live features")
    left.legend(fontsize=7)
    right.set_xlabel("layer", fontsize=8)
    right.set_ylabel("language", fontsize=8)
    if not np.any(np.asarray(selective)):
        right.set_title("language-selective features: none at any layer (every count is 0)", fontsize=9)
        said = textwrap.fill(", ".join(languages), 60)
        right.text(0.5, 0.5, f"no feature is selective for one of\n{said}\nat layers "
                   f"{', '.join(str(x) for x in layers)}", ha="center", va="center", transform=right.transAxes,
                   fontsize=8)  # fmt: skip
        right.set_xticks([])
        right.set_yticks([])
    else:
        image = right.imshow(selective.T, aspect="auto", cmap="viridis")
        right.set_yticks(range(len(languages)), labels=list(languages))
        right.set_xticks(range(len(layers)), labels=[str(x) for x in layers])
        right.set_title("language-selective features per language", fontsize=9)
        fig.colorbar(image, ax=right, shrink=0.8, label="language-selective features (count)")
    figures.set_title(fig, "Language in the SAE features: selective and shared, by depth", subtitle, fontsize=9)
    return fig


def neurons_png(cells: Sequence[list], per_layer: Sequence[list], summary: dict, subtitle: str) -> bytes:
    return figures._png(neurons_figure(cells, per_layer, summary, subtitle))


def neurons_figure(cells: Sequence[list], per_layer: Sequence[list], summary: dict, subtitle: str):
    """Left: the median normalised LAPE of live SAE features and of live feed-forward units per layer. Right: per
    (layer, language), the share of SAE features selective for the language against the share of units (one colour
    per language, one marker per layer: two legends say which), Spearman's rho in the title."""
    fig = figures.Figure(figsize=(11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = [r[0] for r in per_layer]
    nan = float("nan")
    left.plot(layers, [nan if r[1] is None else r[1] for r in per_layer], "-o", ms=4, label="SAE features")
    left.plot(layers, [nan if r[2] is None else r[2] for r in per_layer], "-s", ms=4, label="feed-forward units")
    _layer_axis(left, "median LAPE / log(languages)")
    left.set_ylim(0, 1.02)
    left.legend(fontsize=7)
    langs = list(dict.fromkeys(c[1] for c in cells))
    markers = "osD^v<>pPX*h"
    for li, lang in enumerate(langs):
        for layer_index, layer in enumerate(layers):
            mine = [c for c in cells if c[1] == lang and c[0] == layer]
            right.scatter([c[7] for c in mine], [c[4] for c in mine], color=f"C{li % 10}",
                          marker=markers[layer_index % len(markers)], s=30)  # fmt: skip
    right.set_xlabel("share of units selective for the language", fontsize=8)
    right.set_ylabel("share of SAE features selective for it", fontsize=8)
    right.grid(alpha=0.3)
    rho, p = summary["spearman_rho"], summary["p_value"]
    said = "not defined (under 3 cells, or a share constant)" if rho is None else f"{rho:.2f} (p {p:.3g})"
    right.set_title(f"per layer (marker) and language (colour)\nSpearman rho of the shares: {said}", fontsize=8)
    low, high = right.get_ylim()
    right.set_ylim(max(low, -0.05 * max(high, 0.01)), high)  # shares are >= 0
    by_language = [Line2D([], [], color=f"C{li % 10}", marker="o", ls="", label=lang) for li, lang in enumerate(langs)]
    by_layer = [Line2D([], [], color="0.4", marker=markers[i % len(markers)], ls="", label=f"layer {layer}")
                for i, layer in enumerate(layers)]  # fmt: skip
    first = right.legend(handles=by_language, title="language (colour)", fontsize=7, title_fontsize=7, ncol=2,
                         loc="upper left")  # fmt: skip
    right.add_artist(first)
    right.legend(handles=by_layer, title="layer (marker)", fontsize=7, title_fontsize=7, loc="lower right")
    figures.set_title(fig, "SAE features and feed-forward units: language selectivity by depth", subtitle, fontsize=9)
    return fig
