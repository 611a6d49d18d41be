"""Where a run stands, read from its output store alone: what ``babelgrid status OUT`` prints and what every worker
logs as it goes.

A run that claims units (``engine.runtime.claims``) keeps three kinds of small records in its output store:

- ``workers/<job>/<owner>.json``: one per process (a ``--worker`` task or a ``jax.distributed`` process), renewed
  with its claims every ``claim_ttl / 3`` seconds: host, pid, its scheduler's task label, the units it did and its
  recent rate, when it expires, and whose claims it took over (``taken_from``: owner -> when). A killed worker's
  record stops being renewed; one that ends writes ``exited``. A worker whose claim another took over after its last
  renewal, or whose process is gone from this host, is dead at once, before its record expires.
- ``workers/<job>/run.json``: written once by the process that opened the run: how many units the run has and how
  many were done when it opened.
- ``claims/<job>/<unit>.json``: the units held now (a done unit's claim is deleted).

None of them is read to decide what is done (the store's own markers are); they say who does what. The run that
finishes every unit deletes them all (``WorkClaims.tidy``), so a finished store holds none.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time

import tensorstore as ts

from engine.errors import BabelgridError
from engine.stores.kv import keys_under, read_value, storage_error
from engine.stores.reader import open_store
from engine.stores.records import parse_record

WORKERS_DIR = "workers/"
RUN_RECORD = "run.json"
CLAIMS_PREFIX = "claims/"
# The variables a cluster's scheduler sets for one task of an array, in the order they name it (the first found).
TASK_VARIABLES = (
    ("BABELGRID_WORKER_LABEL", "{}"),
    ("SLURM_ARRAY_TASK_ID", "slurm array task {} of job {SLURM_ARRAY_JOB_ID}"),
    ("JOB_COMPLETION_INDEX", "kubernetes index {} ({HOSTNAME})"),
    ("SLURM_JOB_ID", "slurm job {}"),
)


def task_label(environ=None) -> str:
    """What the cluster's scheduler calls this process, from its environment ('' where none is set)."""
    env = os.environ if environ is None else environ
    for name, text in TASK_VARIABLES:
        if env.get(name):
            return text.format(env[name], **{k: env.get(k, "?") for k in ("SLURM_ARRAY_JOB_ID", "HOSTNAME")})
    return ""


def worker_prefix(job: str) -> str:
    return f"{WORKERS_DIR}{job}/"


# The fields of the lease, claim, worker and run records that their readers compute with, by the type they must have.
# A record that holds another type (valid JSON edited by hand, or written by a foreign tool) is damage of that record:
# named and skipped, never a crash of the workers and of the status that read it.
NUMBER_FIELDS = ("expires_unix", "ttl", "rate", "opened_unix")
COUNT_FIELDS = ("pid", "units_total", "done_at_start", "units_done", "taken_over", "claimed", "units", "done_at_open")
TEXT_FIELDS = ("owner", "host", "job", "state", "label", "unit", "mode", "renewed", "expires", "started", "opened")
MAP_FIELDS = ("taken_from",)  # owner -> unix time
LEASE = "lease.json"  # the writer lease's key at the store's root (engine.runtime.lease)
LEASE_FIELDS = ("owner", "job", "expires_unix")  # what every lease record holds


def record_problem(record, required: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a record read as JSON (``required``: fields it must hold), in words; None when nothing."""
    if not isinstance(record, dict) or not record:
        return "not a JSON object"
    missing = [name for name in required if name not in record]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for name in (*NUMBER_FIELDS, *COUNT_FIELDS, *TEXT_FIELDS, *MAP_FIELDS):
        if name not in record:
            continue
        value = record[name]
        if name in MAP_FIELDS:
            good = isinstance(value, dict) and all(finite(v) for v in value.values())
            want = "an object of times"
        elif name in TEXT_FIELDS:
            good, want = isinstance(value, str), "a string"
        elif name in COUNT_FIELDS:
            good, want = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "a count"
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            good, want = number and math.isfinite(value), "a finite number" if number else "a number"
        if not good:
            return f"{name} is {value!r}, not {want}"
    return None


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_records(kv: ts.KvStore, keys: list[str], url: str, damaged: dict[str, str] | None = None) -> dict[str, dict]:
    """Each key's JSON record, read concurrently; a vanished record is left out, and so is a damaged one (not a JSON
    object, or a field of another type: ``record_problem``), named in ``damaged`` (key -> what is wrong)."""
    futures = {key: kv.read(key) for key in keys}
    out = {}
    for key, future in futures.items():
        try:
            found = future.result()
        except ValueError as e:
            raise storage_error("read", key, url, e) from None
        if found.state == "value":
            record = parse_record(found.value)
            problem = record_problem(record)
            if problem is None:
                out[key] = record
            elif damaged is not None:
                damaged[key] = problem
    return out


@dataclasses.dataclass
class RunStatus:
    """One job's run in one output store, as its records say (module docstring)."""

    url: str
    job: str
    now: float
    run: dict  # the run record ({} when the opener has not written it yet)
    workers: list[dict]  # every worker record
    claims: list[dict]  # every claim record (working and finished)
    damaged: dict[str, str] = dataclasses.field(default_factory=dict)  # records skipped: key -> what is wrong

    @property
    def live(self) -> list[dict]:
        return [w for w in self.working if w.get("expires_unix", 0) > self.now and not self.is_dead(w)]

    @property
    def stopped(self) -> list[dict]:
        """Workers that stopped renewing without saying they ended: killed, or their host lost."""
        return [w for w in self.working if w.get("expires_unix", 0) <= self.now and not self.is_dead(w)]

    @property
    def dead(self) -> list[dict]:
        """Workers known dead before their record expires: another took over one of their claims after their last
        renewal (a live one renews within ``ttl / 3``, so a taker found it dead or its claim expired), or their
        process is gone from this host."""
        return [w for w in self.working if self.is_dead(w)]

    @property
    def working(self) -> list[dict]:
        return [w for w in self.workers if w.get("state") == "working"]

    def is_dead(self, worker: dict) -> bool:
        if dead_here(worker):
            return True
        owner = worker.get("owner")
        renewed = worker.get("expires_unix", 0) - worker.get("ttl", 0)
        return any(
            float(w.get("taken_from", {}).get(owner, -math.inf)) >= renewed for w in self.workers if w is not worker
        )

    @property
    def exited(self) -> list[dict]:
        return [w for w in self.workers if w.get("state") == "exited"]

    @property
    def units(self) -> int | None:
        """The run's units; None when no record says (a run opened by an older babelgrid)."""
        counts = [self.run.get("units")] + [w.get("units_total") for w in self.workers]
        counts = [c for c in counts if isinstance(c, int)]
        return max(counts) if counts else None

    @property
    def done(self) -> int | None:
        """Units done: those done when the run opened, and every unit a worker of it has done since."""
        if not isinstance(self.run.get("done_at_open"), int):
            return None
        done = self.run["done_at_open"] + sum(int(w.get("units_done", 0)) for w in self.workers)
        return min(done, self.units) if self.units is not None else done

    @property
    def rate(self) -> float:
        """Units per second of the live workers, each over its last minutes."""
        return sum(float(w.get("rate", 0.0)) for w in self.live)

    def held(self, live: bool) -> list[dict]:
        """The claims held now by live processes (``live``), or by processes that stopped renewing or died."""
        working = [c for c in self.claims if c.get("state") == "working"]
        dead = {w.get("owner") for w in self.dead}
        return [c for c in working if (c.get("expires_unix", 0) > self.now and c.get("owner") not in dead) == live]

    def line(self, mine: int | None = None) -> str:
        """The run in one line; ``mine``: the units this worker did, which lead."""
        units, done = self.units, self.done
        parts = [] if mine is None else [f"this worker: {mine} units"]
        damaged = self.damaged_line()
        if not (self.run or self.workers or self.claims):
            if damaged:
                return "; ".join([*parts, f"{self.job}: no readable record", damaged])
            return "; ".join(
                [*parts, f"{self.job}: the run is complete (the worker that finished it removed its records)"]
            )
        if units is None:
            parts.append(f"{self.job}: units unknown (no run record)")
        elif done is None:
            parts.append(f"{self.job}: {units} units, done unknown until the run's first worker records it")
        else:
            what = f" ({self.run['unit']})" if isinstance(self.run.get("unit"), str) else ""
            parts.append(f"{self.job}: {done} of {units} units{what} done ({100 * done / max(units, 1):.0f}%)")
        workers = f"workers: {len(self.live)} live, {len(self.stopped)} stopped renewing, {len(self.exited)} exited"
        if self.dead:
            workers += f", {len(self.dead)} dead ({describe(self.dead)}: others took over its claims or it is gone)"
        parts.append(workers)
        stale = self.held(live=False)
        held = f"claimed now: {len(self.held(live=True))}"
        if stale:
            held += f", {len(stale)} by workers that stopped renewing or died ({describe(self.stopped_holders(stale))})"
        parts.append(held)
        finished = [c for c in self.claims if c.get("state") == "finished"]
        if finished:
            parts.append(f"{len(finished)} finished with items skipped")
        rate = self.rate
        if rate > 0:
            parts.append(f"{rate * 60:.3g} units/min")
            if units is not None and done is not None:
                parts.append(f"about {duration((units - done) / rate)} left at that rate")
        if damaged:
            parts.append(damaged)
        return "; ".join(parts)

    def damaged_line(self) -> str:
        """The damaged records skipped, named, with the fix; '' when none."""
        if not self.damaged:
            return ""
        named = ", ".join(f"{key} ({problem})" for key, problem in sorted(self.damaged.items()))
        return (
            f"{len(self.damaged)} damaged record(s) skipped: {named}; they say nothing of the work, which the store's "
            "markers record: delete them (the run's end, and the next run's start, remove them too)"
        )

    def stopped_holders(self, stale: list[dict]) -> list[dict]:
        owners = {c.get("owner") for c in stale}
        by_owner = {w.get("owner"): w for w in self.workers}
        return [by_owner.get(o) or next(c for c in stale if c.get("owner") == o) for o in sorted(owners, key=str)]


def describe(workers: list[dict], now: float | None = None) -> str:
    """'host-a pid 12 (slurm array task 3 of job 9), last renewed 45 s ago' for each worker, comma-separated."""
    now = time.time() if now is None else now
    out = []
    for w in workers:
        text = f"{w.get('host', '?')} pid {w.get('pid', '?')}"
        if w.get("label"):
            text += f" ({w['label']})"
        expires = w.get("expires_unix")
        ttl = w.get("ttl")
        if isinstance(expires, (int, float)) and isinstance(ttl, (int, float)):
            text += f", last renewed {duration(max(now - (expires - ttl), 0))} ago"
        out.append(text)
    return ", ".join(out)


def duration(seconds: float) -> str:
    """Seconds for people: '45 s', '12 min', '3 h 5 min'."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def run_status(kv: ts.KvStore, url: str, job: str) -> RunStatus:
    """The records of ``job``'s run in the store at ``url`` (module docstring)."""
    prefix = worker_prefix(job)
    keys = keys_under(kv, prefix, url)
    damaged: dict[str, str] = {}
    records = read_records(kv, keys, url, damaged)
    run = records.pop(prefix + RUN_RECORD, {})
    claim_keys = [k for k in keys_under(kv, f"{CLAIMS_PREFIX}{job}/", url) if k.endswith(".json")]
    claims = read_records(kv, claim_keys, url, damaged)
    return RunStatus(url, job, time.time(), run, list(records.values()), list(claims.values()), damaged)


def jobs_with_records(kv: ts.KvStore, url: str) -> list[str]:
    """The jobs that hold worker records or claims in the store at ``url``."""
    jobs = set()
    for prefix in (WORKERS_DIR, CLAIMS_PREFIX):
        for key in keys_under(kv, prefix, url):
            parts = key[len(prefix) :].split("/", 1)
            if len(parts) == 2:
                jobs.add(parts[0])
    return sorted(jobs)


def lease_line(kv: ts.KvStore, url: str) -> str | None:
    """The writer lease in one line, or None when there is none (``lease_state``)."""
    return lease_state(kv, url)[0]


def lease_state(kv: ts.KvStore, url: str) -> tuple[str | None, str]:
    """The writer lease in one line (None when there is none) and whether readers and writers take it as held:
    ``held``, ``free`` (none, expired, or its one holder found dead on this host) or ``damaged``. It agrees with what
    they decide (``engine.runtime.lease``): a live workers' lease whose last renewer is found dead on this host is
    named so, with the live workers that renew it or, when it has none, when and how it ends; a damaged one
    (``record_problem``) is named damaged, with the fix."""
    found = read_value(kv, LEASE, url)
    if found.state != "value":
        return None, "free"
    lease = parse_record(found.value)
    problem = record_problem(lease, LEASE_FIELDS)
    if problem is not None:
        return (
            f"writer lease: {LEASE} is damaged ({problem}): no run can renew it, and the next run takes it over. "
            f"Once no run writes {url!r}, delete it (`babelgrid verify` judges the output's own files)"
        ), "damaged"
    left = lease["expires_unix"] - time.time()
    workers = lease.get("mode") == "workers"
    mode = "shared by --worker processes" if workers else "held by one run"
    head = f"writer lease: {lease['job']}, {mode}, last renewed by {lease.get('host')} pid {lease.get('pid')}"
    if left <= 0:
        return f"{head}, expired {duration(-left)} ago", "free"
    if not dead_here(lease):
        return f"{head}, valid for {duration(left)}", "held"
    head += ", which no longer runs on this host"
    if not workers:
        return f"{head}: the next run takes it over at once", "free"
    live = run_status(kv, url, lease["job"]).live
    if live:  # another worker renews it within ttl / 3: nothing to do, and nothing to delete
        return f"{head}; {len(live)} live worker(s) of the run renew it ({describe(live)})", "held"
    return (
        f"{head}; a worker elsewhere renews it if one still runs. Until it expires ({lease.get('expires')}, in "
        f"{duration(left)}) jobs reading {url!r} and runs without --worker are refused: start a worker of the same "
        f"command to finish the run, or, if no worker of it runs on any host, delete {url}/{LEASE}"
    ), "held"


def store_status(kv: ts.KvStore, url: str) -> list[str]:
    """``babelgrid status``'s lines for the store at ``url``."""
    lines = []
    lease, state = lease_state(kv, url)
    if lease:
        lines.append(lease)
    jobs = jobs_with_records(kv, url)
    for job in jobs:
        lines.append(run_status(kv, url, job).line())
    if not jobs and state == "held":
        lines.append(f"a run holds the writer lease: no worker records or claims in {url!r} yet")
    elif not jobs:
        lines.append(
            f"no run in progress: no worker records or claims in {url!r} (a run that finished every unit removes them; "
            "`babelgrid verify` checks what the store holds)"
        )
    return lines


def layer_store_done(url: str) -> str | None:
    """The utterances done per language when ``url`` is a layer store ("layer store: 58 of 60 utterances done: de
    30/30, en 28/30"), else None: status said only "no run in progress" of a finished store (newcomer probe)."""
    try:
        reader = open_store(url)
        done = {lang: reader.done(lang) for lang in reader.languages}
    except BabelgridError:
        return None
    try:
        n_skipped, skips = reader.skips_named([lang for lang, d in done.items() if not d.all()])
        unread = ""
    except BabelgridError as e:  # a damaged skipped.json: the counts still stand
        n_skipped, unread = 0, f"; the encode job's records of what it skipped cannot be read: {e}"
    total, n = sum(int(d.sum()) for d in done.values()), sum(len(d) for d in done.values())
    each = ", ".join(f"{lang} {int(d.sum())}/{len(d)}" for lang, d in done.items())
    line = f"layer store: {total} of {n} utterances done{': ' + each if each else ''}"
    if n_skipped:  # not unfinished work: a rerun skips them again (seqsim needs --allow_partial)
        rest = "" if n_skipped == n - total else f"; the other {n - total - n_skipped} are not encoded yet"
        line += f"; {n_skipped} skipped by the encode job for their audio or states ({skips}){rest}"
    return line + unread


def dead_here(holder: dict) -> bool:
    """Whether the lease's holder ran on this host and its process is gone. Holders on other hosts (or in another
    process namespace under the same host name, where the pid may belong to someone else) are never judged dead
    here: their leases expire."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits for its parent to reap it (Linux's state Z): a killed job whose
    supervisor has not called wait() yet still answers signal 0, and held its lease for two minutes against an
    immediate resume (kill-and-resume probe). False where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return False
