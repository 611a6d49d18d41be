"""The decode job's human-readable outputs: the scores table, figures of metric against layer, and report.md."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from engine import captions

METRIC_NAMES = {"wer": "WER", "cer": "CER", "bleu": "BLEU", "chrf": "chrF"}


def _label(layer: int, ln_post: bool) -> str:
    return f"L{layer}" + ("" if ln_post else " (no ln_post)")


def scores_table(scores: list[dict]) -> str:
    """A Markdown table: one row per (task, decoding, ln_post, language), one column per layer, cells
    ``WER/CER`` for transcribe and ``BLEU/chrF`` for translate."""
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
        pair = ("wer", "cer") if task == "transcribe" else ("bleu", "chrf")
        row = []
        for la in layers:
            v = by_layer.get(la)
            row.append("" if v is None else f"{v[pair[0]]:.2f}/{v[pair[1]]:.2f}" if pair[0] == "wer" else
                       f"{v[pair[0]]:.1f}/{v[pair[1]]:.1f}")  # fmt: skip
        lines.append(f"| {task} | {decoding} | {'on' if ln_post else 'off'} | {lang} | " + " | ".join(row) + " |")
    return "\n".join(["WER/CER (transcribe) and BLEU/chrF (translate) by encoder layer:", "", *lines])


def figures(scores: list[dict], subtitle: str = "") -> dict[str, bytes]:
    """``scores-<decoding>.png`` per decoding: one panel per (task, metric, ln_post), metric against layer, one line
    per language (one legend for the figure). ``subtitle``: the model and dataset (``engine.captions``); the n the
    scores rest on is added to it. No scores, no figure."""
    # lazy: matplotlib (here and through engine.figures) takes about a second to import; only process 0 draws, once
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from engine.figures import _png, set_title  # lazy: loads matplotlib, as above

    out = {}
    for decoding in sorted({s["decoding"] for s in scores}):
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
                    ax.plot(*np.asarray(pts).T, marker=".", color=f"C{i % 10}", label=lang)
            ax.set_title(f"{task}: {METRIC_NAMES[metric]} (ln_post {'on' if ln_post else 'off'})", fontsize=9)
            ax.set_xlabel("encoder layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}
        drawn = [lang for lang in langs if lang in handles]
        legend = dict(loc="outside lower center", ncols=min(len(drawn), 8), fontsize=8)
        fig.legend([handles[la] for la in drawn], drawn, **legend)
        n = "n = " + captions.count_range([s["n"] for s in mine], "utterances per language and layer")
        title = f"decoding from each encoder layer ({decoding})"
        set_title(fig, title, "; ".join(p for p in (subtitle, n) if p))
        out[f"scores-{decoding.replace(':', '')}.png"] = _png(fig)
    return out


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
