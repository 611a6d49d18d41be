"""``babelgrid verify``: a scrub of a layer store, a similarity store or a job's output, with an optional repair.

Reads every chunk and file under the location and checks it (``engine.pipelines.verify.checks`` lists what, per
kind), prints a table of what is damaged, and with ``repair`` marks it not done so that rerunning the job that wrote
it redoes exactly that. A repair takes the location's writer lease, so it never runs beside a job writing there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time

import tensorstore as ts

from engine.errors import DamageError
from engine.pipelines.verify import checks, files, staged
from engine.pipelines.verify.config import VerifyConfig, VerifyError
from engine.runtime.lease import StoreBusyError, live_writer
from engine.runtime.runs import RunSummary, progress_bar, writer_lease
from engine.stores import kv as store_kv
from engine.stores.kv import open_kvstore, read_json
from engine.stores.pair_roster import ROSTER as PAIRS_ROSTER
from engine.stores.schema import FORMAT_NAME as LAYER_STORE
from engine.stores.schema import LANGUAGES_DIR, ROSTER
from engine.stores.similarity import FORMAT_NAME as SIMILARITY_STORE
from engine.stores.similarity import IDS, PAIR_SEPARATOR

log = logging.getLogger(__name__)
KINDS = {LAYER_STORE: "layer store", SIMILARITY_STORE: "similarity store"}
RUN_RECORDS = re.compile(r"^(.*?)(?:claims|workers)/([^/]+)/")  # (folder, job) of engine.runtime.status's records
MANIFEST = "manifest.json"  # the layer and similarity stores' and the jobs' outputs' (its format names the kind)


@dataclasses.dataclass
class VerifySummary(RunSummary):
    location: str = ""
    kind: str = ""
    damage: list[checks.Damage] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    checked: dict[str, int] = dataclasses.field(default_factory=dict)
    leftover: list[str] = dataclasses.field(default_factory=list)  # keys nothing reads (``checks.Findings``)
    repaired: bool = False
    rerun: str = ""  # the command that rewrites a layer store's damaged parts, from what its manifest records

    @property
    def exit_code(self) -> int:
        """0 when nothing is damaged, or every damage was repaired; 1 otherwise."""
        if not self.damage:
            return 0
        return 0 if self.repaired and all(d.fix is not None for d in self.damage) else 1

    def report(self) -> str:
        read = {name: n for name, n in self.checked.items() if name != files.FOREIGN}
        counts = ", ".join(f"{n} {name}" for name, n in read.items()) or "nothing"
        foreign = self.checked.get(files.FOREIGN)
        left = f"; {foreign} {'file' if foreign == 1 else 'files'} not ours, left alone" if foreign else ""
        lines = [f"verified {self.kind} {self.location}: {counts} read in {self.seconds:.1f} s{left}"]
        lines += [f"note: {n}" for n in self.notes]
        if self.leftover:
            lines.append(
                f"note: {len(self.leftover)} staged blocks of pair-layers already committed, which nothing reads (a "
                "seqsim process lost the race to commit them, or was killed before deleting them): "
                + ("deleted" if self.repaired else "`--repair` deletes them; the next seqsim run's end does too")
            )
        if not self.damage:
            lines.append("no damage found")
            return "\n".join(lines)
        lines.append(f"DAMAGED: {len(self.damage)}")
        lines.append(table(self.damage, self.repaired))
        if self.repaired:
            jobs = sorted({d.job for d in self.damage if d.fix is not None})
            if jobs:
                lines.append(f"repaired: now rerun {' and '.join(jobs)} with the same flags, to redo what was damaged")
            lost = sum(d.fix is None for d in self.damage)
            if lost:
                lines.append(f"not repairable: {lost} (restore from a copy, or write the output again elsewhere)")
        else:
            lines.append(f"to repair: babelgrid verify {self.location} --repair, then rerun the jobs named above")
        if self.rerun:
            lines.append(f"the encode rerun: {self.rerun}")
        return "\n".join(lines)


def encode_command(url: str, manifest: dict, langs=()) -> str:
    """The encode command that writes a layer store's missing parts again: its dataset and split as the manifest
    recorded them, its model (a hub id as recorded; a local model is named, for the user to give its folder) and
    its languages ``langs`` (without them, the command run as printed encoded every language of the dataset into a
    store of one, a probe's)."""
    created = manifest.get("created") or {}
    model = manifest.get("model_name", "")
    hub = "/" in model and not model.startswith("/")
    if model.endswith("(packaged)"):
        model_flag = ""  # encode's default model
    else:
        model_flag = f"--model {model}" if hub else f"--model <the folder of {model}>"
    parts = ["babelgrid encode", f"--out {url}", f"--dataset {created.get('dataset', '<its dataset>')}",
             f"--split {created['split']}" if created.get("split") else "", model_flag,
             f"--langs {','.join(sorted(langs))}" if langs else ""]  # fmt: skip
    # The settings a resume compares with the store's (docs/store.md), as recorded: the command runs as printed.
    if manifest.get("layers") is not None:
        parts.append("--layers " + ",".join(str(layer) for layer in manifest["layers"]))
    recorded = ("dtype", "compute_dtype", "long_audio", "batch_size", "matmul_precision")
    parts += [f"--{flag} {manifest[flag]}" for flag in recorded if manifest.get(flag) is not None]
    return " ".join(p for p in parts if p)


def table(damage: list[checks.Damage], repaired: bool) -> str:
    """A plain-text table: what, key, problem, repair."""
    head = ("damaged", "key", "problem", "repair (done)" if repaired else "repair (with --repair)")
    rows = [head] + [(d.what, d.key, d.problem, d.repair) for d in damage]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]  # never cut: "utterances.parque" named no file
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows
    )


def _refuse_live(kv, url: str, break_lease: bool) -> None:
    """A location being written now is not verified: its work in progress would read as damage."""
    holder = live_writer(kv, url)
    if holder is not None and not break_lease:
        raise StoreBusyError(
            f"{url!r} is being written now by {holder.get('job')} (host {holder.get('host')!r}, pid "
            f"{holder.get('pid')}, lease valid until {holder.get('expires')}): its work in progress would read as "
            f"damage. Verify it once that run ends (`babelgrid status {url}` says where it stands), or pass "
            "--break_lease for a run known to be dead"
        )


def _scrub(url: str, kv, keys: list[str], repair: bool, findings: checks.Findings, bar) -> tuple[str, dict]:
    """Every check of the location ``url`` (its ``keys``) by the kind its manifest names; (kind, manifest). The files
    of an output folder (no store manifest at its root) are left to the caller, which first verifies its stores."""
    try:
        manifest = read_json(kv, MANIFEST, url) or {}
    except DamageError as e:  # what it describes cannot be known: its files are checked as any output's
        manifest = {}
        findings.damage.append(checks.Damage(MANIFEST, MANIFEST, checks.damage_kind(e), checks.NOT_REPAIRABLE))
    else:
        lost = _store_without_manifest(keys) if MANIFEST not in keys else None
        if lost:  # its files are checked as any output's; what they hold cannot be read without the manifest
            findings.damage.append(checks.Damage(f"{MANIFEST} of {lost}", MANIFEST, "missing", checks.NOT_REPAIRABLE))
    kind = KINDS.get(manifest.get("format"), "output folder")
    if kind == "layer store":
        checks.layer_store(url, keys, repair, findings, bar)
    elif kind == "similarity store":
        checks.similarity_store(url, keys, kv, findings, bar)
        staged.staged_blocks(url, keys, kv, findings, bar)
    findings.keys_done.add(MANIFEST)
    if kind in KINDS.values():
        checks.nested_stores(url, keys, kv, findings)
        files.files(url, keys, kv, findings, bar)
    return kind, manifest


def _store_without_manifest(keys: list[str]) -> str | None:
    """What the keys of a folder without a manifest show it to be, when they show a store: its roster, language index
    or arrays (a layer store's), or pair ids (a similarity store's), at its root. An output folder's own files show
    neither, and the stores inside it (``_inner_stores``) have their own manifests."""
    top = [key for key in keys if "/" not in key.rstrip("/")]
    languages = sorted({key.split("/")[0] for key in keys if key.endswith(("/states/zarr.json", "/lengths/zarr.json"))
                        and key.count("/") == 2})  # fmt: skip
    if ROSTER in top or languages or any(key.startswith(LANGUAGES_DIR) for key in keys):
        return f"a layer store (languages {', '.join(languages) or 'listed in ' + ROSTER})"
    pairs = sorted(key[: -len("/" + IDS)] for key in keys if key.endswith("/" + IDS) and key.count("/") == 2
                   and PAIR_SEPARATOR in key)  # fmt: skip
    if PAIRS_ROSTER in top or pairs:
        return f"a similarity store (pairs {', '.join(pairs[:5]) or 'listed in ' + PAIRS_ROSTER})"
    return None


def _inner_stores(kv, url: str, keys: list[str]) -> list[tuple[str, list[str]]]:
    """The outermost layer and similarity stores inside an output folder: (prefix ending in '/', their keys)."""
    found: list[tuple[str, list[str]]] = []
    for key in (k for k in keys if k.endswith("/" + MANIFEST)):
        prefix = key[: -len(MANIFEST)]
        if any(prefix.startswith(outer) for outer, _ in found):
            continue
        try:
            kind = KINDS.get((read_json(kv, key, url) or {}).get("format"))
        except DamageError:
            continue  # the files check names it
        if kind is not None:
            found.append((prefix, [k[len(prefix) :] for k in keys if k.startswith(prefix)]))
    return found


def _merge(findings: checks.Findings, inner: checks.Findings, prefix: str) -> None:
    """What a store inside an output folder showed, named by its place in the folder."""
    findings.damage += [dataclasses.replace(d, what=f"{prefix}: {d.what}", key=prefix + d.key) for d in inner.damage]
    findings.notes += [f"{prefix}: {note}" for note in inner.notes]
    findings.leftover += [prefix + key for key in inner.leftover]
    for name, n in inner.checked.items():
        findings.count(name, n)


def _unfinished_runs(keys: list[str]) -> list[str]:
    """A note per run that has not finished here: its claims or worker records remain (the run that finishes every
    unit removes them, ``engine.runtime.status``). A killed decode's folder said only "no damage found"
    (kill-and-resume probe)."""
    runs = sorted({(m.group(1), m.group(2)) for k in keys if (m := RUN_RECORDS.match(k))})
    return [f"{where.rstrip('/') + ': ' if where else ''}a run of {job} has not finished here (its claims or "
            "worker records remain): `babelgrid status` says where it stands; rerun the job with the same flags to "
            "finish it" for where, job in runs]  # fmt: skip


def run_verify(config: VerifyConfig) -> VerifySummary:
    start = time.perf_counter()
    if config.run.store_timeout:
        store_kv.set_store_timeout(config.run.store_timeout)
    if config.run.kvstore_spec:
        store_kv.set_spec_overrides(store_kv.parse_spec_overrides(config.run.kvstore_spec))
    url = config.location
    _, kv = open_kvstore(url)
    _refuse_live(kv, url, config.run.break_lease)
    try:
        keys = sorted(k.decode() for k in kv.list(ts.KvStore.KeyRange()).result())
    except ValueError as e:  # a symbolic-link loop, a permission: named, not a traceback
        raise store_kv.storage_error("list the files of", "", url, e) from None
    if not keys:
        raise VerifyError(f"nothing to verify at {url!r}: it holds no files. Check the path")
    findings = checks.Findings()
    bar = progress_bar(len(keys), "verify", "key", config.run.progress)
    try:
        kind, manifest = _scrub(url, kv, keys, config.repair, findings, bar)
        inner: list[str] = []  # the stores in an output folder that hold damage or leftovers
        if kind == "output folder":  # a run folder: the stores in it, each as itself (a study's out/<name>/)
            for prefix, sub_keys in _inner_stores(kv, url, keys):
                sub_url = f"{url.rstrip('/')}/{prefix.rstrip('/')}"
                _, sub_kv = open_kvstore(sub_url)
                _refuse_live(sub_kv, sub_url, config.run.break_lease)
                found = checks.Findings()
                _scrub(sub_url, sub_kv, sub_keys, config.repair, found, bar)
                if found.damage or found.leftover:
                    inner.append(prefix.rstrip("/"))
                _merge(findings, found, prefix)
                findings.keys_done.update(prefix + k for k in sub_keys)
            files.files(url, keys, kv, findings, bar)
        # every key was listed and looked at; the bar counts the checks read (a shard's, a pair's markers), fewer:
        # it ended at 49.6% (a probe's)
        bar.update(max(0, len(keys) - bar.n))
    finally:
        bar.close()
    summary = VerifySummary(location=url, kind=kind)
    findings.notes += _unfinished_runs(keys)
    summary.damage, summary.notes, summary.checked = findings.damage, findings.notes, findings.checked
    summary.leftover = findings.leftover
    if kind == "layer store" and any(d.job == "encode" for d in summary.damage):
        summary.rerun = encode_command(url, manifest, checks.language_folders(keys))
    if config.repair and (summary.damage or summary.leftover):
        with contextlib.ExitStack() as leases:
            for where in ["", *inner]:  # the folder's lease, and each damaged store's in it (its writers take that)
                leases.enter_context(writer_lease(f"{url.rstrip('/')}/{where}".rstrip("/"), "verify",
                                                  config.run.break_lease))  # fmt: skip
            for damage in summary.damage:
                if damage.fix is not None:
                    damage.fix()
                    log.info("repaired %s (%s): %s", damage.what, damage.key, damage.repair)
            checks._delete(kv, *summary.leftover)()
        summary.repaired = True
    summary.seconds = time.perf_counter() - start
    return summary
