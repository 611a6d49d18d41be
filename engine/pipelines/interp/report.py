"""An interp run's statistics and figures: ``summary.csv`` rows (matched vs random, paired t-tests, the OT
comparison) from a language pair's pairs table, and the two figures by layer."""

from __future__ import annotations

import math

import numpy as np

from engine import captions, figures
from engine.pipelines.interp.output import PAIR_SEPARATOR, SUMMARY_COLUMNS
from engine.stores.integrity import write_outputs
from engine.stores.records import csv_bytes, na_cell


def summarize(table, lang_a: str, lang_b: str, alignment: str = "mutual") -> list[dict]:
    """SUMMARY_COLUMNS rows (one per layer and pooling) of a pairs table (pyarrow or pandas), parallel pairs
    (rank 0) only. The matched pairs are the mutual best ones, or with ``alignment="ot"`` the OT links (rows with
    ``ot_link``). t and p: ``scipy.stats.ttest_rel(matched, random)`` over the rows where both are defined; the
    means are over those same rows, so that each mean difference is the one the t-test tests.

    OT comparison (None, NA in the CSV, for mutual: not measured): ``n_mutual`` mutual best pairs;
    ``n_one_to_many`` OT links that share a word with another link of their utterance pair; ``n_ot_only`` /
    ``n_mutual_only`` links that are not mutual best / mutual best pairs that are not links; ``text_sim_ot_only``,
    ``phone_dist_ot_only`` the means over OT-only links, ``text_sim_mutual``, ``phone_dist_mutual`` over the mutual
    best pairs (each over its defined values)."""
    from scipy.stats import ttest_rel

    df = table.to_pandas() if hasattr(table, "to_pandas") else table
    df = df[df["rank"] == 0]
    rows = []
    for (layer, pooling), every in df.groupby(["layer", "pooling"], sort=True):
        row = dict(lang_a=lang_a, lang_b=lang_b, layer=int(layer), pooling=pooling)
        ot_link = every["ot_link"].fillna(False).astype(bool)
        mutual = every["mutual"].astype(bool)
        g = every[ot_link] if alignment == "ot" else every[mutual]
        row["n_utterance_pairs"] = int(g["id_a"].nunique())
        row["n_word_pairs"] = len(g)
        for matched, random, names in (
            ("text_similarity", "text_similarity_random", ("text_sim_matched", "text_sim_random", "t", "p")),
            (
                "phone_distance",
                "phone_distance_random",
                ("phone_dist_matched", "phone_dist_random", "t_phone", "p_phone"),
            ),
        ):
            both = g[[matched, random]].dropna().to_numpy(np.float64)
            if len(both) >= 2:
                test = ttest_rel(both[:, 0], both[:, 1])
                values = (both[:, 0].mean(), both[:, 1].mean(), float(test.statistic), float(test.pvalue))
            else:
                values = (math.nan,) * 4
            row.update(zip(names, values, strict=True))
        row.update(_ot_comparison(every, ot_link, mutual) if alignment == "ot" else _NO_OT)
        row["alignment"] = alignment
        rows.append(row)
    return rows


_NO_OT = dict(n_mutual=None, n_one_to_many=None, n_ot_only=None, n_mutual_only=None, text_sim_ot_only=math.nan,
              text_sim_mutual=math.nan, phone_dist_ot_only=math.nan, phone_dist_mutual=math.nan)  # fmt: skip


def _ot_comparison(g, ot_link, mutual) -> dict:
    links = g[ot_link]
    key = ["id_a", "id_b"]
    shared = links.duplicated([*key, "word_index_a"], keep=False) | links.duplicated([*key, "word_index_b"], keep=False)
    ot_only, mutual_rows = g[ot_link & ~mutual], g[mutual]

    def mean(rows, column):
        values = rows[column].dropna().to_numpy(np.float64)
        return float(values.mean()) if len(values) else math.nan

    return dict(
        n_mutual=int(mutual.sum()),
        n_one_to_many=int(shared.sum()),
        n_ot_only=len(ot_only),
        n_mutual_only=int((mutual & ~ot_link).sum()),
        text_sim_ot_only=mean(ot_only, "text_similarity"),
        text_sim_mutual=mean(mutual_rows, "text_similarity"),
        phone_dist_ot_only=mean(ot_only, "phone_distance"),
        phone_dist_mutual=mean(mutual_rows, "phone_distance"),
    )


def summary_csv_bytes(rows: list[dict]) -> bytes:
    """``OUT/summary.csv``: SUMMARY_COLUMNS, floats at full precision (``records.csv_cell``), ``NA`` where nothing
    was measured (a probe read 0 mutual pairs, and ``nan``, in a mutual run's OT columns)."""
    return csv_bytes(SUMMARY_COLUMNS, ([na_cell(row.get(c)) for c in SUMMARY_COLUMNS] for row in rows))


FIGURES = {  # file stem: (matched column, random column, axis label)
    "text_similarity": ("text_sim_matched", "text_sim_random", "text similarity (cosine)"),
    "phone_distance": ("phone_dist_matched", "phone_dist_random", "phone distance (normalised)"),
}
MATCHED = {"mutual": "mutual-best word pairs", "ot": "OT-linked word pairs"}


def figure_pngs(name: str, rows: list[dict], source: str = "", alignment: str = "mutual") -> dict[str, bytes]:
    """``{file stem: PNG}``: matched vs random text similarity and phone distance by layer, one colour per pooling,
    for the ``summarize`` rows of one language pair; ``source``: the model and dataset (``engine.captions``), to
    which the n of the rows is added. A figure whose values are all undefined (no matched pair at any layer) is not
    drawn."""
    out = {}
    for key, (matched, random, label) in FIGURES.items():
        if not any(np.isfinite(r[matched]) for r in rows):
            continue
        fig = figures.Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        for i, pooling in enumerate(sorted({r["pooling"] for r in rows})):
            rs = sorted((r for r in rows if r["pooling"] == pooling), key=lambda r: r["layer"])
            layers = [r["layer"] for r in rs]
            color = f"C{i}"
            ax.plot(layers, [r[matched] for r in rs], "o-", color=color, label=f"matched ({pooling})")
            ax.plot(layers, [r[random] for r in rs], "s--", color=color, alpha=0.6, label=f"random ({pooling})")
        ax.set_xlabel(figures.LAYER_LABEL, fontsize=8)
        ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        n = (
            f"n = {captions.count_range([r['n_utterance_pairs'] for r in rows], 'utterance pairs')}, "
            f"{captions.count_range([r['n_word_pairs'] for r in rows], 'word pairs per layer and pooling')}"
        )
        title = f"{name.replace(PAIR_SEPARATOR, ' - ')}: {MATCHED.get(alignment, alignment)} vs random words"
        figures.set_title(fig, title, "; ".join(p for p in (source, n) if p), fontsize=9)
        out[key] = figures._png(fig)
    return out


def write_figures(kv, url: str, name: str, rows: list[dict], source: str = "", alignment: str = "mutual") -> None:
    """``<name>/<stem>.png`` of ``figure_pngs``."""
    pngs = figure_pngs(name, rows, source, alignment)
    write_outputs(kv, {f"{name}/{key}.png": png for key, png in pngs.items()}, url)
