"""The probes' figures as PNG bytes: each probe's score against layer, with its chance level and its n."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import figures  # matplotlib's object API, Agg canvas (engine.figures)

MEASURE_TITLES = {
    "cosine": "cosine of mean-pooled word frames",
    "dtw": "mean cosine distance along the DTW path",
}


def _axes(ax, ylabel: str) -> None:
    ax.set_xlabel(figures.LAYER_LABEL, fontsize=8)
    ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def lid_png(scores: Sequence, subtitle: str = "") -> bytes:
    """Accuracy and macro-F1 of the LID probe against layer (``lid.LidScore``), chance dashed."""
    fig = figures.Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    layers = [s.layer for s in scores]
    ax.plot(layers, [s.accuracy for s in scores], "-o", ms=4, label="accuracy")
    ax.plot(layers, [s.macro_f1 for s in scores], "-s", ms=4, label="macro-F1")
    ax.plot(layers, [s.chance for s in scores], color="0.4", ls="--", label="chance (most frequent language)")
    _axes(ax, "out-of-fold score")
    ax.legend(fontsize=8)
    n = scores[0].n if scores else 0
    title = f"language ID from mean-pooled states, linear probe\n(n = {n} utterances, folds by sentence id)"
    figures.set_title(fig, *title.split("\n"), subtitle, fontsize=9)
    return figures._png(fig)


def _mean(scores: Sequence, field: str, layer: int) -> float:
    values = [getattr(s, field) for s in scores if s.layer == layer and np.isfinite(s.ap)]
    return float(np.mean(values)) if values else float("nan")


def samediff_png(scores: Sequence, subtitle: str = "") -> bytes:
    """Same-different AP against layer (``samediff.SameDiffScore``), a panel per measure, a line per language with
    its same-pair count, the mean over languages thick, the mean chance dashed."""
    measures = list(dict.fromkeys(s.measure for s in scores))
    fig = figures.Figure(figsize=(6.0 * max(len(measures), 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(measures), 1), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=False):
        own = [s for s in scores if s.measure == measure]
        layers = sorted({s.layer for s in own})
        langs = list(dict.fromkeys(s.lang for s in own))
        for lang in langs:
            mine = sorted((s for s in own if s.lang == lang), key=lambda s: s.layer)
            label = f"{lang} ({mine[0].n_same} same / {mine[0].n_pairs} pairs)"
            ax.plot([s.layer for s in mine], [s.ap for s in mine], marker=".", lw=1, alpha=0.7, label=label)

        if len(langs) > 1:
            ax.plot(layers, [_mean(own, "ap", la) for la in layers], "k-", lw=2.5, label="mean")
        ax.plot(layers, [_mean(own, "chance", la) for la in layers], color="0.4", ls="--", label="chance (mean)")
        ax.set_title(f"{measure}: {MEASURE_TITLES.get(measure, measure)}", fontsize=9)
        _axes(ax, "average precision")
        ax.legend(fontsize=6, ncols=2 if len(langs) > 6 else 1)
    title = "same-different word discrimination (AP of same-type pairs over different-type pairs)"
    figures.set_title(fig, *title.split("\n"), subtitle, fontsize=9)
    return figures._png(fig)


def cca_png(scores: Sequence, subtitle: str = "") -> bytes:
    """Held-out PWCCA against layer (``cca.CcaScore``), a line per target with its n, shuffled-target chance dashed in
    the same colour."""
    fig = figures.Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for target in dict.fromkeys(s.target for s in scores):
        own = sorted((s for s in scores if s.target == target), key=lambda s: s.layer)
        label = f"{target} (n = {own[0].n_train} + {own[0].n_test}, {own[0].dims} dims)"
        line = ax.plot([s.layer for s in own], [s.pwcca for s in own], "-o", ms=4, label=label)
        ax.plot([s.layer for s in own], [s.chance for s in own], ls="--", lw=1, color=line[0].get_color())
    ax.plot([], [], color="0.4", ls="--", lw=1, label="chance: targets shuffled")
    _axes(ax, "held-out PWCCA")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=7)
    title = "CCA against phone (frames), word-identity and text-embedding targets\n"
    title += "(fitted on half the ids, measured on the other half)"
    figures.set_title(fig, *title.split("\n"), subtitle, fontsize=9)
    return figures._png(fig)
