"""The decode job's human-readable outputs: the scores table, figures of metric against layer, and report.md."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from engine import captions

METRIC_NAMES = {"wer": "WER", "cer": "CER", "bleu": "BLEU", "chrf": "chrF", "per": "PER"}
# scores.csv keeps WER and CER as fractions (docs/outputs.md); what a person reads (report.md, the figures, the README)
# shows them in percent, on the scale BLEU and chrF already have
PERCENT = {"wer": 100.0, "cer": 100.0, "bleu": 1.0, "chrf": 1.0, "per": 100.0}
AXIS_LABELS = {"wer": "WER (%)", "cer": "CER (%)", "bleu": "BLEU", "chrf": "chrF", "per": "PER (%)"}
SHOWN = {"transcribe": ("wer", "cer"), "translate": ("bleu", "chrf"), "phones": ("per",)}  # the table's cells


def _label(layer: int, ln_post: bool) -> str:
    return f"L{layer}" + ("" if ln_post else " (no ln_post)")


def scores_table(scores: list[dict]) -> str:
    """A Markdown table: one row per (task, decoding, ln_post, language), one column per layer, cells
    ``WER/CER`` in percent for transcribe, ``BLEU/chrF`` for translate and PER in percent for phones."""
    if not scores:
        return "(nothing scored)"
    layers = sorted({s["layer"] for s in scores})
    cells: dict[tuple, dict[int, dict[str, float]]] = {}
    for s in scores:
        key = (s["task"], s["decoding"], s["ln_post"], s["language"])
        cells.setdefault(key, {}).setdefault(s["layer"], {})[s["metric"]] = s["value"]
    lines = [
        "| task | decoding | ln_post | language | " + " | ".join(f"L{la}" for la in layers) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---:" for _ in layers) + " |",
    ]
    for (task, decoding, ln_post, lang), by_layer in sorted(cells.items()):
        row = []
        for la in layers:
            v = by_layer.get(la)
            row.append("" if v is None else "/".join(f"{PERCENT[m] * v[m]:.1f}" for m in SHOWN[task]))
        lines.append(f"| {task} | {decoding} | {'on' if ln_post else 'off'} | {lang} | " + " | ".join(row) + " |")
    head = "WER/CER in % (transcribe), BLEU/chrF (translate) and PER in % (phones) by encoder layer:"
    return "\n".join([head, "", *lines])


def figures(scores: list[dict], subtitle: str = "") -> dict[str, bytes]:
    """``scores-<decoding>.png`` per decoding (``figure``); no scores, no figure."""
    from engine.figures import _png  # lazy: loads matplotlib, which takes about a second; only process 0 draws

    decodings = sorted({s["decoding"] for s in scores})
    return {f"scores-{d.replace(':', '')}.png": _png(figure(scores, d, subtitle)) for d in decodings}


def figure(scores: list[dict], decoding: str, subtitle: str = ""):
    """The matplotlib Figure of one decoding: one panel per (task, metric, ln_post), metric against layer (WER and
    CER in percent), one line per language (one legend for the figure). ``subtitle``: the model and dataset
    (``engine.captions``); the n the scores rest on is added to it.

    Every panel has its y label and integer layer ticks; a panel with a single layer (the ``ln_post off`` panels have
    no L+1: ``--layers 6,7`` leaves it layer 6 alone) shows its point as a marker, with the layer as its one tick."""
    # lazy: matplotlib (here and through engine.figures) takes about a second to import; only process 0 draws, once
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from engine.figures import set_title  # lazy: loads matplotlib, as above

    mine = [s for s in scores if s["decoding"] == decoding]
    panels = sorted({(s["task"], s["metric"], s["ln_post"]) for s in mine}, key=lambda p: (p[0], p[2], p[1]))
    langs = sorted({s["language"] for s in mine})
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.2 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (task, metric, ln_post) in zip(axes, panels, strict=False):
        for i, lang in enumerate(langs):
            pts = sorted(
                (s["layer"], s["value"])
                for s in mine
                if (s["task"], s["metric"], s["ln_post"], s["language"]) == (task, metric, ln_post, lang)
            )
            if pts:  # one colour per language in every panel, for the one legend
                x, y = np.asarray(pts, float).T
                marker = "o" if len(pts) == 1 else "."
                ax.plot(x, y * PERCENT[metric], marker=marker, color=f"C{i % 10}", label=lang)
        ax.set_title(f"{task}: {METRIC_NAMES[metric]} (ln_post {'on' if ln_post else 'off'})", fontsize=9)
        ax.set_xlabel("encoder layer")
        ax.set_ylabel(AXIS_LABELS[metric])
        layers = sorted({s["layer"] for s in mine if (s["task"], s["metric"], s["ln_post"]) == (task, metric, ln_post)})
        if len(layers) == 1:  # MaxNLocator finds one integer in a point's margins and falls back to fractions
            ax.set_xticks(layers)
            ax.set_xlim(layers[0] - 1, layers[0] + 1)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    drawn = sorted({h.get_label() for ax in axes for h in ax.get_lines()})
    # a line per language in the legend, even where a panel shows a lone marker
    handles = [Line2D([], [], marker=".", color=f"C{langs.index(la) % 10}") for la in drawn]
    legend = dict(loc="outside lower center", ncols=min(len(drawn), 8), fontsize=8)
    fig.legend(handles, drawn, **legend)
    n = "n = " + captions.count_range([s["n"] for s in mine], "utterances per language and layer")
    title = f"decoding from each encoder layer ({decoding})"
    set_title(fig, title, "; ".join(p for p in (subtitle, n) if p))
    return fig


def report_markdown(table: pa.Table, scores: list[dict], summary, samples: int) -> str:
    """The scores table, the skips, then for ``samples`` utterances per (language, task, decoding) the reference and
    the hypothesis from every layer."""
    lines = ["# Decode report", "", scores_table(scores), ""]
    if summary.n_skipped:
        lines += ["Skipped (counted by reason):", "", *[f"- {line.strip()}" for line in summary.skip_lines()], ""]
    df = table.to_pandas()
    for (lang, task, decoding), g in df.groupby(["language", "task", "decoding"], sort=True):
        lines += [f"## {lang}, {task}, {decoding}", ""]
        for uid in sorted(g["id"].unique())[:samples]:
            u = g[g["id"] == uid].sort_values(["layer", "ln_post"], ascending=[True, False])
            ref = u["reference"].iloc[0]
            lines += [f"### {uid}", "", "| layer | text | avg_logprob | compression |", "| --- | --- | ---: | ---: |"]
            lines.append(f"| reference | {_cell(ref) if ref else '(none)'} | | |")
            for r in u.itertuples():
                lines.append(
                    f"| {_label(r.layer, r.ln_post)} | {_cell(r.hypothesis) or '(empty)'} | {r.avg_logprob:.2f} | "
                    f"{r.compression_ratio:.2f} |"
                )
            lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
