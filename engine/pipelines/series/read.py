"""The series' inputs: its stores checked as one series (the same languages, a depth per layer, a value each), and
the retrieval and probes output folders read in place of computing (``jobs.retrieval``'s ``retrieval.csv``,
``jobs.probes``'s ``lid.csv``, as those jobs wrote them: their digests checked)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable

import numpy as np

from engine.models.family import FAMILIES
from engine.pipelines.series.config import SeriesConfig, SeriesError
from engine.pipelines.series.measures import Directed
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore, read_value
from engine.stores.reader import StoreReader, open_store


@dataclasses.dataclass(frozen=True)
class Member:
    """One store of the series: its name, its value on the x axis, and its layers' depths."""

    name: str
    value: float | int
    reader: StoreReader
    layers: tuple[int, ...]
    depth: Callable[[int], float]


def members(config: SeriesConfig) -> tuple[list[Member], Member, list[str]]:
    """(the series, the reference, the languages every store holds) as ``config`` names them."""
    readers = [open_store(s) for s in config.stores]
    ref = open_store(config.reference) if config.reference else readers[-1]
    names = list(config.names) if config.names else [r.info.model_name for r in readers]
    if len(set(names)) != len(names):
        raise SeriesError(f"the stores' model names repeat ({', '.join(names)}): give --names, one per store")
    steps = [r.info.dims.to_dict().get("config", {}).get("training_step") for r in readers]
    if config.values is not None:
        values = [int(v) if float(v).is_integer() else v for v in config.values]
    elif all(s is not None for s in steps):
        values = steps
    else:
        values = list(range(len(readers)))
    series = [_member(n, v, r) for n, v, r in zip(names, values, readers, strict=True)]
    shared = set(ref.languages()).intersection(*(r.languages() for r in readers))
    if config.langs:
        missing = {r.url: [lang for lang in config.langs if lang not in r.languages()] for r in (*readers, ref)}
        missing = {k: v for k, v in missing.items() if v}
        if missing:
            raise SeriesError("--langs names languages a store lacks: "
                              + "; ".join(f"{k}: {', '.join(v)}" for k, v in missing.items()))  # fmt: skip
        langs = list(config.langs)
    else:
        langs = sorted(shared)
    if len(langs) < 2:
        raise SeriesError(f"a series needs 2 or more languages every store holds; they share {sorted(shared)}")
    return series, _member(ref.info.model_name, float("nan"), ref), langs


def _member(name, value, reader: StoreReader) -> Member:
    depth = FAMILIES[reader.info.family].store_depth(reader.info)
    return Member(name, value, reader, tuple(reader.info.layers), depth)


def matched_layer(member: Member, layer: int, reference: Member) -> int:
    """The reference's stored layer nearest in depth to ``member``'s ``layer`` (the shallower on ties): the same
    layer index when the two have the same depth, the common depth axis when they differ."""
    d = member.depth(layer)
    # rounded: depths are fractions like 1/4 and 1/6, whose equal distances differ in the last bit
    return min(reference.layers, key=lambda r: (round(abs(reference.depth(r) - d), 9), r))


def _csv(folder: str, name: str, job: str) -> list[dict] | None:
    _, kv = open_kvstore(folder)
    data = read_output(kv, name, folder, fix=repair_hint(folder, job))
    return None if data is None else list(csv.DictReader(io.StringIO(data.decode())))


def _number(text: str) -> float:
    return float("nan") if text in ("", "NA") else float(text)


def read_retrieval(folder: str, measure: str, langs, store: str | None = None) -> dict[int, list[Directed]]:
    """layer -> the directed pairs of ``langs`` with queries, from a retrieval folder's R@1 rows of ``measure``; a
    folder that records its layer store (the similarity store's manifest, or ``retrieval.json`` in an --out of its
    own) must have scored ``store``'s: folders given out of order put one step's numbers on another's."""
    _check_scored(folder, store)
    rows = _csv(folder, "retrieval.csv", "retrieval")
    if rows is None:
        raise SeriesError(f"{folder!r} has no retrieval.csv: give the --out folder of jobs.retrieval (or '' for it)")
    measures = sorted({r["measure"] for r in rows})
    if measure not in measures:
        raise SeriesError(f"{folder}/retrieval.csv has no measure {measure!r}; it has {measures}: --retrieval_measure")
    out: dict[int, list[Directed]] = {}
    for r in rows:
        if r["measure"] == measure and r["metric"] == "R@1" and int(r["queries"]) and r["lang_a"] in langs \
                and r["lang_b"] in langs:  # fmt: skip
            d = Directed(r["lang_a"], r["lang_b"], _number(r["value"]), _number(r["random"]), int(r["queries"]))
            out.setdefault(int(r["layer"]), []).append(d)
    return out


def read_centred(folder: str, measure: str, langs) -> dict[int, list[tuple[str, str, float, float, int]]]:
    """layer -> (lang_a, lang_b, raw R@1, centred R@1, queries) of the directed pairs of ``langs``, from a retrieval
    ``--baseline`` folder's baseline_delta.csv: its store (``r1``) the language-mean-removed similarity, its baseline
    (``baseline_r1``) the raw one."""
    rows = _csv(folder, "baseline_delta.csv", "retrieval")
    if rows is None:
        raise SeriesError(f"{folder!r} has no baseline_delta.csv: give the --out folder of jobs.retrieval --baseline "
                          "(the centred similarity store against the raw one), or '' for it")  # fmt: skip
    rows = [r for r in rows if r["measure"] == measure]
    if not rows:
        raise SeriesError(f"{folder}/baseline_delta.csv has no measure {measure!r}: --retrieval_measure")
    wrong = {r["transform"] for r in rows if not r["transform"].startswith("mean")}
    if wrong or any(r["baseline_transform"] != "none" for r in rows):
        raise SeriesError(f"{folder}/baseline_delta.csv compares {sorted({r['transform'] for r in rows})} against "
                          f"{sorted({r['baseline_transform'] for r in rows})}; the series reads --remove_language mean "
                          "against none")  # fmt: skip
    out: dict[int, list] = {}
    for r in rows:
        if r["lang_a"] in langs and r["lang_b"] in langs:
            row = (r["lang_a"], r["lang_b"], _number(r["baseline_r1"]), _number(r["r1"]), int(r["queries"]))
            out.setdefault(int(r["layer"]), []).append(row)
    return out


def _check_scored(folder: str, store: str | None) -> None:
    _, kv = open_kvstore(folder)
    for key in ("retrieval.json", "manifest.json"):
        found = read_value(kv, key, folder)
        recorded = json.loads(bytes(found.value)).get("layer_store") if found.state == "value" else None
        if recorded and store and not _same_location(recorded, store):
            raise SeriesError(f"retrieval folder {folder!r} scored the similarity of {recorded!r}, not of {store!r}: "
                              "give each member's own, in the order of --stores")  # fmt: skip
        if recorded:
            return


def read_lid(folder: str, store, langs) -> dict[int, tuple[float, float, float, int]]:
    """layer -> (accuracy, macro_f1, chance, n) of a probes folder's lid.csv; the folder must have probed ``store``
    (its reader), on the series' languages ``langs``: a probe of more languages, beside retrieval on fewer, gave
    meet.csv a separability and an alignment of two language sets (a probe's series with --langs)."""
    store_languages, store = list(store.languages()), store.url
    _, kv = open_kvstore(folder)
    found = read_value(kv, "manifest.json", folder)
    manifest = json.loads(bytes(found.value)) if found.state == "value" else {}
    if manifest.get("format") != "babelgrid-probes":
        raise SeriesError(f"{folder!r} is not a probes output folder (format {manifest.get('format')!r})")
    if not _same_location(manifest.get("store", ""), store):
        raise SeriesError(f"probes folder {folder!r} was run on {manifest.get('store')!r}, not on {store!r}")
    probed = sorted(manifest.get("langs") or store_languages)
    if probed != sorted(langs):
        raise SeriesError(f"probes folder {folder!r} probed languages {probed}, the series measures {sorted(langs)}: "
                          "give a probes run on the same --langs, or '' to probe them here")  # fmt: skip
    rows = _csv(folder, "lid.csv", "probes")
    if rows is None:
        raise SeriesError(f"{folder!r} has no lid.csv: run jobs.probes --probes lid into it (or give '' for it)")
    return {int(r["layer"]): (_number(r["accuracy"]), _number(r["macro_f1"]), _number(r["chance"]), int(r["n"]))
            for r in rows}  # fmt: skip


def _same_location(a: str, b: str) -> bool:
    local = ("://" not in a) and ("://" not in b)
    return os.path.realpath(a) == os.path.realpath(b) if local else a.rstrip("/") == b.rstrip("/")


def mean_r1(pairs: list[Directed]) -> tuple[float, float, int]:
    """(mean R@1, mean random, summed queries) over the directed pairs: the pooled row (``all``)."""
    if not pairs:
        return float("nan"), float("nan"), 0
    return (float(np.mean([p.r1 for p in pairs])), float(np.mean([p.random for p in pairs])),
            sum(p.queries for p in pairs))  # fmt: skip
