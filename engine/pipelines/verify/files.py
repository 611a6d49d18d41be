"""``babelgrid verify`` on the files of an output (job outputs, parts, manifests), judged only where the output's
own record shows babelgrid wrote them (``engine.pipelines.verify.ownership``); every other file is listed as "not
ours" and left alone, by the check and by ``--repair``.

- a file with its digest file: its bytes against the digest (and a Parquet's pages, an npz's arrays);
- a Parquet part or table: its page CRCs and declared columns;
- a sealed JSON object: its digest;
- a name babelgrid writes whose digest file or seal is gone: damage, since its job reads it there;
- a training checkpoint: every file its ``checksums.json`` lists (size and SHA-256), as the job's restore checks it.
"""

from __future__ import annotations

import json
import re

from engine.errors import BabelgridError, StoreError
from engine.pipelines.verify.checks import NOT_REPAIRABLE, Damage, Findings, _delete, _nothing, _problem
from engine.pipelines.verify.ownership import checkpoint_folder, coordination, documented
from engine.runtime.status import LEASE_FIELDS, record_problem
from engine.stores import checkpoint_manifest
from engine.stores.integrity import COLUMNS_KEY, DIGEST_SUFFIX, DamageError, check_output, digest_line, read_parquet
from engine.stores.kv import read_value
from engine.stores.records import DIGEST, parse_json, read_npz

DELETED = "deleted: rerun the job that wrote it (it redoes a part, and rebuilds a merged table or file)"
LEFT = "left alone: not a name babelgrid writes (delete it yourself if it is one of its outputs)"
SHOWN = 5  # names of files left alone shown in the note
FOREIGN = "not ours"  # the count of files left alone (``Findings.checked``), apart from what was read
# The records runs coordinate through (engine.runtime.lease, claims, status): not the output; a damaged one is no
# damage of it. Verify runs only while no run holds the lease, so such a record holds nothing and may be deleted.
RUN_RECORDS = re.compile(r"^(?:(?P<lease>lease\.json)|(?:claims|workers)/.+\.json)$")


def files(url: str, keys: list[str], kv, findings: Findings, bar) -> None:
    """Checks every file among ``keys`` that a store check did not read already (see the module docstring)."""
    present, foreign = set(keys), []
    checkpoints: dict[str, bool] = {}
    for key in (k for k in keys if k not in findings.keys_done):
        held = checkpoint_folder(key)
        if held is not None:
            checkpoints.setdefault(*held)
            continue
        if key.endswith(DIGEST_SUFFIX):
            _lone_digest(url, key, present, kv, findings, foreign)
            continue
        if key + DIGEST_SUFFIX in present:
            _digested(url, key, kv, findings, foreign)
        elif key.endswith(".parquet"):
            _parquet(url, key, kv, findings, foreign)
        elif key.endswith(".json"):
            _json(url, key, kv, findings, foreign)
        elif coordination(key):
            continue  # chunks and array metadata (the store checks read them), leases, claims
        elif documented(key):
            repair = "deleted with nothing to check it against: rerun the job that wrote it"
            findings.damage.append(Damage(key, key + DIGEST_SUFFIX, "digest missing", repair, _delete(kv, key)))
            findings.notes.append(f"{key} has no {DIGEST_SUFFIX} digest file: it was deleted, so the file cannot be "
                                  "checked and is named as damage")  # fmt: skip
        else:
            foreign.append(key)
            continue
        bar.update(1)
    for folder, complete in sorted(checkpoints.items()):
        _checkpoint(url, folder, complete, present, kv, findings)
    if foreign:
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        findings.notes.append(f"{len(foreign)} files babelgrid did not write (no digest, seal or name of its "
                              f"outputs), not ours: left alone: {shown}")  # fmt: skip
        findings.count(FOREIGN, len(foreign))


def _bytes(url: str, key: str, kv) -> bytes | None:
    found = read_value(kv, key, url)
    return bytes(found.value) if found.state == "value" else None


def _lone_digest(url: str, key: str, present: set[str], kv, findings: Findings, foreign: list[str]) -> None:
    """A digest file whose file is gone: babelgrid's when it names a file babelgrid writes (the rerun writes both)."""
    file = key[: -len(DIGEST_SUFFIX)]
    if file in present:
        return  # checked with its file
    if not documented(file):
        foreign.append(key)
        return
    repair = "its digest file deleted: rerun the job that wrote it"
    findings.damage.append(Damage(file, key, "missing", repair, _delete(kv, key)))


def _digested(url: str, key: str, kv, findings: Findings, foreign: list[str]) -> None:
    """A file with a digest file: babelgrid's when the digest is in ``write_outputs``'s form for it."""
    digest = _bytes(url, key + DIGEST_SUFFIX, kv) or b""
    name = key.rsplit("/", 1)[-1]
    if not (digest.endswith(f"  {name}\n".encode()) and len(digest) == len(digest_line(b"", key))):
        foreign.extend([key, key + DIGEST_SUFFIX])
        return
    data = _bytes(url, key, kv) or b""
    try:
        if key.endswith(".parquet"):
            read_parquet(data, key, url, fix="")
        elif key.endswith(".npz"):
            read_npz(data, key, url, fix="")  # numeric arrays only: an object array is damage, not read
        check_output(kv, key, data, url)
        findings.count("Parquet files" if key.endswith(".parquet") else "output files")
    except DamageError as e:
        # A digest in sha256sum's form beside a user's file is not proof enough to delete it: the name must be ours
        ours = documented(key)
        fix = _delete(kv, key, key + DIGEST_SUFFIX) if ours else None
        findings.damage.append(Damage(key, key, _problem(e), DELETED if ours else LEFT, fix))


def _parquet(url: str, key: str, kv, findings: Findings, foreign: list[str]) -> None:
    """A Parquet file without a digest file: babelgrid's when its footer declares its columns (``parquet_bytes``),
    or, unreadable, when it sits where babelgrid writes Parquet (a part, a merged table)."""
    try:
        table = read_parquet(_bytes(url, key, kv) or b"", key, url, fix="")
    except DamageError as e:
        declared = e.problem.startswith("footer damaged")
        if declared or documented(key):
            findings.damage.append(Damage(key, key, _problem(e), DELETED, _delete(kv, key, key + DIGEST_SUFFIX)))
        else:
            foreign.append(key)
        return
    if COLUMNS_KEY in (table.schema.metadata or {}) or documented(key):
        findings.count("Parquet files")
    else:
        foreign.append(key)


def _json(url: str, key: str, kv, findings: Findings, foreign: list[str]) -> None:
    """A JSON file: judged when sealed (babelgrid's digest field), or when its name is babelgrid's (its outputs' and
    run records'); a user's JSON, valid or not, is left alone."""
    found = read_value(kv, key, url)
    try:
        value = json.loads(bytes(found.value))
    except ValueError:
        value = None
    # babelgrid's seal is "sha256:" and 64 hex digits (records.json_digest); a user's JSON with a "digest" field of
    # its own was judged as ours, and verify exited 1 for good (a probe's)
    seal = value.get(DIGEST) if isinstance(value, dict) else None
    sealed = isinstance(seal, str) and seal.startswith("sha256:") and len(seal) == len("sha256:") + 64
    record = RUN_RECORDS.match(key)
    if record is not None:
        problem = record_problem(value, LEASE_FIELDS if record.group("lease") else ())
        if problem is not None:
            what = "writer lease" if record.group("lease") else "run record"
            findings.notes.append(f"{key} is a damaged {what} ({problem}), not part of the output: no run holds it "
                                  "(verify checked), so delete it; the next run replaces it anyway")  # fmt: skip
        return
    if not (sealed or documented(key) or coordination(key)):
        foreign.append(key)
        return
    try:
        parse_json(found, key, url)
        findings.count("JSON files")
    except (StoreError, BabelgridError) as e:
        findings.damage.append(Damage(key, key, _problem(e), NOT_REPAIRABLE))


def _checkpoint(url: str, folder: str, complete: bool, present: set[str], kv, findings: Findings) -> None:
    """A training checkpoint folder, by its manifest: what the job's restore would find wrong with it."""
    if not complete:
        findings.notes.append(
            f"{folder}/: a checkpoint save in progress or moved aside after damage; the job's "
            "next start removes a save in progress (delete one moved aside when done looking)"
        )
        return
    manifest = f"{folder}/{checkpoint_manifest.MANIFEST}"
    if manifest not in present and not any(k.startswith(f"{folder}/state/") for k in present):
        findings.notes.append(
            f"{folder}/: a checkpoint written before checkpoints carried their manifest: it "
            "cannot be verified (the job restores it with a warning)"
        )
        return

    def digest(name: str) -> tuple[int, str] | None:
        data = _bytes(url, f"{folder}/{name}", kv)
        return None if data is None else checkpoint_manifest.hashed(data)

    problem = checkpoint_manifest.problem(_bytes(url, f"{folder}/{checkpoint_manifest.MANIFEST}", kv), digest)
    findings.count("checkpoints")
    if problem is not None:
        repair = "none needed: the job's resume checks it too, moves it aside and resumes from an older one"
        findings.damage.append(Damage(f"checkpoint {folder}/", f"{folder}/", problem, repair, _nothing))
