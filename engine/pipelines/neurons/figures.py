"""The neurons job's figure as PNG bytes: language-specific units per language and layer, and LAPE per layer."""

from __future__ import annotations

import numpy as np

from engine.figures import Figure, _png, set_title
from engine.pipelines.stages.lape import Lape


def selective_png(ranked: Lape, subtitle: str = "") -> bytes:
    """Left: selected units each language owns, per layer (a unit owned by two languages counts in both). Right: the
    spread of LAPE over each layer's units (median and 5-95% band) and the share of the layer selected."""
    langs = ranked.languages
    owned = ranked.belongs.sum(axis=2)  # [language, layer]
    n_layer = owned.shape[1]
    fig = Figure(figsize=(11.0, max(3.2, 0.28 * len(langs) + 1.6)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    image = left.imshow(owned, cmap="viridis", aspect="auto", origin="upper")
    left.set_xticks(range(n_layer), range(1, n_layer + 1), fontsize=7)
    left.set_yticks(range(len(langs)), langs, fontsize=7)
    left.set_xlabel("layer (block)")
    left.set_ylabel("language")
    left.set_title("language-specific units per language and layer", fontsize=9)
    if owned.size <= 400:
        for i, j in np.ndindex(owned.shape):
            left.text(j, i, str(owned[i, j]), ha="center", va="center", fontsize=6,
                      color="w" if owned[i, j] < owned.max() / 2 else "k")  # fmt: skip
    fig.colorbar(image, ax=left, shrink=0.8, label="units")
    layers = np.arange(1, n_layer + 1)
    h = ranked.entropy
    low, mid, high = (np.array([np.nanquantile(row, q) if np.isfinite(row).any() else np.nan for row in h])
                      for q in (0.05, 0.5, 0.95))  # fmt: skip
    right.fill_between(layers, low, high, color="tab:blue", alpha=0.2, label="5-95% of units")
    right.plot(layers, mid, "o-", color="tab:blue", label="median unit")
    right.axhline(np.log(len(langs)), color="0.4", ls="--", lw=1, label=f"log {len(langs)}: fires alike in all")
    right.set_xlabel("layer (block)")
    right.set_ylabel("LAPE (nats)")
    share = right.twinx()
    share.bar(layers, ranked.selected.mean(axis=1) * 100, color="tab:red", alpha=0.35, width=0.6)
    share.set_ylabel("selected units, % of the layer", color="tab:red")
    right.set_title("LAPE per layer (low: fires for few languages)", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    right.grid(alpha=0.3)
    note = f"threshold: rate >= {ranked.threshold:.3f} in a language; {int(ranked.selected.sum())} units selected"
    set_title(fig, "language-specific feed-forward units (LAPE)", "; ".join(p for p in (subtitle, note) if p))
    return _png(fig)


SHOWN = 8  # languages drawn in the intervention figure (all are in intervention.csv)


def intervention_png(rows: list, subtitle: str = "") -> bytes:
    """One column per language switched off: top, the change in language-ID accuracy per layer; bottom, the change in
    pooled R@1. Red: that language's own utterances (or pairs); blue: the other languages'. Solid: its selected
    units off; dashed, with a band from the smallest to the largest: the random draws of as many units (the null).
    The legend sits below the panels, off the curves."""
    langs = list(dict.fromkeys(r[0] for r in rows))
    shown = langs[:SHOWN]
    fig = Figure(figsize=(2.6 * len(shown) + 1.2, 6.0), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, len(shown), sharex=True, sharey="row", squeeze=False))
    colors = {"self": "tab:red", "others": "tab:blue"}
    who = {"self": "its own language", "others": "the other languages"}
    draws = len({r[2] for r in rows if r[1] == "random"})
    for col, lang in enumerate(shown):
        for row, (index, label) in enumerate(((9, "language-ID accuracy change"), (12, "R@1 change (pooled)"))):
            ax = axes[row, col]
            for group, color in colors.items():
                got = sorted((r[4], r[index]) for r in rows if r[0] == lang and r[1] == "selected" and r[5] == group)
                if got:
                    ax.plot(*zip(*got, strict=True), color=color, marker="o", ms=3,
                            label=f"{who[group]}: selected units off")  # fmt: skip
                by_layer: dict[int, list] = {}
                for r in rows:
                    if r[0] == lang and r[1] == "random" and r[5] == group:
                        by_layer.setdefault(r[4], []).append(r[index])
                if by_layer:
                    layers = sorted(by_layer)
                    values = [np.asarray(by_layer[k], float) for k in layers]
                    ax.plot(layers, [np.nanmean(v) for v in values], ls="--", color=color,
                            label=f"{who[group]}: random units, mean of {draws} draws")  # fmt: skip
                    ax.fill_between(layers, [np.nanmin(v) for v in values], [np.nanmax(v) for v in values],
                                    color=color, alpha=0.12, lw=0)  # fmt: skip
            ax.axhline(0, color="0.5", lw=0.8)
            ax.grid(alpha=0.3)
            if row == 0:
                units = next(r[3] for r in rows if r[0] == lang and r[1] == "selected")
                ax.set_title(f"{lang}: {units} units off", fontsize=9)
            else:
                ax.set_xlabel("layer")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(shown)), fontsize=7,
                   title="band: smallest to largest random draw" if draws > 1 else None, title_fontsize=7)  # fmt: skip
    more = f"; {len(langs) - SHOWN} more languages in intervention.csv" if len(langs) > SHOWN else ""
    set_title(fig, "switching language-specific units off", (subtitle or "") + more)
    return _png(fig)
