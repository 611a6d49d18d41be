"""The layer where cross-lingual alignment and language separability meet ("Multilingual Steering by Design",
2605.23036, picks it a priori): the typology job's sources of the two curves. The rule and its rows are
``engine.pipelines.stages.meet``'s, which the series job applies too.

Per model and layer, two curves on one scale, each its share of the way from chance to perfect:

- alignment: retrieval R@1 (mean over directed pairs), ``(R@1 - random) / (1 - random)``;
- separability: language-ID accuracy of the probes job (``lid.csv``), ``(accuracy - chance) / (1 - chance)``.

The rule: the layer that maximises the smaller of the two (``min(alignment, separability)``; ties to the shallower
layer). A layer where either is missing is not a candidate. Depth is ``layer / (L + 1)`` (0 = conv stem, 1 =
ln_post) so that models of different depths share one axis.

Sources: one model's retrieval from the similarity store (``geometry``) and its ``--probes`` folder; or every model of
a compare run (``--compare``: its ``by_depth.csv`` pooled R@1), each with the probes folder of its layer store
(``--probes`` folders are matched to the compare run's stores by the store each was run on).
"""

from __future__ import annotations

import csv
import io
import json
import os

from engine.pipelines.stages.meet import MEET_COLUMNS, Curve, curve  # noqa: F401  (the rule, shared with series)
from engine.pipelines.typology.config import TypologyError
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore, read_value


def _read_csv(folder: str, name: str, job: str) -> list[dict]:
    _, kv = open_kvstore(folder)
    data = read_output(kv, name, folder, fix=repair_hint(folder, job))
    if data is None:
        raise TypologyError(f"{folder!r} has no {name}: run python -m jobs.{job} --out {folder} first")
    return list(csv.DictReader(io.StringIO(data.decode())))


def _manifest(folder: str) -> dict:
    _, kv = open_kvstore(folder)
    found = read_value(kv, "manifest.json", folder)
    if found.state != "value":
        raise TypologyError(f"{folder!r} has no manifest.json: it is not a babelgrid output folder")
    return json.loads(bytes(found.value))


def _number(text: str) -> float:
    return float("nan") if text in ("", "NA") else float(text)


def read_lid(probes: str) -> dict[int, tuple[float, float]]:
    """layer -> (accuracy, chance) of a probes folder's lid.csv."""
    rows = _read_csv(probes, "lid.csv", "probes")
    return {int(r["layer"]): (_number(r["accuracy"]), _number(r["chance"])) for r in rows}


def same_location(a: str, b: str) -> bool:
    """Whether two store locations name the same store (local paths resolved, URLs compared as written)."""
    local = ("://" not in a) and ("://" not in b)
    return os.path.realpath(a) == os.path.realpath(b) if local else a.rstrip("/") == b.rstrip("/")


def probes_store(probes: str) -> str:
    manifest = _manifest(probes)
    if manifest.get("format") != "babelgrid-probes":
        raise TypologyError(f"{probes!r} is not a probes output folder (its format is {manifest.get('format')!r})")
    return manifest["store"]


def compare_curves(compare: str, probes: list[str], measure: str | None) -> list[Curve]:
    """A curve per model of a compare run that a ``probes`` folder was run for (matched by layer store)."""
    manifest = _manifest(compare)
    if manifest.get("format") != "babelgrid-compare":
        raise TypologyError(f"{compare!r} is not a compare output folder (format {manifest.get('format')!r})")
    rows = [r for r in _read_csv(compare, "by_depth.csv", "compare") if r["lang_a"] == "all" and r["metric"] == "R@1"]
    measures = sorted({r["measure"] for r in rows})
    measure = measure if measure in measures else (measures[0] if measures else None)
    rows = [r for r in rows if r["measure"] == measure]
    names = list(dict.fromkeys(r["model"] for r in rows))
    stores = list(manifest["stores"])
    if manifest.get("names"):
        names = list(manifest["names"])
    if len(names) != len(stores):
        raise TypologyError(f"{compare!r}: {len(stores)} stores but models {names} in by_depth.csv")
    by_store = {}
    for folder in probes:
        store = probes_store(folder)
        match = [i for i, s in enumerate(stores) if same_location(s, store)]
        if not match:
            raise TypologyError(
                f"probes folder {folder!r} was run on {store!r}, which is not one of the compare run's stores "
                f"({', '.join(stores)})"
            )
        by_store[match[0]] = read_lid(folder)
    curves = []
    for i, name in enumerate(names):
        own = sorted((r for r in rows if r["model"] == name), key=lambda r: int(r["layer"]))
        if not own:
            continue
        layers = [int(r["layer"]) for r in own]
        depth = [float(r["depth"]) for r in own]
        retrieval = [_number(r["value"]) for r in own]
        random = [_number(r["random"]) for r in own]
        curves.append(curve(name, layers, depth, retrieval, random, by_store.get(i, {})))
    return curves
