"""What babelgrid writes into its stores, as bytes: sealed JSON objects (their digest inside), CSV tables at full
precision, plain ``.npz`` arrays, and the records other processes read (leases, claims). The kvstore access that
writes and reads them is ``engine.stores.kv``."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# Every JSON object babelgrid writes carries the digest of its content under this key (a sealed object): a flip that
# leaves valid JSON (a done marker's row list, an id) is caught by its reader instead of used.
DIGEST = "digest"


def json_digest(value: dict) -> str:
    """``sha256:<hex>`` of ``value``'s canonical JSON (sorted keys, no spaces): the same for the object as written
    and as read back, whatever its indentation."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def json_bytes(value: dict) -> bytes:
    """``value`` as a sealed JSON object: its fields as given, then ``digest`` (``json_digest`` of them)."""
    body = json.loads(json.dumps(value))  # as it reads back: tuples as lists, keys as strings
    body.pop(DIGEST, None)
    return (json.dumps({**body, DIGEST: json_digest(body)}, indent=1) + "\n").encode()


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence]) -> bytes:
    """A CSV file's bytes: ``header``, then ``rows``, with ``\\n`` line ends (the same bytes on every platform, so
    that reruns of a job write identical files). Numbers are written at full precision (``csv_cell``)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([csv_cell(x) for x in row] for row in rows)
    return text.getvalue().encode()


def csv_cell(x):
    """A CSV cell at full precision: a float as Python's shortest round-trip ``repr``, and a NumPy float as the
    float64 it equals (``str`` of a float32 is the shortest that reads back as float32, ``0.1`` for
    0.10000000149011612), so that a table recomputed from the files beside it gives the same numbers. Other
    cells as they are."""
    return float(x) if isinstance(x, np.floating) else x


def npz_bytes(arrays: Mapping[str, object]) -> bytes:
    """An uncompressed ``.npz`` file's bytes of plain arrays (read back by ``read_npz``, which never unpickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def parse_record(value: bytes) -> dict:
    """A JSON object written by another process (a lease or a claim): {} when it is not one (a torn or foreign
    value reads as no record, never as an error)."""
    try:
        record = json.loads(bytes(value))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def iso_utc(t: float) -> str:
    """Unix seconds as an ISO 8601 UTC timestamp, to the second (what leases and claims record for people)."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")
