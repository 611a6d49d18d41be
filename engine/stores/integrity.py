"""Nothing damaged is used silently: checksummed chunks and Parquet pages, and damage as a named error.

What each kind of file carries (format version 2 of the layer and similarity stores; ``docs/store.md``):

- zarr chunks: the ``crc32c`` codec after compression, on every inner chunk of the layer store's ``states`` shards
  (their shard index already had one), on ``lengths`` and on every similarity matrix chunk. TensorStore checks the
  digest on every read and fails with ``DATA_LOSS``.
- the codec chain each array's ``zarr.json`` lists: compared with the format's on every open (``check_codecs``), as
  TensorStore reads the chunks the way that file says. A ``zarr.json`` whose ``crc32c`` was taken out would have
  every chunk read unchecked, and one whose byte order was flipped, read as other numbers.
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

import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import DamageError
from engine.stores.kv import read_value, write_all

__all__ = ["DamageError"]  # defined beside StoreError (engine.errors); the readers of sealed JSON raise it too

log = logging.getLogger(__name__)

CRC32C = {"name": "crc32c"}
# TensorStore open options of every array that holds finished work (see the module docstring).
CHECKED_READS = {"fill_missing_data_reads": False, "store_data_equal_to_fill_value": True}
# TensorStore raises every failure as a ValueError whose text starts with its absl status code ("DATA_LOSS: ..."),
# the one machine-readable part of it. A read of a stored chunk fails with these codes when the chunk is damaged,
# rather than unreachable or forbidden (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, ...): a digest mismatch,
# a chunk missing although its done marker exists, bytes that do not decode (a truncated chunk, a flipped zstd
# frame), a byte range past the end of a truncated file. Measured on TensorStore's zarr3 codecs in
# tests/engine/test_store.py; the message after the code is never matched.
DAMAGE_CODES = {
    "DATA_LOSS": "checksum mismatch",
    "NOT_FOUND": "missing",
    "FAILED_PRECONDITION": "truncated or undecodable",
    "OUT_OF_RANGE": "truncated",
}
STATUS_CODES = frozenset(
    {*DAMAGE_CODES, "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "ALREADY_EXISTS"}
    | {"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ABORTED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE"}
    | {"UNAUTHENTICATED"}
)
NON_FINITE = "NaN or inf values"  # the problem of stored states or scores that may not hold them
_CHUNK_KEY = re.compile(r"((?:[^\s\"']*/)?c(?:\.\d+)+)")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def status_code(error: BaseException) -> str | None:
    """The absl status code of a TensorStore error (``"DATA_LOSS"``), or None for any other exception."""
    if not isinstance(error, ValueError):
        return None
    head = str(error).split(":", 1)[0]
    return head if head in STATUS_CODES else None


def damage_kind(error: BaseException) -> str | None:
    """What is wrong when ``error`` says stored data is damaged ("missing", "checksum mismatch", ...): a
    DamageError's ``problem``, or the kind of a TensorStore read error's status code (``DAMAGE_CODES``); None for
    any other failure (a network error, a permission, a bug)."""
    if isinstance(error, DamageError):
        return error.problem
    return DAMAGE_CODES.get(status_code(error))


def is_damage(error: BaseException) -> bool:
    """Whether a read error means a missing or corrupt chunk (rather than, say, a network failure)."""
    return damage_kind(error) is not None


def chunk_key(error: BaseException) -> str | None:
    """The chunk key a TensorStore error names (``.../c.0.17.0.0``), if any."""
    found = _CHUNK_KEY.findall(str(error))
    return found[-1] if found else None


def damage_error(error: BaseException, url: str, what: str, fix: str) -> DamageError:
    """A TensorStore chunk error as a DamageError naming the store, ``what`` was read, the chunk and ``fix``."""
    text = str(error).splitlines()[0][:400]
    kind = damage_kind(error) or "unreadable"
    state = "missing" if kind == "missing" else f"corrupt ({kind})"
    key = chunk_key(error)
    where = f" (chunk {key})" if key else ""
    return DamageError(f"damaged data in {url!r}: {what} is {state}{where}: {text}. {fix}", kind)


def repair_hint(url: str, job: str) -> str:
    return f"Run `babelgrid verify {url} --repair`, then rerun the {job} job to redo exactly what was damaged"


# What a store of each older format version lacks, in the warning its readers log once.
UNCHECKED = {
    1: "chunk checksums or metadata digests: a missing chunk is still detected, a corrupted one may not be",
    2: "metadata digests: a done marker, id list or language index altered into other valid JSON, or a deleted "
    "language index, may not be detected",
    3: "a roster of its pairs: a pair folder deleted whole may not be detected",
}


def warn_unchecked(url: str, what: str, version: int) -> None:
    """Logs once per store that it predates some of the checks (``UNCHECKED[version]``); it still reads."""
    with _warned_lock:
        if url in _warned:
            return
        _warned.add(url)
    log.warning(
        "%s %r was written by a babelgrid without %s (format version %d). Write it again (a new output folder) to "
        "get every check",
        what,
        url,
        UNCHECKED[version],
        version,
    )


# Parquet key-value metadata: the column names the writer declared. The footer that holds the schema has no
# checksum (page CRCs cover the data pages only): a flipped byte in a column name would read as another column.
COLUMNS_KEY = b"babelgrid.columns"


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet file bytes with a CRC on every page and its column names declared (``COLUMNS_KEY``)."""
    metadata = {**(table.schema.metadata or {}), COLUMNS_KEY: json.dumps(table.schema.names).encode()}
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), sink, write_page_checksum=True)
    return sink.getvalue()


def read_parquet(value, key: str, url: str, *, fix: str) -> pa.Table:
    """The Parquet file ``value`` (bytes) stored at ``key``, its page CRCs verified and its columns those its writer
    declared; a truncated, corrupt or foreign file is a DamageError naming the key, the store and ``fix``. (Files
    written before the names were declared are checked by their pages only.)"""
    try:
        # On this thread, through ParquetFile: the files are small, and the worker threads Arrow starts otherwise
        # (pq.read_table's dataset scan starts one even with use_threads off) outlive the job and race its exit
        # ("terminate called without an active exception", ~1 verify run in 200; apache/arrow#34314).
        reader = pq.ParquetFile(pa.BufferReader(bytes(value)), page_checksum_verification=True)
        table = reader.read(use_threads=False)
    except (OSError, pa.ArrowException) as e:
        reason = str(e).splitlines()[0][:300]
        raise DamageError(
            f"{key} in {url!r} is damaged: it is truncated, corrupt or not a Parquet file ({reason}). {fix}",
            "truncated, corrupt or not Parquet",
        ) from None
    declared = (table.schema.metadata or {}).get(COLUMNS_KEY)
    if declared is not None and _declared_names(declared) != table.schema.names:
        raise DamageError(
            f"{key} in {url!r} is damaged: its schema (columns {table.schema.names}) is not the one its writer "
            f"declared ({_declared_names(declared)}), so its footer was altered. {fix}",
            "footer damaged (schema)",
        )
    return table


def _declared_names(declared: bytes) -> list[str] | None:
    try:
        names = json.loads(declared)
    except ValueError:
        return None
    return names if isinstance(names, list) else None


# A job's output file (CSV, figure, table, report) has its SHA-256 beside it, ``<key>.sha256``, in ``sha256sum``'s
# format: its bytes stay what analysts read, and ``sha256sum -c`` checks it as well as babelgrid does.
DIGEST_SUFFIX = ".sha256"


def digest_line(data: bytes, key: str) -> bytes:
    """``<sha256 hex>  <file name>\n``: one line of ``sha256sum``'s output for ``data`` stored at ``key``."""
    return f"{hashlib.sha256(data).hexdigest()}  {key.rsplit('/', 1)[-1]}\n".encode()


def write_outputs(kv, writes: Mapping[str, bytes], url: str) -> None:
    """Writes a job's output files (key -> bytes) under ``url``, each but JSON objects (which carry their digest
    inside, ``records.json_bytes``) beside its digest file. The digests first: a file babelgrid wrote is never without
    one, and a kill between leaves a digest its old file does not match, which readers and verify name."""
    write_all(kv, {key + DIGEST_SUFFIX: digest_line(data, key) for key, data in writes.items() if _digested(key)}, url)
    write_all(kv, dict(writes), url)


def _digested(key: str) -> bool:
    return not key.endswith(".json")


def read_output(kv, key: str, url: str, *, fix: str) -> bytes | None:
    """The output file at ``key`` (None if there is none), checked against its digest file: a truncated or altered
    file, or one whose digest file is missing, is a DamageError naming it and ``fix``. Every output babelgrid writes
    has had its digest since the formats that read them (similarity store format 3, which the transforms and the
    stores' job outputs came with), so a missing one is never taken for an old file: it was deleted."""
    found = read_value(kv, key, url)
    if found.state != "value":
        return None
    data = bytes(found.value)
    if not check_output(kv, key, data, url, fix=fix):
        raise DamageError(
            f"{key} in {url!r} has no digest file ({key}{DIGEST_SUFFIX}): it was deleted, so the file cannot be "
            f"checked and is not read. {fix}",
            "digest missing",
        )
    return data


def check_output(kv, key: str, data: bytes, url: str, *, fix: str = "") -> bool:
    """Whether ``data`` (the file at ``key``) has a digest file; a DamageError if it does not match it."""
    found = read_value(kv, key + DIGEST_SUFFIX, url)
    if found.state != "value":
        return False
    if bytes(found.value) != digest_line(data, key):
        raise DamageError(
            f"{key} in {url!r} does not match its digest ({key}{DIGEST_SUFFIX}): it was truncated or altered after "
            f"it was written. {fix}",
            "checksum mismatch",
        )
    return True


CODECS_ALTERED = "codecs altered"  # the problem a DamageError of ``check_codecs`` names (verify's table)


def codec_chain(codecs: list) -> tuple:
    """What of a zarr3 codec list decides how stored bytes become numbers and whether they are checked: each codec's
    name in order, the byte order, and a shard's inner and index chains with the index's place. Not chunk shapes, nor
    zstd's level or checksum flag, which any reader decodes alike."""
    chain = []
    for codec in codecs:
        name, conf = codec.get("name"), codec.get("configuration") or {}
        if name == "sharding_indexed":
            inner, index = codec_chain(conf.get("codecs", [])), codec_chain(conf.get("index_codecs", []))
            chain.append((name, inner, index, conf.get("index_location", "end")))
        else:
            chain.append((name, conf.get("endian", "little")) if name == "bytes" else (name,))
    return tuple(chain)


def check_codecs(array, expected: list, what: str, fix: str):
    """``array`` (an open TensorStore) if the codecs its ``zarr.json`` lists are ``expected``'s (``codec_chain``), else
    a DamageError naming the array, both chains and ``fix``: its metadata was altered, so its chunks would be read
    unchecked or as other numbers."""
    stored = array.spec().to_json().get("metadata", {}).get("codecs", [])
    if codec_chain(stored) == codec_chain(expected):
        return array
    unchecked = json.dumps(stored).count('"crc32c"') < json.dumps(expected).count('"crc32c"')  # one was taken out
    raise DamageError(
        f"{what}: its zarr.json lists the codecs {_names(stored)}, not the format's {_names(expected)}. It was "
        f"altered, and its chunks would be read {'without their checksums' if unchecked else 'as other bytes'}, so "
        f"nothing was read from it. {fix}",
        CODECS_ALTERED,
    )


def _names(codecs: list) -> str:
    return _described(codec_chain(codecs))


def _described(chain: tuple) -> str:
    """``bytes(little) > zstd > crc32c``; a shard's chains in brackets."""
    parts = []
    for name, *rest in chain:
        if name == "sharding_indexed":
            parts.append(f"{name}[{_described(rest[0])}; index {_described(rest[1])} at the {rest[2]}]")
        else:
            parts.append(f"{name}({rest[0]})" if rest else name)
    return " > ".join(parts) or "none"
