"""The finetune job's before/after table and figures (loss curve, BLEU before/after per source language)."""

from __future__ import annotations

import pathlib

import numpy as np

from engine import captions
from engine import figures as plots  # matplotlib's object API and the PNG writer of every babelgrid figure
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore


def _value(rows, step, lang, task, metric="bleu"):
    for r in rows:
        if (int(r["step"]), r["split"], r["source_lang"], r["task"], r["metric"]) == (step, "held_out", lang, task,
                                                                                    metric):  # fmt: skip
            return float(r["value"]), r["target_lang"]
    return None, None


def before_after_table(rows, last: int) -> list[str]:
    """Lines ``source -> target (task): BLEU before -> after, chrF before -> after``."""
    langs = sorted({r["source_lang"] for r in rows if r["split"] == "held_out"})
    tasks = sorted({r["task"] for r in rows if r["split"] == "held_out"})
    lines = [
        f"  {'source':8} {'target':8} {'task':10} {'BLEU before':>11} {'after':>7} {'chrF before':>11} {'after':>7}"
    ]
    for lang in langs:
        for task in tasks:
            b0, target = _value(rows, 0, lang, task)
            b1, _ = _value(rows, last, lang, task)
            c0, _ = _value(rows, 0, lang, task, "chrf")
            c1, _ = _value(rows, last, lang, task, "chrf")
            if b0 is None:
                continue
            fmt = lambda v: "-" if v is None else f"{v:.1f}"
            lines.append(f"  {lang:8} {target:8} {task:10} {fmt(b0):>11} {fmt(b1):>7} {fmt(c0):>11} {fmt(c1):>7}")
    return lines


def figure_pngs(rows, last: int, source: str = "") -> dict[str, bytes]:
    """``{"loss.png": ..., "bleu.png": ...}`` of the metric rows: the training loss by step, and held-out BLEU before
    and after per source language and task. ``source``: the model and dataset (``engine.captions``), to which the
    rows' n is added. A figure with nothing to draw (no training step, no held-out score) is left out."""
    out = {}
    train = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
    if train:
        fig = plots.Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
        ax.plot(*zip(*train, strict=True), marker=".")
        ax.set(xlabel="step", ylabel="cross-entropy (train)")
        plots.set_title(fig, "fine-tuning loss", source, fontsize=9)
        out["loss.png"] = plots._png(fig)

    held = [r for r in rows if r["split"] == "held_out" and r["metric"] == "bleu"]
    langs = sorted({r["source_lang"] for r in held})
    tasks = sorted({r["task"] for r in held})
    if held:
        fig = plots.Figure(figsize=(max(5.0, 0.6 * len(langs) + 2.0) * len(tasks), 4.0), layout="constrained")
        for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks, strict=True):
            before = [_value(rows, 0, lang, task)[0] for lang in langs]
            after = [_value(rows, last, lang, task)[0] for lang in langs]
            x = np.arange(len(langs))
            nan = lambda values: [np.nan if v is None else v for v in values]  # not scored: no bar, never a 0
            ax.bar(x - 0.2, nan(before), 0.4, label="before")
            ax.bar(x + 0.2, nan(after), 0.4, label=f"after {last} steps")
            target = next(r["target_lang"] for r in held if r["task"] == task)
            ax.set(xticks=list(x), xlabel="source language", ylabel="BLEU (held-out)", title=f"X -> {target} ({task})")
            ax.set_xticklabels(langs, rotation=90 if len(langs) > 12 else 0)
            ax.legend(fontsize=8)
        n = f"n = {captions.count_range([int(r['n']) for r in held], 'held-out utterances per language')}"
        title = "held-out BLEU before and after fine-tuning, per source language"
        plots.set_title(fig, title, "; ".join(p for p in (source, n) if p), fontsize=9)
        out["bleu.png"] = plots._png(fig)
    return out


def write_figures(rows, out: pathlib.Path, last: int, source: str = "") -> list[str]:
    """Writes ``figure_pngs`` into the folder ``out``; returns the names written."""
    pngs = figure_pngs(rows, last, source)
    write_outputs(open_kvstore(str(out))[1], pngs, str(out))  # with their digests, as every output
    return list(pngs)
