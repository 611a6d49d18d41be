"""A resumable job's unit of work on disk: one Parquet file of output rows whose metadata records what it was made
from (the utterances done in the layer store, the skips), so that a rerun keeps a part only when its inputs have not
changed. The align, decode and interp jobs write their outputs as parts and merge them at the end."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from engine.stores.integrity import parquet_bytes, read_parquet, repair_hint
from engine.stores.kv import read_value

META_KEY = b"babelgrid"


def table_bytes(table: pa.Table) -> bytes:
    """A pyarrow Table as Parquet file bytes, with page CRCs (``engine.stores.integrity``)."""
    return parquet_bytes(table)


def read_table(value, key: str, url: str, job: str) -> pa.Table:
    """A Parquet file a ``job`` wrote at ``key``, its page CRCs verified (a DamageError names it and the fix)."""
    return read_parquet(value, key, url, fix=repair_hint(url, job))


def part_bytes(rows: dict, schema: pa.Schema, done: Sequence[int], skipped: Sequence[Sequence]) -> bytes:
    """A part: ``rows`` (column -> values) as a Parquet file of ``schema``, its metadata holding ``done`` (the
    utterances it was made from) and ``skipped`` (``(utterance, id, reason)``-like rows)."""
    table = pa.Table.from_pydict(rows, schema=schema)
    meta = {"done": [int(u) for u in done], "skipped": [list(s) for s in skipped]}
    return table_bytes(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}))


def read_part(kv, key: str, url: str = "", job: str = "same"):
    """``(table, {"done": [...], "skipped": [...]})`` of the part at ``key``, or None if it is not there; a damaged
    part is a DamageError (``babelgrid verify --repair`` deletes it, and rerunning ``job`` redoes it)."""
    found = read_value(kv, key, url)
    if found.state != "value":
        return None
    table = read_table(found.value, key, url, job)
    return table, json.loads(table.schema.metadata[META_KEY])
