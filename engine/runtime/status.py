"""Where a run stands, read from its output store alone: what ``babelgrid status OUT`` prints and what every worker
logs as it goes.

A run that claims units (``engine.runtime.claims``) keeps three kinds of small records in its output store:

- ``workers/<job>/<owner>.json``: one per process (a ``--worker`` task or a ``jax.distributed`` process), renewed
  with its claims every ``claim_ttl / 3`` seconds: host, pid, its scheduler's task label, the units it did and its
  recent rate, and when it expires. A killed worker's record stops being renewed; one that ends writes ``exited``.
- ``workers/<job>/run.json``: written once by the process that opened the run: how many units the run has and how
  many were done when it opened.
- ``claims/<job>/<unit>.json``: the units held now (a done unit's claim is deleted).

None of them is read to decide what is done (the store's own markers are); they say who does what. The run that
finishes every unit deletes them all (``WorkClaims.tidy``), so a finished store holds none.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorstore as ts

from engine.stores.kv import parse_record, read_value, storage_error

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


def list_keys(kv: ts.KvStore, prefix: str, url: str) -> list[str]:
    """The keys under ``prefix`` (relative to the store's root)."""
    try:
        keys = kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()
    except ValueError as e:
        raise storage_error("list", prefix, url, e) from None
    return sorted(k.decode() for k in keys)


def read_records(kv: ts.KvStore, keys: list[str], url: str) -> dict[str, dict]:
    """Each key's JSON record, read concurrently; a torn or vanished record is left out."""
    futures = {key: kv.read(key) for key in keys}
    out = {}
    for key, future in futures.items():
        try:
            found = future.result()
        except ValueError as e:
            raise storage_error("read", key, url, e) from None
        if found.state == "value":
            record = parse_record(found.value)
            if record:
                out[key] = record
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

    @property
    def live(self) -> list[dict]:
        return [w for w in self.workers if w.get("state") == "working" and w.get("expires_unix", 0) > self.now]

    @property
    def stopped(self) -> list[dict]:
        """Workers that stopped renewing without saying they ended: killed, or their host lost."""
        return [w for w in self.workers if w.get("state") == "working" and w.get("expires_unix", 0) <= self.now]

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
        working = [c for c in self.claims if c.get("state") == "working"]
        return [c for c in working if (c.get("expires_unix", 0) > self.now) == live]

    def line(self, mine: int | None = None) -> str:
        """The run in one line; ``mine``: the units this worker did, which lead."""
        units, done = self.units, self.done
        parts = [] if mine is None else [f"this worker: {mine} units"]
        if not (self.run or self.workers or self.claims):
            return "; ".join(
                [*parts, f"{self.job}: the run is complete (the worker that finished it removed its records)"]
            )
        if units is None:
            parts.append(f"{self.job}: units unknown (no run record)")
        elif done is None:
            parts.append(f"{self.job}: {units} units, done unknown until the run's first worker records it")
        else:
            parts.append(f"{self.job}: {done} of {units} units done ({100 * done / max(units, 1):.0f}%)")
        parts.append(f"workers: {len(self.live)} live, {len(self.stopped)} stopped renewing, {len(self.exited)} exited")
        stale = self.held(live=False)
        held = f"claimed now: {len(self.held(live=True))}"
        if stale:
            held += f", {len(stale)} by workers that stopped renewing ({describe(self.stopped_holders(stale))})"
        parts.append(held)
        finished = [c for c in self.claims if c.get("state") == "finished"]
        if finished:
            parts.append(f"{len(finished)} finished with items skipped")
        rate = self.rate
        if rate > 0:
            parts.append(f"{rate * 60:.3g} units/min")
            if units is not None and done is not None:
                parts.append(f"about {duration((units - done) / rate)} left at that rate")
        return "; ".join(parts)

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
    keys = list_keys(kv, prefix, url)
    records = read_records(kv, keys, url)
    run = records.pop(prefix + RUN_RECORD, {})
    claims = read_records(kv, [k for k in list_keys(kv, f"{CLAIMS_PREFIX}{job}/", url) if k.endswith(".json")], url)
    return RunStatus(url, job, time.time(), run, list(records.values()), list(claims.values()))


def jobs_with_records(kv: ts.KvStore, url: str) -> list[str]:
    """The jobs that hold worker records or claims in the store at ``url``."""
    jobs = set()
    for prefix in (WORKERS_DIR, CLAIMS_PREFIX):
        for key in list_keys(kv, prefix, url):
            parts = key[len(prefix) :].split("/", 1)
            if len(parts) == 2:
                jobs.add(parts[0])
    return sorted(jobs)


def lease_line(kv: ts.KvStore, url: str) -> str | None:
    """The writer lease in one line, or None when there is none."""
    found = read_value(kv, "lease.json", url)
    if found.state != "value":
        return None
    lease = parse_record(found.value)
    left = lease.get("expires_unix", 0) - time.time()
    mode = "shared by --worker processes" if lease.get("mode") == "workers" else "held by one run"
    state = f"valid for {duration(left)}" if left > 0 else f"expired {duration(-left)} ago"
    holder = f"last renewed by {lease.get('host')} pid {lease.get('pid')}"
    return f"writer lease: {lease.get('job')}, {mode}, {holder}, {state}"


def store_status(kv: ts.KvStore, url: str) -> list[str]:
    """``babelgrid status``'s lines for the store at ``url``."""
    lines = []
    lease = lease_line(kv, url)
    if lease:
        lines.append(lease)
    jobs = jobs_with_records(kv, url)
    for job in jobs:
        lines.append(run_status(kv, url, job).line())
    if not jobs:
        lines.append(
            f"no run in progress: no worker records or claims in {url!r} (a run that finished every unit removes them; "
            "`babelgrid verify` checks what the store holds)"
        )
    return lines
