"""The finetune job's before/after table and figures (loss curve, BLEU before/after per source language)."""

from __future__ import annotations

import pathlib


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


def figures(rows, out: pathlib.Path, last: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "train" and r["metric"] == "loss"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if train:
        ax.plot(*zip(*train, strict=True), marker=".")
    ax.set(xlabel="step", ylabel="cross-entropy (train)", title="fine-tuning loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)

    langs = sorted({r["source_lang"] for r in rows if r["split"] == "held_out"})
    tasks = sorted({r["task"] for r in rows if r["split"] == "held_out"})
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5 * max(len(tasks), 1), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        before = [_value(rows, 0, lang, task)[0] or 0 for lang in langs]
        after = [_value(rows, last, lang, task)[0] or 0 for lang in langs]
        x = range(len(langs))
        ax.bar([i - 0.2 for i in x], before, 0.4, label="before")
        ax.bar([i + 0.2 for i in x], after, 0.4, label=f"after {last} steps")
        target = _value(rows, 0, langs[0], task)[1] if langs else ""
        ax.set(xticks=list(x), xticklabels=langs, ylabel="BLEU (held-out)", title=f"X -> {target} ({task})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bleu.png", dpi=120)
    plt.close(fig)
