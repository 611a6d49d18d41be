"""The series job: one model's training steps, or a ladder of model sizes, turned into one table per analysis.

Reads a layer store per step or size (``--stores``, in series order) and the final model's (``--reference``), and
writes::

    OUT/retrieval.csv        R@1 per step, layer and directed language pair, and their mean (`all`)
    OUT/centred.csv          R@1 with each language's mean removed, against without: the delta, per pair and `all`
    OUT/lid.csv              language-ID accuracy per step and layer
    OUT/cka.csv              linear CKA of each layer with the reference's layer at the same depth
    OUT/meet.csv             alignment and separability per step and layer, and the layer where they meet
    OUT/best.csv             per step: the layer of best R@1 and the meeting layer
    OUT/figures/heatmaps.png layer (depth) x step: R@1, its delta, LID and CKA
    OUT/figures/best_layer.png  the best layer's depth and the meeting layer's over the series

Every measure is ``measures``'s on ``pool``'s mean-pooled states, read once per store and layer; R@1 and LID are read
from a store's retrieval and probes folders instead where given (``read``). The meeting layer is
``engine.pipelines.stages.meet``'s rule, the typology job's. Columns: docs/outputs.md; reading: docs/dynamics.md.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from engine import captions
from engine.pipelines.series import figures, measures, read
from engine.pipelines.series.config import SeriesConfig, SeriesError
from engine.pipelines.series.pool import pooled_layer
from engine.pipelines.stages.meet import MEET_COLUMNS, curve
from engine.runtime.runs import RunSummary, output_run, progress_bar
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.records import csv_bytes as kv_csv_bytes
from engine.stores.records import na_cell

ALL = "all"
HEAD = ("model", "step", "layer", "depth")
RETRIEVAL_COLUMNS = (*HEAD, "lang_a", "lang_b", "measure", "r1", "random", "queries")
CENTRED_COLUMNS = (*HEAD, "lang_a", "lang_b", "measure", "r1", "centred_r1", "delta", "queries")
LID_COLUMNS = (*HEAD, "accuracy", "macro_f1", "chance", "n", "source")
CKA_COLUMNS = (*HEAD, "reference", "reference_layer", "reference_depth", "cka", "n")
SERIES_MEET_COLUMNS = (MEET_COLUMNS[0], "step", *MEET_COLUMNS[1:])  # typology's meet.csv with the step
BEST_COLUMNS = ("model", "step", "best_layer", "best_depth", "best_r1", "meet_layer", "meet_depth", "meet_score")


@dataclasses.dataclass
class SeriesSummary(RunSummary):
    tables: dict = dataclasses.field(default_factory=dict)  # file name -> rows (tuples of its columns)
    outputs: list = dataclasses.field(default_factory=list)
    reference: str = ""
    notes: list = dataclasses.field(default_factory=list)  # what the tables do not say by themselves

    def report(self) -> str:
        lines = [f"series: {len({r[0] for r in self.tables.get('best.csv', [])})} models in {self.seconds:.1f} s; "
                 f"CKA against {self.reference}"]  # fmt: skip
        for row in self.tables.get("best.csv", []):
            model, step, layer, depth, r1, meet_layer, meet_depth, _ = row
            meeting = "none" if meet_layer is None else f"layer {meet_layer} (depth {meet_depth:.2f})"
            best = "NA (no pair with queries)" if layer is None else f"{r1:.3f} at layer {layer} (depth {depth:.2f})"
            lines.append(f"  {model} ({step}): best R@1 {best}; meet: {meeting}")
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes), *(f"wrote {p}" for p in self.outputs)])


def csv_bytes(columns, rows) -> bytes:
    return kv_csv_bytes(columns, [[na_cell(x) for x in row] for row in rows])


def run_series(config: SeriesConfig) -> SeriesSummary:
    """Writes the module docstring's files; a rerun with other settings into the same folder is refused."""
    started = time.monotonic()
    series, reference, langs = read.members(config)
    given_r1 = [read.read_retrieval(f, config.retrieval_measure, langs, m.reader.url) if f else None
                for f, m in zip(config.retrieval or [""] * len(series), series, strict=True)]  # fmt: skip
    given_centred = [read.read_centred(f, config.retrieval_measure, langs) if f else None
                     for f in (config.centred or [""] * len(series))]  # fmt: skip
    given_lid = [read.read_lid(f, m.reader, langs) if f else None
                 for f, m in zip(config.probes or [""] * len(series), series, strict=True)]  # fmt: skip
    with output_run(config, "series", SeriesError):
        summary = SeriesSummary(reference=reference.reader.url)
        tables = _measure(config, series, reference, langs, given_r1, given_centred, given_lid)
        summary.tables = tables
        summary.notes = _notes(config, series, reference, langs, tables)
        writes = {name: csv_bytes(COLUMNS[name], rows) for name, rows in tables.items()}
        n = sum(len(series[0].reader.arrays(lang).rows) for lang in langs)
        created = series[-1].reader.manifest.get("created", {})
        subtitle = captions.source_line(f"{series[0].name} .. {series[-1].name}", created, f"{n} utterances")
        axis = config.axis or ("training step" if config.values is None and _stepped(series) else "model")
        writes.update(figures.series_figures(tables, [m.value for m in series], axis, subtitle))
        _, kv = open_kvstore(config.run.out)
        write_outputs(kv, writes, config.run.out)
        summary.outputs = [config.run.out.rstrip("/") + "/" + k for k in writes]
    summary.seconds = time.monotonic() - started
    return summary


def _notes(config, series, reference, langs, tables) -> list[str]:
    """What a reader of the tables would otherwise have to find out: languages every store holds that ``--langs``
    left out, and stores that share no audio with the reference (their CKA is NA: it needs the same utterances)."""
    notes = []
    shared = set(reference.reader.languages()).intersection(*(m.reader.languages() for m in series))
    left_out = sorted(shared - set(langs))
    if left_out:
        notes.append(f"--langs left out {', '.join(left_out)}, which every store holds: the tables measure "
                     f"{', '.join(langs)} only")  # fmt: skip
    matched = {row[0] for row in tables["cka.csv"] if row[-1]}
    alone = [m.name for m in series if m.name not in matched]
    if alone:
        notes.append(f"{', '.join(alone)} shares no utterance (language, id, recording) with the reference "
                     f"{reference.name}: its cka.csv rows are NA; a series compares stores of one audio")  # fmt: skip
    return notes


def _stepped(series) -> bool:
    return all(m.reader.info.dims.to_dict().get("config", {}).get("training_step") is not None for m in series)


def _measure(config, series, reference, langs, given_r1, given_centred, given_lid) -> dict[str, list[tuple]]:
    """Every table's rows. The reference's layers are read once each: the work is grouped by the reference layer a
    store's layer is matched to."""
    work: dict[int, list[tuple[int, int]]] = {}
    for i, member in enumerate(series):
        for layer in member.layers:
            work.setdefault(read.matched_layer(member, layer, reference), []).append((i, layer))
    tables = {name: [] for name in COLUMNS}
    curves: dict[int, dict[int, tuple]] = {i: {} for i in range(len(series))}  # layer -> (r1, random, lid, chance)
    bar = progress_bar(sum(len(m.layers) for m in series), "series", "layer", config.run.progress)
    for ref_layer in sorted(work):
        ref_pooled = pooled_layer(reference.reader, langs, ref_layer)
        for i, layer in work[ref_layer]:
            m = series[i]
            head = (m.name, m.value, layer, m.depth(layer))
            pooled = pooled_layer(m.reader, langs, layer)
            computed = measures.retrieval(pooled)
            pairs = computed if given_r1[i] is None else given_r1[i].get(layer, [])
            measure = "mean" if given_r1[i] is None else config.retrieval_measure
            r1, random, queries = read.mean_r1(pairs)
            tables["retrieval.csv"] += [(*head, p.lang_a, p.lang_b, measure, p.r1, p.random, p.queries) for p in pairs]
            tables["retrieval.csv"].append((*head, ALL, ALL, measure, r1, random, queries))
            if given_centred[i] is None:
                raw = [(p.lang_a, p.lang_b, p.r1, p.queries) for p in computed]
                after = {(p.lang_a, p.lang_b): p.r1 for p in measures.retrieval(measures.centred(pooled))}
                pairs_c = [(a, b, r, after[a, b], q) for a, b, r, q in raw if (a, b) in after]
                tables["centred.csv"] += _centred(head, "mean", pairs_c)
            else:
                rows = [r for r in given_centred[i].get(layer, []) if r[0] != ALL]
                tables["centred.csv"] += _centred(head, config.retrieval_measure, rows)
            if given_lid[i] is None:
                score = measures.language_id(layer, pooled, config.folds, config.seed)
                lid = (score.accuracy, score.macro_f1, score.chance, score.n, "store")
            else:
                lid = (*given_lid[i].get(layer, (np.nan, np.nan, np.nan, 0)), "probes")
            tables["lid.csv"].append((*head, *lid))
            value, n = measures.cka(pooled, ref_pooled)
            tables["cka.csv"].append((*head, reference.name, ref_layer, reference.depth(ref_layer), value, n))
            curves[i][layer] = (r1, random, lid[0], lid[2])
            bar.update(1)
    bar.close()
    for name in ("retrieval.csv", "centred.csv", "lid.csv", "cka.csv"):
        tables[name].sort(key=lambda r: (_order(series, r[0]), r[2]))  # stable: a layer's pairs stay in order
    for i, m in enumerate(series):
        layers = sorted(curves[i])
        c = curve(m.name, layers, [m.depth(x) for x in layers], [curves[i][x][0] for x in layers],
                  [curves[i][x][1] for x in layers], {x: curves[i][x][2:] for x in layers})  # fmt: skip
        tables["meet.csv"] += [(row[0], m.value, *row[1:]) for row in c.rows()]
        tables["best.csv"].append(_best(m, c))
    return tables


def _order(series, name) -> int:
    return next(i for i, m in enumerate(series) if m.name == name)


def _centred(head, measure: str, pairs) -> list[tuple]:
    """Rows of (lang_a, lang_b, R@1, R@1 with the language means removed, queries), and their mean (``all``)."""
    rows = [(*head, a, b, measure, r1, c1, c1 - r1, q) for a, b, r1, c1, q in pairs]
    if rows:
        r1, c1 = float(np.mean([r[7] for r in rows])), float(np.mean([r[8] for r in rows]))
        rows.append((*head, ALL, ALL, measure, r1, c1, c1 - r1, sum(r[10] for r in rows)))
    return rows


def _best(member, c) -> tuple:
    """best.csv's row: the layer of highest mean R@1 (the shallower on ties) and the meeting layer."""
    r1 = np.asarray(c.retrieval, float)
    best = int(np.nanargmax(r1)) if np.isfinite(r1).any() else None
    pick = c.chosen()
    alignment, separability = c.shares()
    b = (c.layers[best], c.depth[best], float(r1[best])) if best is not None else (None, None, float("nan"))
    meet = (None, None, float("nan"))
    if pick is not None:
        meet = (c.layers[pick], c.depth[pick], float(min(alignment[pick], separability[pick])))
    return (member.name, member.value, *b, *meet)


COLUMNS = {
    "retrieval.csv": RETRIEVAL_COLUMNS,
    "centred.csv": CENTRED_COLUMNS,
    "lid.csv": LID_COLUMNS,
    "cka.csv": CKA_COLUMNS,
    "meet.csv": SERIES_MEET_COLUMNS,
    "best.csv": BEST_COLUMNS,
}
