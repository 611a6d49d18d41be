"""The heads job's tables: ``heads.parquet`` (every number, long) and ``selective_heads.csv``.

``heads.parquet``, one row per (ablated head, metric, scored layer, language or pair), ``TABLE_COLUMNS``:

- ``layer`` (the block, 1..L), ``head`` (0..H-1): the head ablated (for importance and attention statistics, the
  head described);
- ``metric``: ``r1`` (SeqSim R@1), ``language_id`` (probe accuracy), ``wer``, ``cer`` (the last layer's decode),
  ``importance_contrastive``, ``importance_ce`` (mean |gradient| over the language's utterances),
  ``importance_<loss>_signed`` (the mean gradient, every utterance), ``attention_distance`` (frames),
  ``attention_entropy`` (nats), ``attention_local`` (share within ``--local_frames``), ``attention_sink`` (the
  share of a window's attention its ``--sink_frames`` most attended frames receive), ``attention_first`` (the share
  its first ``--sink_frames`` frames receive; ``engine.pipelines.heads.sinks`` has where the sinks are);
- ``scored_layer``: the stored layer an ``r1`` or ``language_id`` is measured at (else null);
- ``lang``: the language (``r1``: the mean over the measured pairs it is on either side of), null: every language
  (``r1``: the mean over every measured pair; ``language_id``: every utterance; ``wer``/``cer``: the mean over the
  decoded languages; importance and attention: every utterance or window);
- ``pair``: ``a->b`` for an ``r1`` of one ordered pair (a's utterances retrieving in b's), else null;
- ``value`` with the head ablated; ``baseline``: the same number without any ablation (null for importance and
  attention, which describe the unablated model); ``change = value - baseline``.

A number that was not measured is absent, never 0: a pair with no shared id, a language without a prompt token or a
transcription, a family without attention statistics.

``selective_heads.csv`` (``SELECTIVE_COLUMNS``): for each language, metric (``r1`` per language, ``language_id``,
``wer``, ``cer``) and scored layer, the ``--top`` heads whose ablation hurts that language most against the others:
``contrast = harm(lang) - mean harm(other languages)``, harm being the fall of R@1 or language ID, the rise of
WER or CER. ``change`` is the language's, ``others_change`` the others' mean.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.pipelines.stages.lid import LidError, lid_transfer
from engine.stores.integrity import parquet_bytes
from engine.stores.records import csv_bytes

TABLE = "heads.parquet"
SELECTIVE = "selective_heads.csv"
TABLE_COLUMNS = ("layer", "head", "metric", "scored_layer", "lang", "pair", "value", "baseline", "change")
SELECTIVE_COLUMNS = ("lang", "metric", "scored_layer", "layer", "head", "change", "others_change", "contrast", "rank")
ABLATED = ("r1", "language_id", "wer", "cer")
HIGHER_IS_BETTER = {"r1": True, "language_id": True, "wer": False, "cer": False}
ATTENTION = ("attention_distance", "attention_entropy", "attention_local")
SINK = ("attention_sink", "attention_first")  # the top --sink_frames frames' share; the first ones' (sinks.csv)


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def rows(setup, none, blocks: list, importance: dict | None, attention: dict | None, seed: int,
         notes: list) -> list[tuple]:  # fmt: skip
    """Every row of ``heads.parquet`` (module docstring); ``none`` and ``blocks[b - 1]`` are the passes' ``Scores``;
    what could not be measured is said in ``notes``."""
    ev = setup.evaluation
    langs = ev.langs
    out = []

    def add(b, h, metric, scored, lang, pair, value, base):
        if np.isfinite(value):
            base = None if base is None or not np.isfinite(base) else float(base)
            out.append((b, h, metric, scored, lang, pair, float(value), base, None if base is None else value - base))

    for s, scored in enumerate(setup.scored):
        base_r1 = none.r1[0, s]
        changed = [blk.pooled[h, s] for blk in blocks for h in range(len(blk.pooled))]
        try:
            before, after = lid_transfer(none.pooled[0, s], ev.label, ev.ids, changed, seed=seed)
        except LidError as e:
            before = after = None
            if s == 0:
                notes.append(f"language ID: not scored ({e})")
        for b, blk in enumerate(blocks, start=1):
            for h in range(len(blk.r1)):
                r1 = blk.r1[h, s]
                for i, a in enumerate(langs):
                    for j, c in enumerate(langs):
                        if i != j:
                            add(b, h, "r1", scored, None, f"{a}->{c}", r1[i, j], base_r1[i, j])
                    on = np.zeros(r1.shape, bool)
                    on[i, :] = on[:, i] = True
                    add(b, h, "r1", scored, a, None, _mean(r1[on]), _mean(base_r1[on]))
                add(b, h, "r1", scored, None, None, _mean(r1), _mean(base_r1))
                if after is None:
                    continue
                predicted = after[(b - 1) * len(blk.r1) + h]
                for i, a in enumerate(langs):
                    mine = ev.label == i
                    if mine.any():
                        add(b, h, "language_id", scored, a, None, np.mean(predicted[mine] == i),
                            np.mean(before[mine] == i))  # fmt: skip
                add(b, h, "language_id", scored, None, None, np.mean(predicted == ev.label),
                    np.mean(before == ev.label))  # fmt: skip
    for b, blk in enumerate(blocks, start=1):
        for h in range(len(blk.wer)):
            for metric in ("wer", "cer"):
                value, base = getattr(blk, metric)[h], getattr(none, metric)[0]
                for i, a in enumerate(langs):
                    add(b, h, metric, None, a, None, value[i], base[i])
                add(b, h, metric, None, None, None, _mean(value), _mean(base))
    for loss in ("contrastive", "ce"):
        if importance is None or f"{loss}_grads" not in importance:
            continue
        grads, used = importance[f"{loss}_grads"], importance[f"{loss}_used"].astype(bool)
        for b, h in np.ndindex(grads.shape[1:]):
            g = grads[:, b, h]
            for i, a in enumerate(langs):
                mine = used & (ev.label == i)
                if mine.any():
                    add(b + 1, h, f"importance_{loss}", None, a, None, np.abs(g[mine]).mean(), None)
            if used.any():
                add(b + 1, h, f"importance_{loss}", None, None, None, np.abs(g[used]).mean(), None)
                add(b + 1, h, f"importance_{loss}_signed", None, None, None, g[used].mean(), None)
    if attention is not None:
        stats, lang_of_window = attention["stats"], ev.label[ev.owner]
        for b, h, k in np.ndindex(stats.shape[1:]):
            for i, a in enumerate(langs):
                add(b + 1, h, ATTENTION[k], None, a, None, _mean(stats[lang_of_window == i, b, h, k]), None)
            add(b + 1, h, ATTENTION[k], None, None, None, _mean(stats[:, b, h, k]), None)
        if "top_share" in attention:
            top, first = attention["top_share"].sum(axis=-1), attention["first_share"]
            for b, h in np.ndindex(stats.shape[1:3]):  # the block's heads averaged (index H) is in sinks.csv only
                for metric, value in (("attention_sink", top[:, b, h]), ("attention_first", first[:, b, h])):
                    for i, a in enumerate(langs):
                        add(b + 1, h, metric, None, a, None, _mean(value[lang_of_window == i]), None)
                    add(b + 1, h, metric, None, None, None, _mean(value), None)
    return out


def parquet(table_rows: list[tuple]) -> bytes:
    columns = list(zip(*table_rows, strict=True)) if table_rows else [[] for _ in TABLE_COLUMNS]
    types = (pa.int32(), pa.int32(), pa.string(), pa.int32(), pa.string(), pa.string(), pa.float64(), pa.float64(),
             pa.float64())  # fmt: skip
    return parquet_bytes(pa.table({name: pa.array(col, t) for name, col, t in zip(TABLE_COLUMNS, columns, types,
                                                                                  strict=True)}))  # fmt: skip


def selective(table_rows: list[tuple], top: int) -> list[tuple]:
    """The rows of ``selective_heads.csv`` (module docstring)."""
    change = {}  # (metric, scored, head key) -> {lang: change}
    for b, h, metric, scored, lang, pair, _, _, delta in table_rows:
        if metric in ABLATED and lang is not None and pair is None and delta is not None:
            change.setdefault((metric, scored, (b, h)), {})[lang] = delta
    out = []
    groups = {}
    for (metric, scored, head), by_lang in change.items():
        sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
        for lang, delta in by_lang.items():
            others = [v for k, v in by_lang.items() if k != lang]
            if not others:
                continue
            rest = float(np.mean(others))
            groups.setdefault((lang, metric, scored), []).append((sign * (delta - rest), head, delta, rest))
    for (lang, metric, scored), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        items.sort(key=lambda x: (-x[0], x[1]))
        for rank, (contrast, (b, h), delta, rest) in enumerate(items[:top], start=1):
            out.append((lang, metric, scored, b, h, delta, rest, contrast, rank))
    return out


def selective_csv(selected: list[tuple]) -> bytes:
    return csv_bytes(SELECTIVE_COLUMNS, [["NA" if x is None else x for x in r] for r in selected])


def report_lines(table_rows: list[tuple], selected: list[tuple]) -> list[str]:
    """Per ablated metric and scored layer, over every language: the head whose ablation hurts most; then, per
    language, the head that hurts it most against the others on R@1 at the last scored layer."""
    lines = []
    overall = {}
    for b, h, metric, scored, lang, pair, value, base, delta in table_rows:
        if metric in ABLATED and lang is None and pair is None and delta is not None and np.isfinite(delta):
            overall.setdefault((metric, scored), []).append((delta, b, h, value, base))
    for (metric, scored), items in sorted(overall.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
        hurts = "lowers" if HIGHER_IS_BETTER[metric] else "raises"
        delta, b, h, value, base = max(items, key=lambda x: (sign * x[0], -x[1], -x[2]))
        at = f" at layer {scored}" if scored is not None else ""
        if sign * delta > 0:
            lines.append(f"{metric}{at}: {base:.3f} unablated; block {b} head {h} off {hurts} it most, to {value:.3f} "
                         f"({delta:+.3f})")  # fmt: skip
        else:  # "changes it most" named the least helpful head, +0.000, beside a +0.083 (a probe's)
            delta, b, h, value, base = max(items, key=lambda x: (abs(x[0]), -x[1], -x[2]))
            lines.append(f"{metric}{at}: {base:.3f} unablated; no head off {hurts} it; block {b} head {h} off moves "
                         f"it most, to {value:.3f} ({delta:+.3f})")  # fmt: skip
    last = max((r[2] for r in selected if r[1] == "r1"), default=None)
    if len({r[0] for r in selected if r[1] == "r1"}) < 3:  # with 2, each language's pairs are the other's too
        return lines
    for lang, metric, scored, b, h, delta, rest, _, rank in selected:
        if metric == "r1" and scored == last and rank == 1:
            lines.append(f"  {lang}: block {b} head {h} off changes its R@1 at layer {scored} by {delta:+.3f}, the "
                         f"others' by {rest:+.3f} on average")  # fmt: skip
    return lines
