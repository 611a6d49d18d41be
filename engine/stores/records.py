"""What babelgrid writes into its stores, as bytes, and how it reads them back: sealed JSON objects (their digest
inside; one that is torn, foreign or altered is a ``DamageError``), CSV tables at full precision, plain ``.npz``
arrays (never unpickled), the records other processes read (leases, claims), and settings records compared field by
field (``manifest_diffs``). The kvstore access that writes and reads them is ``engine.stores.kv``."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import pathlib
import zipfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from engine.errors import DamageError

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


def na_cell(x):
    """A CSV cell, ``NA`` where nothing was measured (None, or a float that is not finite), as docs/outputs.md says
    of every table; other cells as they are."""
    return "NA" if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)) else x


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


UNSEALED_FIX = "Restore it from a copy, or write the output again into a new folder"  # a damaged file's way out


def read_npz(data: bytes, key: str = "npz file", url: str = "", fix: str = UNSEALED_FIX) -> dict:
    """The arrays of an ``.npz`` file's bytes, never unpickled (``allow_pickle=False``): an object array, or bytes
    that are not an npz, are a DamageError naming ``key``, the store and ``fix`` (a digest matches what it was given,
    not what babelgrid writes: the file may have been replaced together with its digest)."""
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DamageError(
            f"{key} in {url!r} is not an npz of numeric arrays babelgrid writes ({reason}): it was replaced or is "
            f"damaged, and is not read (never unpickled). {fix}",
            "not numeric npz",
        ) from None


def parse_json(result, key: str, url: str, *, sealed: bool = False, fix: str = UNSEALED_FIX) -> dict | None:
    """The JSON object of a kvstore read's ``result`` (``kv.read(key).result()``) without its digest, None where
    the key is missing: ``engine.stores.kv.read_json`` of a value already read."""
    if result.state == "missing":
        return None
    try:
        value = json.loads(bytes(result.value))
    except ValueError as e:
        raise DamageError(
            f"{key} in store {url!r} is not valid JSON ({e}): it is truncated or was not written by babelgrid. {fix}",
            "not valid JSON (truncated?)",
        ) from None
    if not isinstance(value, dict):
        raise DamageError(
            f"{key} in store {url!r} holds a JSON {type(value).__name__}, not an object. {fix}", "not a JSON object"
        )
    digest = value.pop(DIGEST, None)
    if digest is None and sealed:
        raise DamageError(f"{key} in store {url!r} carries no {DIGEST!r}, as its format requires. {fix}", "no digest")
    if digest is not None and digest != json_digest(value):
        raise DamageError(
            f"{key} in store {url!r} does not match its digest: its content was altered after it was written. {fix}",
            "checksum mismatch",
        )
    return value


def manifest_diffs(stored: Mapping, given: Mapping, fields: Iterable[str]) -> list[str]:
    """``"field: store has X, this run Y"`` for each of ``fields`` that differs; dict fields compare key by key
    (``dims.n_mels``), so that a message names the one setting that differs."""
    diffs = []
    for name in fields:
        a, b = stored.get(name), given.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += [f"{name}.{d}" for d in manifest_diffs(a, b, sorted(set(a) | set(b), key=str))]
        elif _plain(a) != _plain(b):
            diffs.append(f"{name}: store has {_clip(a)}, this run {_clip(b)}")
    return diffs


def _clip(value, most: int = 300) -> str:
    """A value's repr, cut to ``most`` characters: a model's config dumped whole made a refusal 2,500 characters
    long, which hid the field that differed (newcomer probe)."""
    if value is None:  # a setting left unset: "layers: ... None, this run [1, 2, 3]" read as a bug (a probe's)
        return "unset"
    text = repr(value)
    return text if len(text) <= most else text[: most - 4] + " ..."


def _plain(value):
    """Tuples and lists compare equal after a JSON round trip."""
    return list(value) if isinstance(value, tuple) else value


LAYER_STORE_FORMAT = "babelgrid-layer-store"  # engine.stores.schema.FORMAT_NAME
SIMILARITY_FORMAT = "babelgrid-similarity"  # engine.stores.similarity.FORMAT_NAME
_KINDS = {LAYER_STORE_FORMAT: "a layer store (the encode job's)", SIMILARITY_FORMAT: "a similarity store (seqsim's)"}


def where_instead(url: str, wanted: str | None = None, manifest: Mapping | None = None) -> str:
    """A hint for an error about ``url``, which holds no store of format ``wanted`` (None: of any kind): what it holds
    instead (from its ``manifest``: a layer store where a similarity store was asked for, and the reverse), and, for a
    local folder, its subfolders that hold one (``babelgrid run demo`` writes ``out/demo/store`` and
    ``out/demo/similarity``)."""
    hints = []
    found = (manifest or {}).get("format")
    if found in _KINDS and found != wanted:
        hints.append(f"it is {_KINDS[found]}")
        if found == LAYER_STORE_FORMAT:
            hints.append(f"compute its similarity store first: babelgrid seqsim --store {url} --out SIM, then pass SIM")
        elif manifest.get("layer_store"):
            hints.append(f"its layer store is {manifest['layer_store']}")
    if "://" not in url or url.startswith("file://"):
        folder = pathlib.Path(url.removeprefix("file://")).expanduser()
        below = []
        for key in sorted(folder.glob("*/manifest.json"))[:100] if folder.is_dir() else []:
            try:
                kind = json.loads(key.read_text(encoding="utf-8")).get("format")
            except (OSError, ValueError):
                continue
            if kind in _KINDS and kind == (wanted or kind):
                below.append(f"{key.parent} ({_KINDS[kind]})")
        if below:
            hints.append(f"below it: {', '.join(below[:4])}")
    return "".join(f"; {h}" for h in hints)
