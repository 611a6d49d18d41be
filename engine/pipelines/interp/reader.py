"""Analyst reader of an interp run's output (``engine.pipelines.interp.output``): one call per question.

from engine.pipelines.interp.reader import read_pairs, read_summary
df = read_pairs("/tmp/demo-interp", "en", "de", layer=6)          # word pairs of en-de at layer 6
df = read_pairs("/tmp/demo-interp", "en", "de", layer=6, pooling="centre", parallel_only=True)
summary = read_summary("/tmp/demo-interp")                        # summary.csv as a DataFrame
"""

from __future__ import annotations

import io

import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from engine.pipelines.interp.config import InterpError
from engine.pipelines.interp.output import PAIR_SEPARATOR, PAIRS, SUMMARY
from engine.stores.kv import open_kvstore, read_value
from engine.stores.parts import read_table
from engine.stores.similarity import check_name


def _read(url: str, key: str) -> bytes:
    _, kv = open_kvstore(url)
    found = read_value(kv, key, url)
    if found.state != "value":
        raise InterpError(f"no {key} under {url!r}: run jobs.interp there (it writes it when a language pair is done)")
    return bytes(found.value)


def read_pairs(url: str, lang_a: str, lang_b: str, layer: int | None = None, *, pooling: str | None = None,
               parallel_only: bool = False):  # fmt: skip
    """The word pairs of (lang_a, lang_b), of one ``layer`` (None = all) and ``pooling`` (None = all), as a pandas
    DataFrame with the columns of ``engine.pipelines.interp.output.PAIR_COLUMNS``; ``parallel_only`` drops retrieved
    pairs (rank > 0)."""
    check_name("language", lang_a)
    check_name("language", lang_b)
    key = f"{lang_a}{PAIR_SEPARATOR}{lang_b}/{PAIRS}"
    table = read_table(_read(url, key), key, url, "interp")
    expr = None
    for on, value in (("layer", layer), ("pooling", pooling), ("rank", 0 if parallel_only else None)):
        if value is not None:
            term = pads.field(on) == value
            expr = term if expr is None else expr & term
    if expr is not None:
        table = table.filter(expr)
    return table.to_pandas()


def read_summary(url: str):
    """``OUT/summary.csv`` as a pandas DataFrame (``engine.pipelines.interp.output.SUMMARY_COLUMNS``)."""
    return pacsv.read_csv(io.BytesIO(_read(url, SUMMARY))).to_pandas()
