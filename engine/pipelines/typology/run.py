"""The typology job: do a model's language distances follow linguistic typology, layer by layer, and where do
cross-lingual alignment and language separability meet?

Reads a similarity store (``jobs.seqsim``) and writes::

    OUT/typology.csv                     one row per (layer, measure, distance): Mantel r and p, the partial Mantel
                                         controlling for geography, n_languages (TYPOLOGY_COLUMNS)
    OUT/languages.csv                    each language: its URIEL code, or why it was left out (LANGUAGE_COLUMNS)
    OUT/matrices/<measure>-layer-<L>.csv the model's distances correlated (square, language codes as header and index)
    OUT/matrices/uriel-<distance>.csv    URIEL's distances between the same languages
    OUT/figures/typology_by_layer.png    Mantel r against layer, a line per URIEL distance, p < 0.05 filled
    OUT/figures/dendrogram.png           the languages clustered by the model at one layer, beside the genetic tree
    OUT/meet.csv, OUT/figures/meet.png   with --probes: alignment and separability per layer, the layer they meet

``<measure>`` is the similarity measure and the distance kind (``geometry``): ``seqsim-r1`` (1 - R@1), ``seqsim-gap``.
The Mantel tests are ``mantel``'s (scikit-bio's permutations), URIEL's distances ``uriel``'s, the meeting layer
``meet``'s rule. Every number rests on the languages both the store and URIEL have; the others are named.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from engine import captions
from engine.errors import BabelgridError
from engine.listing import chosen
from engine.pipelines.typology import figures, geometry, meet, uriel
from engine.pipelines.typology.config import TypologyConfig, TypologyError
from engine.pipelines.typology.mantel import mantel, min_p_value, partial_mantel
from engine.runtime.runs import RunSummary, output_run, progress_bar
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import csv_bytes as kv_csv_bytes
from engine.stores.records import na_cell
from engine.stores.similarity import open_similarity

log = logging.getLogger(__name__)

TYPOLOGY_COLUMNS = ("layer", "measure", "distance", "r", "p_value", "q_value", "n_languages", "partial_r",
                    "partial_p_value", "method", "permutations")  # fmt: skip
LANGUAGE_COLUMNS = ("language", "uriel_code", "status")
CONTROL = "geographic"


@dataclasses.dataclass
class TypologySummary(RunSummary):
    rows: list = dataclasses.field(default_factory=list)  # dicts of TYPOLOGY_COLUMNS
    missing: dict = dataclasses.field(default_factory=dict)  # language -> why it is left out
    curves: list = dataclasses.field(default_factory=list)  # meet.Curve
    uriel_source: str = ""
    dendrogram_layer: int | None = None
    outputs: list = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [f"typology: {self.seconds:.1f} s; URIEL distances from {self.uriel_source}"]
        for lang, why in sorted(self.missing.items()):
            lines.append(f"  left out: {lang}: {why}")
        measured = [r for r in self.rows if np.isfinite(r["r"])]
        if measured:
            n, floor = measured[0]["n_languages"], min_p_value(measured[0]["n_languages"], measured[0]["permutations"])
            lines.append(f"strongest Mantel r per distance ({n} languages; p >= {floor:.2g} at best):")
            for distance in dict.fromkeys(r["distance"] for r in measured):
                best = max((r for r in measured if r["distance"] == distance), key=lambda r: r["r"])
                lines.append(f"  {distance:>12}: r {best['r']:+.3f} (p {best['p_value']:.3g}, q {best['q_value']:.3g}) "
                             f"at layer {best['layer']} of {best['measure']}")  # fmt: skip
        for curve in self.curves:
            pick = curve.chosen()
            if pick is None:
                lines.append(f"meet: {curve.model}: no layer has both retrieval and language ID")
                continue
            alignment, separability = curve.shares()
            lines.append(
                f"meet: {curve.model}: layer {curve.layers[pick]} (depth {curve.depth[pick]:.2f}): alignment "
                f"{alignment[pick]:.3f}, separability {separability[pick]:.3f}"
            )
        lines += [f"wrote {p}" for p in self.outputs if not p.endswith((".csv",)) or "/matrices/" not in p]
        return "\n".join(lines)


def csv_bytes(columns, rows) -> bytes:
    """Rows (dicts by column, or tuples) as CSV, NaN written NA (a number not measured)."""
    cells = [[row[c] for c in columns] if isinstance(row, dict) else list(row) for row in rows]
    return kv_csv_bytes(columns, [[na_cell(x) for x in row] for row in cells])


def square_csv(matrix: np.ndarray, languages) -> bytes:
    """A language x language matrix, codes as header and index, each value at full precision (``records.csv_cell``): 6
    significant digits moved a Mantel r recomputed from the gap distances, all near 1, by 3e-4 from typology.csv."""
    return kv_csv_bytes(["language", *languages], [[lang, *(float(v) for v in row)]
                                                    for lang, row in zip(languages, matrix, strict=True)])  # fmt: skip


def _languages(reader, measures, asked) -> list[str]:
    stored = sorted({lang for m in measures for pair in reader.pairs(m) for lang in pair})
    return chosen("language", asked, stored, TypologyError, "the similarity store")


def run_typology(config: TypologyConfig) -> TypologySummary:
    """Writes the module docstring's files; a rerun with other settings into the same folder is refused."""
    started = time.monotonic()
    reader = open_similarity(config.similarity)
    measures, layers, languages, _, _ = checked(config, reader)
    meeting = _meeting(config, reader, measures)
    with output_run(config, "typology", TypologyError):
        return _typology(config, reader, measures, layers, languages, started, meeting)


def checked(config: TypologyConfig, reader) -> tuple[list[str], list[int], list[str], list[str], dict[str, str]]:
    """(measures, layers, the store's languages, those URIEL has, the others and why), checked as the run and the plan
    refuse them: URIEL's languages (lang2vec's list, not its distances) before the lease, as refused after the Mantel
    tests they wrote a manifest and computed every test of the run first."""
    measures = chosen("measure", config.measures, reader.measures(), TypologyError, "the similarity store")
    layers = chosen("layer", config.layers, reader.layers, TypologyError, "the similarity store")
    languages = _languages(reader, measures, config.langs)
    if len(languages) < 3:
        where = "the similarity store has" if config.langs is None else "--langs leaves"
        raise TypologyError(f"a Mantel test needs 3 or more languages; {where} {languages}")
    if config.dendrogram_layer is not None and config.dendrogram_layer not in layers:
        raise TypologyError(f"--dendrogram_layer {config.dendrogram_layer} is not among the layers {layers}")
    kept, _, missing = uriel.resolve(languages)
    if len(kept) < 3:
        left = ", ".join(f"{lang} ({why})" for lang, why in sorted(missing.items()))
        raise TypologyError(f"URIEL has {len(kept)} of the store's languages; a Mantel test needs 3. Left out: {left}")
    return measures, layers, languages, kept, missing


def _correlate(config, geo, found, summary, bar) -> dict[str, bytes]:
    """typology.csv's rows into ``summary.rows``, ``bar`` counting the (layer, distance) tests; returns the matrices'
    files."""
    writes = {}
    kinds = set(config.distances) | {CONTROL}
    usable = [i for i, lang in enumerate(geo.languages) if lang in found.languages]
    for (measure, kind), distances in geo.distances.items():
        if kind not in config.kinds:
            continue
        name = f"{measure}-{kind}"
        groups: dict[tuple, list[int]] = {}
        for li, layer in enumerate(geo.layers):
            keep, dropped = geometry.complete(distances[li][np.ix_(usable, usable)], [geo.languages[i] for i in usable])
            keep = tuple(usable[i] for i in keep)
            if dropped:
                log.warning("%s layer %d: %s left out: pairs not measured", name, layer, ", ".join(dropped))
            groups.setdefault(keep, []).append(li)
            langs = [geo.languages[i] for i in keep]
            writes[f"matrices/{name}-layer-{layer}.csv"] = square_csv(distances[li][np.ix_(keep, keep)], langs)
        for keep, positions in groups.items():
            at = [found.languages.index(geo.languages[i]) for i in keep]
            ys = distances[positions][:, keep][:, :, keep] if len(keep) >= 3 else None
            for distance in config.distances:
                r = p = pr = pp = np.full(len(positions), np.nan)
                taken = config.permutations
                if ys is not None:
                    x = found.matrices[distance][np.ix_(at, at)]
                    options = dict(permutations=config.permutations, seed=config.seed, method=config.method)
                    result = mantel(x, ys, **options)
                    r, p, taken = result.r, result.p_value, result.permutations  # every ordering, where fewer
                    if distance != CONTROL and CONTROL in kinds:
                        partial = partial_mantel(x, ys, found.matrices[CONTROL][np.ix_(at, at)], **options)
                        pr, pp = partial.r, partial.p_value
                bar.update(len(positions))
                for k, li in enumerate(positions):
                    summary.rows.append(dict(
                        layer=geo.layers[li], measure=name, distance=distance, r=float(r[k]), p_value=float(p[k]),
                        n_languages=len(keep), partial_r=float(pr[k]), partial_p_value=float(pp[k]),
                        method=config.method, permutations=taken,
                    ))  # fmt: skip
    langs = list(found.languages)
    for distance, matrix in found.matrices.items():
        writes[f"matrices/uriel-{distance}.csv"] = square_csv(matrix, langs)
    summary.rows.sort(key=lambda r: (r["measure"], r["distance"], r["layer"]))
    _q_values(summary.rows)
    return writes


def _q_values(rows: list[dict]) -> None:
    """Benjamini-Hochberg q-values over every Mantel p-value of the run (layers x measures x distances are many
    tests of one question): ``scipy.stats.false_discovery_control``; NA where p is."""
    import scipy.stats

    p = np.array([r["p_value"] for r in rows], float)
    q = np.full(len(p), np.nan)
    measured = np.isfinite(p)
    if measured.any():
        q[measured] = scipy.stats.false_discovery_control(p[measured])
    for row, value in zip(rows, q, strict=True):
        row["q_value"] = float(value)


def _dendrogram(config, geo, found, measures, subtitle, summary) -> dict[str, bytes]:
    measure, kind = measures[0], ("r1" if "r1" in config.kinds else config.kinds[0])
    r1, _ = geo.mean_r1(measure)
    layer = config.dendrogram_layer
    if layer is None:
        if np.isnan(r1).all():
            return {}
        layer = geo.layers[int(np.nanargmax(r1))]
    li = geo.layers.index(layer)
    usable = [i for i, lang in enumerate(geo.languages) if lang in found.languages]
    matrix = geo.distances[measure, kind][li]
    keep, _ = geometry.complete(matrix[np.ix_(usable, usable)], [geo.languages[i] for i in usable])
    keep = [usable[i] for i in keep]
    if len(keep) < 3:
        return {}
    langs = [geo.languages[i] for i in keep]
    at = [found.languages.index(lang) for lang in langs]
    genetic = found.matrices["genetic"][np.ix_(at, at)] if "genetic" in found.matrices else None
    title = f"{measure}-{kind} at layer {layer}"
    summary.dendrogram_layer = layer
    png = figures.dendrogram_png(matrix[np.ix_(keep, keep)], genetic, langs, title, subtitle)
    return {"figures/dendrogram.png": png}


def _meeting(config, reader, measures):
    """What the alignment-and-separability curves read, read and checked before the run: the curves of a compare
    folder, or (the probes folder's LID by layer, its store), or None without --probes."""
    if config.compare:
        return meet.compare_curves(config.compare, list(config.probes), measures[0])
    if not config.probes:
        return None
    if len(config.probes) != 1:
        raise TypologyError(
            f"--probes gave {len(config.probes)} folders: without --compare give one, for the similarity store's model"
        )
    store = meet.probes_store(config.probes[0])
    computed_from = reader.manifest.get("layer_store", "")
    if computed_from and not meet.same_location(store, computed_from):  # another model's LID beside this retrieval
        raise TypologyError(f"probes folder {config.probes[0]!r} was run on {store!r}, but the similarity store was "
                            f"computed from {computed_from!r}: give the probes folder of that layer store")  # fmt: skip
    return meet.read_lid(config.probes[0]), store


def _curves(config, reader, geo, measures, meeting) -> list:
    if meeting is None:
        return []
    if config.compare:
        return meeting
    lid, store = meeting
    if not meet.same_location(store, reader.manifest["layer_store"]):
        log.warning("--probes %s was run on %s, the similarity store on %s: the same model?", config.probes[0],
                    store, reader.manifest["layer_store"])  # fmt: skip
    r1, random = geo.mean_r1(measures[0])
    deepest = max(reader.layers)
    depth = [layer / deepest for layer in geo.layers]
    return [meet.curve(reader.manifest["model_name"], geo.layers, depth, r1, random, lid)]


def _subtitle(manifest: dict, n: str) -> str:
    """The model and the dataset its layer store was encoded from; the similarity store alone where that moved."""
    try:
        created = open_store(manifest["layer_store"]).manifest.get("created", {})
    except BabelgridError:
        created = {}
    return captions.source_line(manifest["model_name"], created, n)


def _typology(config, reader, measures, layers, languages, started, meeting) -> TypologySummary:
    summary = TypologySummary()
    geo = geometry.read_geometry(reader, measures, layers, languages)
    found = uriel.uriel_distances(languages, tuple(dict.fromkeys((*config.distances, CONTROL, "genetic"))))
    summary.missing, summary.uriel_source = dict(found.missing), found.source
    for lang, why in found.missing.items():
        log.warning("%s is left out of the typology tests: %s", lang, why)
    # The Mantel tests are the stage that grows with the store (each --permutations times, per layer and distance)
    tested = sum(kind in config.kinds for _, kind in geo.distances) * len(geo.layers) * len(config.distances)
    bar = progress_bar(tested, "typology", "test", config.run.progress)
    writes = _correlate(config, geo, found, summary, bar)
    bar.close()
    subtitle = _subtitle(reader.manifest, f"{len(found.languages)} languages")
    names = [f"{m}-{k}" for m in measures for k in config.kinds]
    writes["typology.csv"] = csv_bytes(TYPOLOGY_COLUMNS, summary.rows)
    codes = dict(zip(found.languages, found.codes, strict=True))
    status = [(lang, codes.get(lang, ""), "used" if lang in codes else summary.missing[lang]) for lang in languages]
    writes["languages.csv"] = csv_bytes(LANGUAGE_COLUMNS, status)
    writes["figures/typology_by_layer.png"] = figures.correlation_png(summary.rows, names, config.distances, subtitle)
    writes.update(_dendrogram(config, geo, found, measures, subtitle, summary))
    summary.curves = _curves(config, reader, geo, measures, meeting)
    if summary.curves:
        rows = [row for curve in summary.curves for row in curve.rows()]
        writes["meet.csv"] = csv_bytes(meet.MEET_COLUMNS, rows)
        writes["figures/meet.png"] = figures.meet_png(summary.curves, f"retrieval: {measures[0]} R@1; LID: probes")
    _, kv = open_kvstore(config.run.out)
    write_outputs(kv, writes, config.run.out)
    summary.outputs = [config.run.out.rstrip("/") + "/" + k for k in writes]
    summary.seconds = time.monotonic() - started
    return summary
