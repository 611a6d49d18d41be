"""Nothing damaged is used silently: checksummed chunks and Parquet pages, and damage as a named error.

What each kind of file carries (format version 2 of the layer and similarity stores; ``docs/store.md``):

- zarr chunks: the ``crc32c`` codec after compression, on every inner chunk of the layer store's ``states`` shards
  (their shard index already had one), on ``lengths`` and on every similarity matrix chunk. TensorStore checks the
  digest on every read and fails with ``DATA_LOSS``.
- a chunk that is missing: arrays that hold finished work are opened with ``fill_missing_data_reads: false``, so
  reading a deleted shard or matrix chunk fails with ``NOT_FOUND`` instead of returning the fill value; readers ask
  only for chunks their done markers say exist. Arrays are written with ``store_data_equal_to_fill_value: true``, so
  that a chunk equal to the fill value (an all-NaN similarity layer) is stored rather than left out.
- Parquet files: page CRCs (``write_page_checksum``), verified on every read (``page_checksum_verification``).
- JSON markers and manifests: parsed strictly and checked field by field; no digest (a flip that leaves valid JSON
  changes one value that the reader then checks, and a digest would cost a second key per marker).

Stores written before (format version 1) still read: their chunks carry no digest, which one warning per store says.
"""

from __future__ import annotations

import io
import logging
import re
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from engine.stores.kv import StoreError

log = logging.getLogger(__name__)

CRC32C = {"name": "crc32c"}
# TensorStore open options of every array that holds finished work (see the module docstring).
CHECKED_READS = {"fill_missing_data_reads": False, "store_data_equal_to_fill_value": True}
# The words TensorStore puts in the errors of a chunk that is missing, fails its digest or does not decode.
_DAMAGE = re.compile(r"NOT_FOUND|DATA_LOSS|Digest mismatch|ZSTD|[Dd]ecod|is missing|corrupt|Error reading shard")
_CHUNK_KEY = re.compile(r"((?:[^\s\"']*/)?c(?:\.\d+)+)")
_warned: set[str] = set()
_warned_lock = threading.Lock()


class DamageError(StoreError):
    """Stored data failed its integrity check: a chunk or file is missing, truncated or does not match its checksum.
    Nothing read from it was used. ``babelgrid verify <store> --repair`` marks what is damaged as not done, so that
    rerunning the job that wrote it redoes exactly that."""


def is_damage(error: BaseException) -> bool:
    """Whether a TensorStore read error means a missing or corrupt chunk (rather than, say, a network failure)."""
    return bool(_DAMAGE.search(str(error)))


def chunk_key(error: BaseException) -> str | None:
    """The chunk key a TensorStore error names (``.../c.0.17.0.0``), if any."""
    found = _CHUNK_KEY.findall(str(error))
    return found[-1] if found else None


def damage_error(error: BaseException, url: str, what: str, fix: str) -> DamageError:
    """A TensorStore chunk error as a DamageError naming the store, ``what`` was read, the chunk and ``fix``."""
    text = str(error).splitlines()[0][:400]
    kind = "missing" if "NOT_FOUND" in text or "is missing" in text else "corrupt (checksum or decoding failed)"
    key = chunk_key(error)
    where = f" (chunk {key})" if key else ""
    return DamageError(f"damaged data in {url!r}: {what} is {kind}{where}: {text}. {fix}")


def repair_hint(url: str, job: str) -> str:
    return f"Run `babelgrid verify {url} --repair`, then rerun the {job} job to redo exactly what was damaged"


def warn_unchecked(url: str, what: str) -> None:
    """Logs once per store that it predates checksums (format version 1)."""
    with _warned_lock:
        if url in _warned:
            return
        _warned.add(url)
    log.warning(
        "%s %r was written by a babelgrid without chunk checksums (format version 1): a missing chunk is still "
        "detected, a corrupted one may not be. Write it again (a new output folder) to get checksums",
        what,
        url,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet file bytes with a CRC on every page."""
    sink = io.BytesIO()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue()


def read_parquet(value, key: str, url: str, *, fix: str) -> pa.Table:
    """The Parquet file ``value`` (bytes) stored at ``key``, its page CRCs verified; a truncated, corrupt or foreign
    file is a DamageError naming the key, the store and ``fix``."""
    try:
        return pq.read_table(pa.BufferReader(bytes(value)), page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        reason = str(e).splitlines()[0][:300]
        raise DamageError(
            f"{key} in {url!r} is damaged: it is truncated, corrupt or not a Parquet file ({reason}). {fix}"
        ) from None
