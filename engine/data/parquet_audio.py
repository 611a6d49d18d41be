"""Parquet tables of a Hugging Face dataset read lazily: the listing reads every column but the audio, and each
clip's bytes are fetched from its row group when the utterance is loaded (``ParquetAudio``; on the Hub, range
requests). Used by ``engine.data.hf``."""

from __future__ import annotations

import collections
import os
import pathlib
import threading
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.tables import audio_kind, audio_values, binary_views, struct_fields
from engine.data.utterance import DatasetError


class ParquetAudio:
    """One row's audio in a Parquet file (local or ``hf://``), read when the utterance is loaded: the row group's
    audio column is read once and kept for the next rows (a few groups, shared by the decoding threads). A row
    without bytes is read from its ``path`` (``Dataset.to_parquet`` does not embed local files)."""

    __slots__ = ("url", "row_group", "row", "column", "path")

    def __init__(self, url: str, row_group: int, row: int, column: str, path: str | None = None):
        self.url, self.row_group, self.row, self.column, self.path = url, row_group, row, column, path

    def read(self) -> bytes:
        array = _row_group_column(self.url, self.row_group, self.column)
        if pa.types.is_struct(array.type):
            array = struct_fields(array).get("bytes", pa.nulls(len(array), pa.binary()))
        view = binary_views(array.slice(self.row, 1))[0]
        if view is not None:
            return bytes(view)
        if self.path and os.path.isfile(self.path):
            return pathlib.Path(self.path).read_bytes()
        raise DatasetError(
            f"{self.url} row group {self.row_group} row {self.row}: no audio bytes, and its path {self.path!r} is no "
            "file here"
        )


_GROUPS: collections.OrderedDict[tuple[str, int, str], pa.Array] = collections.OrderedDict()
_GROUPS_KEPT = 4  # row groups of audio held at once (the Hub writes ~100 clips per group)
_GROUPS_LOCK = threading.Lock()


def _row_group_column(url: str, row_group: int, column: str) -> pa.Array:
    key = (url, row_group, column)
    with _GROUPS_LOCK:
        if key in _GROUPS:
            _GROUPS.move_to_end(key)
            return _GROUPS[key]
    try:
        with _open_parquet(url) as pf:
            array = pf.read_row_group(row_group, columns=[column]).column(0).combine_chunks()
    except DatasetError:
        raise
    except Exception as e:  # fsspec and the Hub client raise their own (OSError, HTTP errors)
        raise DatasetError(f"cannot read the audio of {url} row group {row_group}: {type(e).__name__}: {e}") from e
    with _GROUPS_LOCK:
        _GROUPS[key] = array
        while len(_GROUPS) > _GROUPS_KEPT:
            _GROUPS.popitem(last=False)
    return array


class _open_parquet:
    """``pq.ParquetFile`` on a local path or an fsspec URL (``hf://datasets/...``), closed on exit."""

    def __init__(self, url: str):
        import fsspec  # lazy: fsspec (a datasets dependency) is needed only for Parquet sources

        fs, path = fsspec.core.url_to_fs(url)
        self._file = fs.open(path, "rb")
        self.pf = pq.ParquetFile(self._file)

    def __enter__(self) -> pq.ParquetFile:
        return self.pf

    def __exit__(self, *exc):
        self._file.close()


# --- tables: what one (config, split) holds ---------------------------------------------------------------------------


class ArrowTable:
    """A memory-mapped Arrow table (``save_to_disk``, or a dataset ``datasets`` prepared)."""

    def __init__(self, table: pa.Table, where: str, base: pathlib.Path | None):
        self.table, self.where, self.base = table, where, base
        self.column_names = list(table.column_names)
        self.num_rows = table.num_rows

    def column(self, name: str) -> list[Any]:
        return self.table.column(name).to_pylist()

    def audio(self, name: str) -> tuple[list, list[str | None]]:
        audio_kind(self.table.schema.field(name).type, name, self.where)
        return audio_values(self.table.column(name), self._resolve)

    def _resolve(self, path: str) -> str:
        p = pathlib.Path(path).expanduser()
        return str(p if p.is_absolute() or self.base is None else self.base / p)


class ParquetTable:
    """Parquet files read column by column: the audio column is left to ``ParquetAudio``."""

    def __init__(self, urls: list[str], where: str):
        self.urls, self.where = urls, where
        self._groups: list[tuple[str, int, int]] = []  # (url, row group, rows)
        schema = None
        for url in urls:
            with _open_parquet(url) as pf:
                schema = schema or pf.schema_arrow
                meta = pf.metadata
                self._groups += [(url, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.schema = schema
        self.column_names = list(schema.names) if schema is not None else []
        self.num_rows = sum(n for _, _, n in self._groups)

    def column(self, name: str) -> list[Any]:
        return self._read([name]).column(0).to_pylist()

    def _read(self, columns: list[str]) -> pa.Table:
        tables = []
        for url in self.urls:
            with _open_parquet(url) as pf:
                tables.append(pf.read(columns=columns))
        return pa.concat_tables(tables)

    def audio(self, name: str) -> tuple[list, list[str | None]]:
        kind = audio_kind(self.schema.field(name).type, name, self.where)
        if kind == "path":
            paths = self.column(name)
            return paths, [os.path.basename(p) if p else None for p in paths]
        paths: list[str | None] = [None] * self.num_rows
        struct = self.schema.field(name).type
        if kind == "struct" and struct.get_field_index("path") >= 0:
            paths = struct_fields(self._read([f"{name}.path"]).column(0).combine_chunks())["path"].to_pylist()
        rows = [(url, g, r) for url, g, n in self._groups for r in range(n)]
        refs = [
            ParquetAudio(url, g, r, name, self._resolve(url, p)) for (url, g, r), p in zip(rows, paths, strict=True)
        ]
        return refs, [os.path.basename(p) if p else None for p in paths]

    @staticmethod
    def _resolve(url: str, path: str | None) -> str | None:
        """A row's path, relative ones against a local Parquet file's folder (a Hub file's paths name nothing here)."""
        if not path or "://" in url or os.path.isabs(path):
            return path
        return os.path.join(os.path.dirname(url), path)
