"""The sae job's figures as PNG bytes: what the SAEs keep by layer, and the language of their features by layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import figures


def _layer_axis(ax, ylabel: str) -> None:
    ax.set_xlabel(figures.LAYER_LABEL, fontsize=8)
    ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def kept_png(rows: Sequence[dict], subtitle: str) -> bytes:
    """Three panels against layer: FVU; retrieval R@1 and language ID on stored and reconstructed states; dead and
    dense shares."""
    fig = figures.Figure(figsize=(13.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
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
    figures.set_title(fig, "What each layer's sparse autoencoder keeps", subtitle, fontsize=9)
    return figures._png(fig)


def languages_png(rows: Sequence[dict], selective: np.ndarray, languages: Sequence[str], subtitle: str) -> bytes:
    """Left: shares of language-selective and shared features against layer. Right: selective features per
    language and layer (``selective``: i64[layer, language])."""
    fig = figures.Figure(figsize=(11.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = [r["layer"] for r in rows]
    left.plot(layers, [r["selective_share"] for r in rows], "-o", ms=4, label="language-selective (LAPE)")
    left.plot(layers, [r["shared_share"] for r in rows], "-s", ms=4, label="shared by every language")
    _layer_axis(left, "share of live features")
    left.legend(fontsize=7)
    image = right.imshow(selective.T, aspect="auto", cmap="viridis")
    right.set_yticks(range(len(languages)), labels=list(languages))
    right.set_xticks(range(len(layers)), labels=[str(x) for x in layers])
    right.set_xlabel("layer", fontsize=8)
    right.set_title("language-selective features per language", fontsize=9)
    fig.colorbar(image, ax=right, shrink=0.8)
    figures.set_title(fig, "Language in the SAE features: selective and shared, by depth", subtitle, fontsize=9)
    return figures._png(fig)
