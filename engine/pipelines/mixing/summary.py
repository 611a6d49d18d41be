"""The mixing job's table and figure, from its per-language matrices (``engine.pipelines.mixing.run``).

``mixing.parquet``, one row per language and block (``layer``: block l, whose output is stored layer l), every word
of every scored utterance weighing the same; for word ``i`` of ``W`` and its row ``m[i, :]`` of a mixing matrix (it
sums to 1):

- ``self_share``: ``m[i, i]``, the share of word i's change due to zeroing itself; ``context_share`` = 1 - that;
- ``share_d1``, ``share_d2``, ``share_d3plus``: the share from words 1, 2 and 3 or more words away;
- ``word_distance``: ``sum_t m[i, t] |i - t|``, how far (in words) the mixing reaches; ``uniform_distance``: the same
  for a uniform row (``mean_t |i - t|``), the value if every word mixed in equally.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.figures import Figure, _png, set_title
from engine.stores.integrity import parquet_bytes

TABLE = "mixing.parquet"
FIGURE = "figures/mixing.png"
COLUMNS = ("lang", "layer", "utterances", "words", "self_share", "context_share", "share_d1", "share_d2",
           "share_d3plus", "word_distance", "uniform_distance")  # fmt: skip
SHOWN = 12  # languages drawn in the figure (all are in the table)


def word_rows(m: np.ndarray) -> np.ndarray:
    """``f64[word, 6]`` of one ``W x W`` mixing matrix: per word (row), self, d1, d2, d3+, word distance, uniform
    distance (module docstring)."""
    n = len(m)
    gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    m = np.asarray(m, np.float64)
    return np.stack([np.diagonal(m), (m * (gap == 1)).sum(1), (m * (gap == 2)).sum(1), (m * (gap >= 3)).sum(1),
                     (m * gap).sum(1), gap.mean(1)], axis=1)  # fmt: skip


def rows(parts: dict[str, dict]) -> list[dict]:
    """The table's rows from each language's part (``{lang: arrays}``), languages in the order given."""
    out = []
    for lang, part in parts.items():
        n_utt = len(part["ids"])
        for j, layer in enumerate(part["layers"]):
            per_word = [word_rows(part[f"mixing_{k}"][j]) for k in range(n_utt)]
            w = np.concatenate(per_word) if per_word else np.full((0, 6), np.nan)
            mean = w.mean(0) if len(w) else np.full(6, np.nan)
            out.append(dict(lang=lang, layer=int(layer), utterances=n_utt, words=len(w), self_share=mean[0],
                            context_share=1 - mean[0], share_d1=mean[1], share_d2=mean[2], share_d3plus=mean[3],
                            word_distance=mean[4], uniform_distance=mean[5]))  # fmt: skip
    return out


def parquet(table_rows: list[dict]) -> bytes:
    schema = pa.schema([("lang", pa.string()), ("layer", pa.int32()), ("utterances", pa.int32()),
                        ("words", pa.int32()), *((c, pa.float64()) for c in COLUMNS[4:])])  # fmt: skip
    return parquet_bytes(pa.Table.from_pylist(table_rows, schema=schema))


def report_lines(table_rows: list[dict]) -> list[str]:
    """Per block, over the languages: the self share, the neighbours', and the reach against a uniform row."""
    lines = []
    for layer in sorted({r["layer"] for r in table_rows}):
        at = [r for r in table_rows if r["layer"] == layer and r["words"]]
        if not at:
            continue

        def mean(key, at=at):
            return float(np.mean([r[key] for r in at]))

        lines.append(f"layer {layer}: self {mean('self_share'):.3f}, next word {mean('share_d1'):.3f}, 2 away "
                     f"{mean('share_d2'):.3f}, 3+ away {mean('share_d3plus'):.3f}; reach {mean('word_distance'):.2f} "
                     f"words (uniform {mean('uniform_distance'):.2f})")  # fmt: skip
    return lines


def png(table_rows: list[dict], subtitle: str = "") -> bytes:
    """Left: the self share against layer, one line per language; right: the share by word distance, mean over
    languages."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    langs = list(dict.fromkeys(r["lang"] for r in table_rows))[:SHOWN]
    for lang in langs:
        at = sorted((r["layer"], r["self_share"]) for r in table_rows if r["lang"] == lang)
        left.plot([a for a, _ in at], [b for _, b in at], marker="o", label=lang)
    left.set_xlabel("layer (block l's output)")
    left.set_ylabel("self share of the change (row-normalised)")
    left.set_title("value zeroing: a word's own share", fontsize=9)
    left.legend(fontsize=7, ncol=2)
    layers = sorted({r["layer"] for r in table_rows})
    for key, label in (("self_share", "itself"), ("share_d1", "next word"), ("share_d2", "2 words away"),
                       ("share_d3plus", "3+ words away")):  # fmt: skip
        right.plot(layers, [np.nanmean([r[key] for r in table_rows if r["layer"] == la] or [np.nan]) for la in layers],
                   marker="o", label=label)  # fmt: skip
    right.set_xlabel("layer (block l's output)")
    right.set_ylabel("share (mean over languages)")
    right.set_title("where the mixing comes from, by word distance", fontsize=9)
    right.legend(fontsize=7)
    set_title(fig, "Context mixing by value zeroing (Mohebbi et al. 2023), per layer", subtitle)
    return _png(fig)
