"""Keys and arrays in any TensorStore kvstore: the storage layer every babelgrid store is built on.

A store location is a local path or a kvstore URL (``file://``, ``gs://``, ``s3://``, ``memory://``); every key is
read and written through ``ts.KvStore`` so that one code path serves every backend. Write-once keys (manifests,
tables) are created with a conditional write, so that two writers racing to create one never both win.

Object stores: an ``s3://`` location takes its endpoint, region and credentials from the standard AWS variables
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), which TensorStore's s3 driver does not read for the endpoint itself; a ``gs://`` location
is left to TensorStore, which honours ``TENSORSTORE_GCS_HTTP_URL`` and Google's application default credentials.
Anything else (a request retry policy, a host header, another credentials source) goes into ``set_spec_overrides``,
which the jobs' ``--kvstore_spec`` JSON sets.

What the keys hold (sealed JSON, CSV, npz) and how a damaged value reads is ``engine.stores.records``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping

import tensorstore as ts

from engine.errors import BabelgridError, DamageError, StoreError
from engine.stores.records import UNSEALED_FIX, json_bytes, manifest_diffs, parse_json

log = logging.getLogger(__name__)
METADATA_DAMAGED = "array metadata damaged"  # a DamageError's problem: a zarr.json truncated or altered

# One base context for every store this process opens, so that a `memory://` store outlives its handle (tests,
# notebooks); stores are opened in a child of it that bounds the retries of object stores (``set_store_timeout``).
_BASE_CONTEXT = ts.Context()
DEFAULT_STORE_TIMEOUT = 60.0  # seconds an unreachable object store is retried before the job stops (--store_timeout)


def _retries(seconds: float) -> dict:
    """TensorStore's request-retry settings whose backoff adds up to about ``seconds``: 1 s doubling, each delay at
    most a quarter of the bound, so that a flaky server is retried several times and a dead one gives up in time."""
    cap = max(1.0, seconds / 4)
    delays, total = [], 0.0
    while total < seconds:
        delays.append(min(cap, 2.0 ** len(delays)))
        total += delays[-1]
    settings = {"max_retries": max(1, len(delays)), "initial_delay": "1s", "max_delay": f"{cap:g}s"}
    return {"s3_request_retries": settings, "gcs_request_retries": settings}


# TensorStore's libcurl settings for a transfer that stalls (a server that takes the connection and never answers: a
# network partition). Retries cover failed requests only; without these, a stalled one waits for ever, and the job
# with it (a probe's encode hung 3.5 minutes, SIGTERM unanswered). Read when the first remote request is made.
STALL_SECONDS, STALL_BYTES = "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES"
_USERS_STALL_LIMIT = STALL_SECONDS in os.environ or STALL_BYTES in os.environ  # theirs are kept


def _bound_stalls(seconds: float) -> None:
    """A request that moves less than a byte a second for a quarter of ``seconds`` fails, and is retried as a failed
    one, unless the user set these variables."""
    if not _USERS_STALL_LIMIT:
        os.environ[STALL_SECONDS], os.environ[STALL_BYTES] = str(max(1, round(seconds / 4))), "1"


_store_timeout = DEFAULT_STORE_TIMEOUT
_context = ts.Context(_retries(DEFAULT_STORE_TIMEOUT), _BASE_CONTEXT)
_bound_stalls(DEFAULT_STORE_TIMEOUT)


def set_store_timeout(seconds: float) -> None:
    """Bounds how long an unreachable, failing or stalled ``s3://`` / ``gs://`` location is retried
    (``--store_timeout``): stores opened from now on give up after about ``seconds`` (a stalled request after a
    quarter of it, then retried) with a ``StoreError`` naming the location. The stall bound holds from the process's
    first remote request on, so jobs set it before opening any store."""
    global _store_timeout, _context
    if not seconds > 0:
        raise StoreError(f"the object-store timeout must be positive seconds, got {seconds!r}")
    _store_timeout = float(seconds)
    _context = ts.Context(_retries(_store_timeout), _BASE_CONTEXT)
    _bound_stalls(_store_timeout)


def context() -> ts.Context:
    """The TensorStore context every store is opened in (``memory://`` stores live as long as the process)."""
    return _context


REMOTE_DRIVERS = ("s3", "gcs")
_overrides: dict = {}


def set_spec_overrides(overrides: Mapping | None) -> None:
    """Merges ``overrides`` into the kvstore spec of every ``s3://`` and ``gs://`` location opened from now on (local
    paths, ``file://`` and ``memory://`` are untouched); with a ``"driver"`` key, only into that driver's. ``None``
    or ``{}`` clears them."""
    global _overrides
    overrides = dict(overrides or {})
    driver = overrides.get("driver")
    if driver is not None and driver not in REMOTE_DRIVERS:
        raise StoreError(f"kvstore spec overrides apply to the drivers {REMOTE_DRIVERS}, got driver {driver!r}")
    _overrides = overrides


def parse_spec_overrides(text: str) -> dict:
    """``--kvstore_spec``'s JSON object, or a StoreError saying what it must look like."""
    try:
        value = json.loads(text)
    except ValueError as e:
        value = e
    if not isinstance(value, dict):
        raise StoreError(
            f"--kvstore_spec must be a JSON object of TensorStore kvstore spec fields, such as "
            f'\'{{"endpoint": "http://127.0.0.1:9000", "aws_region": "us-east-1"}}\', got {text!r} ({value})'
        )
    return value


def remote_spec(spec: dict, environ: Mapping[str, str] = os.environ) -> dict:
    """``spec`` (a kvstore spec from a URL) with the endpoint settings of the environment and of
    ``set_spec_overrides``; fields the spec already has win over the environment, overrides win over both."""
    spec = dict(spec)
    if spec.get("driver") == "s3":
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if endpoint:
            spec.setdefault("endpoint", endpoint)
        if region:
            spec.setdefault("aws_region", region)
        if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
            # Straight to the variables: the default chain first looks for ~/.aws files and logs their absence.
            spec.setdefault("aws_credentials", {"type": "environment"})
    if spec.get("driver") in REMOTE_DRIVERS and _overrides.get("driver", spec["driver"]) == spec["driver"]:
        spec.update(_overrides)
    return spec


def open_kvstore(url: str) -> tuple[dict, ts.KvStore]:
    """The kvstore spec of the store's root folder (path ending in '/') and the opened KvStore."""
    if not isinstance(url, (str, os.PathLike)) or not str(url):
        raise StoreError(f"store location must be a non-empty path or URL, got {url!r}")
    url = os.fspath(url)
    if "://" not in url:
        spec = {"driver": "file", "path": os.path.abspath(os.path.expanduser(url))}
    else:
        try:
            spec = ts.KvStore.Spec(url).to_json()
        except ValueError as e:
            raise StoreError(
                f"cannot use {url!r} as a store location ({e}); give a local path or a TensorStore kvstore URL "
                "such as file:///data/out, gs://bucket/out, s3://bucket/out or memory://out"
            ) from None
        spec = remote_spec(spec)
    path = spec.get("path", "")
    if path and not path.endswith("/"):
        spec["path"] = path + "/"
    try:
        kv = ts.KvStore.open(spec, context=_context).result()
    except ValueError as e:
        raise StoreError(f"cannot open store location {url!r}: {e}{_endpoint_hint(spec)}") from None
    if spec.get("driver") in REMOTE_DRIVERS:
        _probe(kv, url, spec)
    return spec, kv


def _probe(kv: ts.KvStore, url: str, spec: dict) -> None:
    """One read before any work, so that an unreachable endpoint stops the job within the timeout, named, instead
    of hanging in TensorStore's retries (a read of a missing key costs one request on a live server)."""
    try:
        kv.read(".babelgrid-probe").result(timeout=_store_timeout + 5)
    except (TimeoutError, ValueError) as e:
        where = spec.get("endpoint") or ("the GCS endpoint" if spec.get("driver") == "gcs" else "AWS's endpoint")
        detail = str(e).splitlines()[0][:300] if str(e) else f"no answer within {_store_timeout:g} s"
        raise StoreError(
            f"cannot reach store location {url!r} at {where} (gave up after about {_store_timeout:g} s, "
            f"--store_timeout): {detail}{_endpoint_hint(spec)}"
        ) from None


def _endpoint_hint(spec: dict) -> str:
    if spec.get("driver") == "s3":
        return (
            "; for an S3-compatible server set AWS_ENDPOINT_URL (and AWS_REGION, AWS_ACCESS_KEY_ID, "
            'AWS_SECRET_ACCESS_KEY) or pass --kvstore_spec \'{"endpoint": "http://host:port"}\''
        )
    if spec.get("driver") == "gcs":
        return "; for a GCS emulator set TENSORSTORE_GCS_HTTP_URL=http://host:port"
    return ""


def storage_error(operation: str, key: str, url: str, error: Exception) -> StoreError:
    """A TensorStore I/O failure as a StoreError naming the operation, the key and the store, with the likely fix."""
    text = str(error)
    hint = ""
    remote = url.startswith(("s3://", "gs://"))
    if "PERMISSION_DENIED" in text and remote:  # an object store: the credentials, whether reading or writing
        hint = (f": the object store refused these credentials ({operation}); check them (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or the GCS login) and the bucket's permissions")  # fmt: skip
    elif ("PERMISSION_DENIED" in text or "Read-only" in text) and operation not in ("read", "list"):
        hint = ": the location is not writable by this user; choose another output folder or fix its permissions"
    elif "PERMISSION_DENIED" in text:
        hint = ": this user may not read it; fix its permissions"
    elif "RESOURCE_EXHAUSTED" in text or "No space left" in text:
        hint = ": the disk is full; free space or choose another output folder, then rerun to resume"
    elif "Not a directory" in text:
        hint = ": a part of the path is a file, not a folder; choose another output folder"
    if "NoSuchBucket" in text:  # the server's XML answer dumped whole said it in 600 characters
        text = text.split(" [http_response_body", 1)[0]
        hint = ": the bucket does not exist; check its name, or create it"
    return StoreError(f"cannot {operation} {key!r} in store {url!r} ({text}){hint}")


def refuse_missing_bucket(kv: ts.KvStore, url: str) -> None:
    """For a remote ``url`` where a key was found missing: a StoreError when its bucket does not exist (a read of a
    key in a missing bucket answers "missing", and the job said that no store is at the path)."""
    if url.startswith(("s3://", "gs://")):
        try:
            kv.list(ts.KvStore.KeyRange("manifest.json", "manifest.json\0")).result()
        except ValueError as e:
            if "NoSuchBucket" in str(e) or "NOT_FOUND" in str(e):
                raise storage_error("read", "manifest.json", url, e) from None


def read_value(kv: ts.KvStore, key: str, url: str):
    """``kv.read(key)``'s result, with failures as StoreError naming the key and the store."""
    try:
        return kv.read(key).result()
    except ValueError as e:
        raise storage_error("read", key, url, e) from None


def write_value(kv: ts.KvStore, key: str, value: bytes | None, url: str, **condition):
    """``kv.write(key, value, **condition)``'s result, with failures as StoreError naming the key and the store."""
    try:
        return kv.write(key, value, **condition).result()
    except ValueError as e:
        raise storage_error("write", key, url, e) from None


def write_all(kv: ts.KvStore, values: dict[str, bytes], url: str) -> None:
    """Writes every key of ``values`` concurrently and waits for all; the first failure as a StoreError."""
    futures = {key: kv.write(key, value) for key, value in values.items()}
    for key, future in futures.items():
        try:
            future.result()
        except ValueError as e:
            raise storage_error("write", key, url, e) from None


def read_json(kv: ts.KvStore, key: str, url: str, *, sealed: bool = False, fix: str = UNSEALED_FIX) -> dict | None:
    """The JSON object at ``key`` without its digest (None if the key is missing). Its digest is checked when it
    has one; ``sealed``: it must have one (a file of a format that seals every object). A truncated, foreign or
    altered object is a DamageError naming the key and ``fix``."""
    return parse_json(read_value(kv, key, url), key, url, sealed=sealed, fix=fix)


UNCONDITIONAL_WORKERS = (
    "two --worker processes may claim one unit (the same bytes written twice) and share the done markers of one "
    "chunk, of which one may be lost and done again; give encode --claim_utterances 256 so that no two share a chunk"
)


def warn_unconditional(url: str, consequence: str) -> None:
    """The warning that the store at ``url`` ignores conditional writes (a stale generation's write succeeded), with
    what follows for the run (``consequence``): the writer lease's fallback, or ``UNCONDITIONAL_WORKERS``."""
    log.warning("store %r ignores conditional writes (an emulator or an S3-compatible server without If-Match): %s",
                url, consequence)  # fmt: skip


def create_key(kv: ts.KvStore, key: str, value: bytes, url: str = "") -> bool:
    """Writes ``key`` only if it does not exist yet; False if another writer created it first.

    Only a kvstore that does not implement conditional writes falls back to a plain write (the keys written this way
    are the same for every writer but for the creation info, so the last writer winning loses nothing). Any other
    failure (permissions, a full disk, a network error) is a StoreError: it never turns into an unconditional
    overwrite of a write-once key.
    """
    missing = read_value(kv, key, url)
    if missing.state != "missing":
        return False
    return replace_key(kv, key, value, missing.stamp.generation, url)


def replace_key(kv: ts.KvStore, key: str, value: bytes, generation: bytes, url: str = "") -> bool:
    """Writes ``key`` only if it is still at ``generation`` (as read before: a read-modify-write); False if another
    writer changed it meanwhile (read again, and retry). Falls back to a plain write where the kvstore does not
    implement conditions, as ``create_key``."""
    try:
        stamp = kv.write(key, value, if_equal=generation).result()
    except ValueError as e:
        if not _conditions_unsupported(e):
            raise storage_error("write", key, url, e) from None
        write_value(kv, key, value, url)
        return True
    return bool(stamp.generation)  # an unknown (empty) generation: the condition failed


def _conditions_unsupported(error: Exception) -> bool:
    """TensorStore's answer when a kvstore cannot do conditional writes: UNIMPLEMENTED, or a message saying so."""
    text = str(error)
    return text.startswith("UNIMPLEMENTED") or "not supported" in text.lower() and "condition" in text.lower()


def open_array(kvstore: dict, url: str, writable: bool, options: Mapping | None = None) -> ts.TensorStore:
    """Opens an existing zarr3 array with its own metadata; ``options``: TensorStore open options such as
    ``fill_missing_data_reads`` (they are not part of the stored metadata)."""
    mode = {"read": True, "write": True} if writable else {"read": True}
    spec = {"driver": "zarr3", "kvstore": kvstore, **(options or {})}
    try:
        return ts.open(spec, open=True, context=_context, **mode).result()
    except ValueError as e:
        if "NOT_FOUND" in str(e):
            raise StoreError(
                f"store {url!r} has no array at {kvstore.get('path', '')!r}: encode the language again"
            ) from None
        if "DATA_LOSS" in str(e):  # its zarr.json truncated or altered: damage, as a chunk's is
            raise DamageError(
                f"the metadata of array {kvstore.get('path', '')!r} of store {url!r} is damaged ({e}): "
                f"`babelgrid verify {url} --repair`, then rerun the job that wrote it",
                METADATA_DAMAGED,
            ) from None
        raise StoreError(f"cannot open array {kvstore.get('path', '')!r} of store {url!r}: {e}") from None


def create_or_open_array(spec: dict, url: str) -> ts.TensorStore:
    """Opens the array at ``spec``'s kvstore with its own metadata if it exists (the caller checks that its shape
    fits), else creates it with ``spec``'s."""
    options = {k: v for k, v in spec.items() if k not in ("driver", "kvstore", "metadata")}
    try:
        return open_array(spec["kvstore"], url, writable=True, options=options)
    except StoreError as e:
        if "has no array" not in str(e):
            raise
    try:
        # create + open: if another process creates it meanwhile, this opens theirs (metadata must match).
        return ts.open(spec, create=True, open=True, context=_context).result()
    except ValueError as e:
        raise StoreError(f"cannot create array {spec['kvstore'].get('path', '')!r} of store {url!r}: {e}") from None


def update_json(kv: ts.KvStore, key: str, url: str, change: Callable[[dict | None], dict | None], *, fix: str) -> None:
    """A read-modify-write of the sealed JSON object at ``key`` (a roster): ``change(current)`` (None where there is
    none) returns the new object, or None to leave it as it is; retried while another writer changes it meanwhile."""
    while True:
        found = read_value(kv, key, url)
        new = change(parse_json(found, key, url, sealed=True, fix=fix))
        if new is None or replace_key(kv, key, json_bytes(new), found.stamp.generation, url):
            return


SHOWN_DIFFS = 6  # the differing settings a refusal names


def create_or_compare(
    kv: ts.KvStore,
    key: str,
    manifest: dict,
    url: str,
    *,
    fields: Iterable[str],
    error: type[BabelgridError],
    what: str,
    check: Callable[[dict], dict] | None = None,
    unrecorded: Iterable[str] = (),
    before_create: Callable[[], None] | None = None,
) -> dict:
    """The manifest at ``key``, created from ``manifest`` if absent (a conditional write: of racing writers, one wins
    and the others read its manifest), else compared with it on ``fields``: by every process that opens the output,
    a resume and a ``--worker`` joining after the others died alike, so that no lease need be live to refuse.

    ``check`` validates a stored manifest (format name and version) and returns it as it is to be compared (with
    defaults for fields older versions lacked). ``unrecorded``: fields of ``fields`` that outputs written before they
    were recorded lack, and writers other than the job may leave None: compared only where both sides hold a value
    (no default can stand for a setting nobody recorded). A difference raises ``error`` naming every differing field
    with both values and the two ways out. ``before_create`` runs when there is no manifest, before one is created: it
    may refuse (raise) to create one.
    """
    stored = read_json(kv, key, url)
    if stored is None:
        if before_create is not None:
            before_create()
        if create_key(kv, key, json_bytes(manifest), url):
            stored = manifest
        else:
            stored = read_json(kv, key, url)  # another process created it first
    compared = dict(stored if check is None else check(stored))
    for name in unrecorded:
        if compared.get(name) is None or manifest.get(name) is None:
            compared[name] = manifest.get(name)
    diffs = manifest_diffs(compared, manifest, fields)
    if diffs:  # the first few, in the order of ``fields`` (a model of another family differed in 40, 2,000 characters)
        shown = diffs[:SHOWN_DIFFS] + ([f"and {len(diffs) - SHOWN_DIFFS} more"] if len(diffs) > SHOWN_DIFFS else [])
        raise error(
            f"{what} {url!r} was written with other settings: {'; '.join(shown)}. Rerun with the stored values (the "
            "same flags), or write to another --out"
        )
    return stored


def keys_under(kv: ts.KvStore, prefix: str, url: str) -> list[str]:
    """Every key that starts with ``prefix`` (a folder's ``a/``, or a whole key name)."""
    try:
        found = kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()
    except ValueError as e:
        raise storage_error("list", prefix, url, e) from None
    return sorted(k.decode() for k in found)


def refuse_lost_manifest(kv: ts.KvStore, key: str, url: str, held: list[str], *, what: str, fix: str) -> None:
    """A ``before_create`` for ``create_or_compare``: an output whose manifest ``key`` is missing but which holds what
    its runs write (``held``: their names, found when the manifest was found missing) is refused. A new manifest would
    take this run's settings as those of results computed with others, and a resume would mix them in one output
    (a similarity store re-adopted by another model's run). Read again first: another process may have created the
    output and written into it since."""
    if held and read_json(kv, key, url) is None:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise DamageError(
            f"{what} {url!r} has lost its {key} but holds {shown}: the settings they were written with are unknown, "
            f"so nothing is written over them. {fix}",
            "missing",
        )
