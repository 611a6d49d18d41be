"""The layer store's utterance table: one ``UtteranceRow`` per utterance index, stored as ``<lang>/utterances.parquet``
(page CRCs, ``engine.stores.integrity``); its schema, and the checks that a resumed run's table is the stored one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import tensorstore as ts

from engine.errors import StoreError
from engine.stores.integrity import parquet_bytes, read_parquet


class StoreMismatchError(StoreError):
    """An existing store (or language) was written with other settings than the ones given."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class UtteranceRow:
    """One row of ``utterances.parquet``; its position in the table is the utterance index."""

    id: str  # dataset id; several recordings of one sentence may share it
    lang: str
    path: str  # audio file as the job read it
    transcription: str | None = None
    duration_s: float  # seconds of audio
    # Encoder frames of the whole utterance (all its 30 s windows), = lengths[u] once done; 0 when the audio could not
    # be read when the table was made (such an utterance is listed, so indices follow the source, but never done).
    n_frames: int
    n_windows: int  # 30 s windows it is encoded in (0 if unreadable)
    recording: int = 0  # 0 for the first recording of (lang, id), 1, 2, ... for further ones (FLEURS)
    speaker: str | None = None
    gender: str | None = None
    # The text as read (FLEURS: cased and punctuated); None where the source has none or the store predates it.
    raw_transcription: str | None = None

    def __post_init__(self):
        for name in ("id", "lang", "path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise StoreError(f"UtteranceRow.{name} must be a non-empty str, got {getattr(self, name)!r}")
        if isinstance(self.recording, bool) or not isinstance(self.recording, (int, np.integer)) or self.recording < 0:
            raise StoreError(
                f"UtteranceRow.recording must be an int >= 0, got {self.recording!r} (utterance {self.id!r})"
            )
        object.__setattr__(self, "recording", int(self.recording))
        for name in ("transcription", "speaker", "gender", "raw_transcription"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise StoreError(f"UtteranceRow.{name} must be a str or None, got {getattr(self, name)!r}")
        for name in ("n_frames", "n_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise StoreError(f"UtteranceRow.{name} must be an int >= 0, got {value!r} (utterance {self.id!r})")
            object.__setattr__(self, name, int(value))
        if isinstance(self.duration_s, bool) or not isinstance(self.duration_s, (int, float)) or self.duration_s < 0:
            raise StoreError(f"UtteranceRow.duration_s must be seconds >= 0, got {self.duration_s!r}")
        object.__setattr__(self, "duration_s", float(self.duration_s))


ROW_FIELDS = tuple(f.name for f in dataclasses.fields(UtteranceRow))
_PARQUET_SCHEMA = pa.schema(
    [
        pa.field("utterance", pa.int32(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("transcription", pa.string()),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("n_windows", pa.int32(), nullable=False),
        pa.field("recording", pa.int32(), nullable=False),
        pa.field("speaker", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("raw_transcription", pa.string()),
    ]
)
# Columns added after the first stores were written: a table without them still reads, as nulls.
_ADDED_COLUMNS = ("raw_transcription",)


def check_rows(utterances, lang: str) -> tuple[UtteranceRow, ...]:
    rows = tuple(utterances)
    if not rows:
        raise StoreError(f"language {lang!r} needs at least one utterance")
    for u, row in enumerate(rows):
        if not isinstance(row, UtteranceRow):
            raise StoreError(f"utterances[{u}] of {lang!r} must be an UtteranceRow, got {type(row).__name__}")
    return rows


def check_same_rows(stored, given, lang: str, url: str) -> None:
    if len(stored) != len(given):
        raise StoreMismatchError(
            f"language {lang!r} in {url!r} was created with {len(stored)} utterances, this run has {len(given)}. "
            "Never mix two utterance tables in one language: restore the original list or use a new output folder"
        )
    for u, (a, b) in enumerate(zip(stored, given, strict=True)):
        # A table written before a column was added reads it as null: resuming such a store with a source that now
        # fills the column is the same table, not a different one.
        a = dataclasses.replace(a, **{n: getattr(b, n) for n in _ADDED_COLUMNS if getattr(a, n) is None})
        if a != b:
            name = next(n for n in ROW_FIELDS if getattr(a, n) != getattr(b, n))
            # A clip unreadable when the table was made (0 frames, no duration: skipped) that reads now was replaced
            # or fixed; one of a known duration but no frames was over the encode job's --max_seconds then.
            fixed = ""
            if a.n_frames == 0 and a.duration_s > 0 and a.duration_s == b.duration_s:
                fixed = (f" (its {a.duration_s:.0f} s were over the --max_seconds of the run that made the store, and "
                         "not now: a store keeps the cap it was made with)")  # fmt: skip
            elif a.n_frames == 0:
                fixed = " (unreadable when the store was made, readable now: it was replaced)"
            elif b.n_frames == 0 and b.duration_s > 0 and a.duration_s == b.duration_s:
                fixed = (f" (its {b.duration_s:.0f} s are over this run's --max_seconds: give the cap the store was "
                         "made with, above them)")  # fmt: skip
            raise StoreMismatchError(
                f"utterance {u} (id {a.id!r}, {a.path}) of language {lang!r} in {url!r} differs from this run's: "
                f"{name} is {getattr(a, name)!r} in the store, {getattr(b, name)!r} now{fixed}. Never mix two "
                "utterance tables in one language: restore the original list or use a new output folder"
            )


def rows_to_table(rows: Sequence[UtteranceRow]) -> pa.Table:
    """The utterance table as stored in ``utterances.parquet``: an ``utterance`` index column, then UtteranceRow's."""
    columns = {"utterance": list(range(len(rows)))}
    columns.update({name: [getattr(r, name) for r in rows] for name in ROW_FIELDS})
    return pa.table(columns, schema=_PARQUET_SCHEMA)


def rows_to_parquet(rows: Sequence[UtteranceRow]) -> bytes:
    return parquet_bytes(rows_to_table(rows))


def _read_table(kv: ts.KvStore, key: str, url: str, *, missing_ok: bool = False) -> pa.Table | None:
    """The utterance table stored at ``key`` as a pyarrow Table (None if missing and ``missing_ok``)."""
    result = kv.read(key).result()
    if result.state == "missing":
        if missing_ok:
            return None
        raise StoreError(f"store {url!r} has no {key}; the language was not created completely: encode it again")
    fix = "Restore it from a copy, or encode into a new folder (without its table a language's states cannot be read)"
    table = read_parquet(result.value, key, url, fix=fix)
    for name in _ADDED_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(_PARQUET_SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    if table.column_names != _PARQUET_SCHEMA.names or not np.array_equal(
        table.column("utterance").to_numpy(), np.arange(table.num_rows)
    ):
        raise StoreError(f"{key} in {url!r} does not have the utterance table's columns and order: encode it again")
    return table


def read_rows(kv: ts.KvStore, key: str, url: str, *, missing_ok: bool = False) -> tuple[UtteranceRow, ...] | None:
    table = _read_table(kv, key, url, missing_ok=missing_ok)
    if table is None:
        return None
    return tuple(UtteranceRow(**{n: d[n] for n in ROW_FIELDS}) for d in table.to_pylist())
