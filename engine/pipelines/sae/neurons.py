"""Do an SAE's language-selective features line up with the neurons job's language-selective feed-forward units?

Both jobs give, per layer, each feature's (each unit's) firing rate in each language: the sae job's ``rates``, the
neurons job's ``units.parquet`` (``rate_<lang>``; a unit of block L writes into layer L, the block's output, which
the SAE of layer L reads). Both are read here under one rule, over the languages both runs have and the layers both
have: LAPE recomputed from the rates over those languages (``stages.lape.entropy``), and a feature or unit is
selective for the language it fires most in when its LAPE is below ``SELECTIVE`` of ``log`` of the languages (the
sae job's bar, docs/sae.md; the neurons job's own selection, a quota, is kept beside it as ``units_selected``).

- per (layer, language): the shares of live features and of live units selective for the language, and how many of
  the neurons job's own selected units the language owns;
- per layer: the median normalised LAPE (LAPE / log of the languages) of live features and of live units;
- over the (layer, language) cells: Spearman's rho between the two shares (``scipy.stats.spearmanr``) and its
  p-value, null (not measured) with fewer than three cells or a constant share.

This says whether the two kinds of selectivity appear at the same depths and for the same languages. It does not pair
a feature with a unit: that would need the model's weights or both on the same frames, which neither output keeps.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow.parquet as pq

from engine.pipelines.sae.config import SaeError
from engine.pipelines.sae.evaluate import SELECTIVE
from engine.pipelines.stages import lape as lape_lib
from engine.runtime.runs import SETTINGS
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore, read_value

UNITS = "units.parquet"  # the neurons job's (engine.pipelines.neurons.run.UNITS)
ALIGN_COLUMNS = ("layer", "language", "sae_features", "sae_selective", "sae_share", "units", "units_selective",
                 "units_share", "units_selected")  # fmt: skip
LAYER_COLUMNS = ("layer", "sae_median_lape", "units_median_lape")


@dataclasses.dataclass(frozen=True)
class Units:
    """The neurons job's rates: ``rates[layer] f64[language, unit]`` over ``languages``; ``selected[layer]``: its own
    selection, ``owners[layer]``: the languages each selected unit belongs to; ``model``: its --model setting."""

    languages: tuple[str, ...]
    rates: dict
    selected: dict
    owners: dict
    model: str | None


def read_units(url: str) -> Units:
    """A neurons job's output folder (its ``units.parquet``, checked against its digest file)."""
    _, kv = open_kvstore(url)
    fix = repair_hint(url, "neurons")
    data = read_output(kv, UNITS, url, fix=fix)
    if data is None:
        raise SaeError(f"--neurons {url!r} has no {UNITS}: give the output folder of a finished neurons job")
    table = pq.read_table(io.BytesIO(data)).to_pandas()
    languages = tuple(c[len("rate_") :] for c in table.columns if c.startswith("rate_"))
    manifest = read_value(kv, SETTINGS, url)
    model = json.loads(bytes(manifest.value)).get("model") if manifest.state == "value" else None
    rates, selected, owners = {}, {}, {}
    for layer, rows in table.groupby("layer", sort=True):
        rows = rows.sort_values("unit")
        rates[int(layer)] = np.stack([rows[f"rate_{lang}"].to_numpy(np.float64) for lang in languages])
        selected[int(layer)] = rows["selected"].to_numpy(bool)
        owners[int(layer)] = [str(x).split(",") if x else [] for x in rows["languages"]]
    return Units(languages, rates, selected, owners, model)


def selectivity(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(live bool[n], normalised LAPE f64[n] (NaN where dead), belongs bool[language, n]) of ``rates f64[language,
    n]`` under the sae job's bar."""
    p = np.asarray(rates, np.float64)
    h = lape_lib.entropy(p)
    live = np.isfinite(h)
    norm = h / np.log(len(p))
    with np.errstate(invalid="ignore"):
        selective = live & (norm < SELECTIVE)
    belongs = selective[None] & (p == p.max(axis=0, keepdims=True))
    return live, norm, belongs


def shared(units: Units, sae_languages, sae_layers) -> tuple[list, list]:
    """(languages, layers) the SAE run and the neurons run share, refused when fewer than two languages or no layer:
    checked before any training, and again on the finished layers."""
    langs = [lang for lang in sae_languages if lang in units.languages]
    layers = [layer for layer in sae_layers if layer in units.rates]
    if len(langs) < 2:
        raise SaeError(
            f"--neurons: the neurons run's languages {list(units.languages)} share fewer than two with the SAE's "
            f"{list(sae_languages)}"
        )
    if not layers:
        raise SaeError(
            f"--neurons: the neurons run has layers {sorted(units.rates)} (blocks 1..L), none of the SAE's "
            f"{sorted(sae_layers)}"
        )
    return langs, layers


def align(parts: dict, sae_languages, units: Units) -> tuple[list, list, dict]:
    """(``ALIGN_COLUMNS`` rows, ``LAYER_COLUMNS`` rows, summary) of the SAE layers' parts against ``units``."""
    from scipy import stats

    langs, layers = shared(units, sae_languages, list(parts))
    rows, per_layer = [], []
    for layer in layers:
        mine = parts[layer]["rates"][[list(sae_languages).index(lang) for lang in langs]]
        theirs = units.rates[layer][[units.languages.index(lang) for lang in langs]]
        (f_live, f_norm, f_belongs), (u_live, u_norm, u_belongs) = selectivity(mine), selectivity(theirs)
        per_layer.append([layer, _json(float(np.nanmedian(f_norm))) if f_live.any() else None,
                          _json(float(np.nanmedian(u_norm))) if u_live.any() else None])  # fmt: skip
        for i, lang in enumerate(langs):
            owned = sum(lang in owners for owners, chosen in zip(units.owners[layer], units.selected[layer],
                                                                  strict=True) if chosen)  # fmt: skip
            rows.append([layer, lang, int(f_live.sum()), int(f_belongs[i].sum()),
                         float(f_belongs[i].sum() / max(f_live.sum(), 1)), int(u_live.sum()), int(u_belongs[i].sum()),
                         float(u_belongs[i].sum() / max(u_live.sum(), 1)), int(owned)])  # fmt: skip
    a = np.array([r[4] for r in rows])
    b = np.array([r[7] for r in rows])
    rho = p = float("nan")
    if len(rows) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        result = stats.spearmanr(a, b)
        rho, p = float(result.statistic), float(result.pvalue)
    summary = {"spearman_rho": _json(rho), "p_value": _json(p), "cells": len(rows), "languages": langs,
               "layers": layers, "neurons_model": units.model}  # fmt: skip
    return rows, per_layer, summary


def _json(value: float) -> float | None:
    """A number for the JSON summary: None (null) where it was not measured, never NaN."""
    return None if not np.isfinite(value) else value
