"""Work claims: the hosts of one run share its work units through claim keys in the output store, with expiry.

A multi-host run (``jax.distributed``) no longer splits its work into fixed shares. Every process walks the same list
of work units (utterance blocks for encode, (layer, pair) matrices for seqsim, parts for align and decode) and takes the
next one nobody holds:

- **claim**: create ``claims/<job>/<unit>.json`` with a conditional write (create-if-absent, as the write-once keys
  and the writer lease do), holding the owner (a random id per process), host, pid and an expiry ``ttl`` seconds
  ahead. Of two processes racing for a unit, one write succeeds; the other moves on to the next unit.
- **renew**: one thread per process rewrites every claim it holds every ``ttl / 3`` seconds, conditional on the
  generation it wrote last.
- **release**: once a unit's results are committed, its claim is deleted (conditionally on its own generation).
  Whether a unit is done is judged from the store's own completion markers (``lengths`` for encode, done markers for
  seqsim), never from a claim, so a store holds no claims after a run that finished everything.
- **finish**: a unit that ended with items that cannot be done (an unreadable clip) is rewritten as ``finished``
  with those items, so that no other process retries them in this run. The next run clears ``claims/<job>/`` first
  (under the writer lease, before any work), so that it retries them.
- **take over**: a claim whose expiry has passed (its process was killed, or its host died), or whose process is
  gone from this host, is taken by the next process that wants the unit, conditionally on the generation read, so
  that two takers do not both win. The taker checks the store's markers again, then does what is still missing; its
  log names which of the two it was, and its worker record names whose claim it took (``status`` counts that worker
  dead at once).

A process that finds every unit it has not done held by others waits (polling every ``poll`` seconds) until each is
done or its claim expires: the survivors of a dead host finish its work after its claims expire. No step of this
needs the other processes to answer, so no collective is used after the work starts (``docs/store.md``).

A process whose claim was taken over while it still worked on the unit (it stalled past the expiry) finishes anyway:
every write of a unit is idempotent (the same bytes for the same inputs), so the two results are one.

Each process also keeps a **worker record** beside the claims (``engine.runtime.status``: host, pid, the scheduler's
task label, the units it did, its recent rate), renewed with its claims, and logs where the whole run stands every
``STATUS_EVERY`` seconds when it is one of several (``--worker``, or ``jax.distributed``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import tensorstore as ts

from engine.errors import StoreError
from engine.runtime.options import DEFAULT_CLAIM_TTL
from engine.runtime.status import (
    RUN_RECORD,
    dead_here,
    read_records,
    record_problem,
    run_status,
    task_label,
    worker_prefix,
)
from engine.stores.kv import create_key, keys_under, read_value, storage_error, write_value
from engine.stores.records import iso_utc, parse_record

CLAIMS_DIR = "claims/"

WORKING, FINISHED, EXITED = "working", "finished", "exited"
STATUS_EVERY = 60.0  # seconds between a worker's lines on where the whole run stands
RATE_WINDOW = 600.0  # seconds over which a worker's recent rate is counted
RECORD_EVERY = 2.0  # seconds: a worker's record is rewritten at most this often as its units end (and at each renewal)

log = logging.getLogger(__name__)


class Claim:
    """One held claim: the unit's key and the generation this process wrote last."""

    def __init__(self, unit: str, generation: bytes):
        self.unit = unit
        self.generation = generation
        self.lost = False  # another process took it over (this one stalled past the expiry)


class WorkClaims:
    """This process's claims on the work units of ``job`` in the store at ``url`` (see the module docstring); a
    context manager that stops renewing and releases what it still holds on exit."""

    def __init__(
        self, kv: ts.KvStore, url: str, job: str, *, ttl: float = DEFAULT_CLAIM_TTL, poll: float | None = None,
        shared: bool = False,
    ):  # fmt: skip
        if ttl <= 0:
            raise ValueError(f"claim ttl must be positive seconds, got {ttl}")
        self.kv, self.url, self.job, self.ttl = kv, url, job, float(ttl)
        self.shared = shared  # one of several processes (--worker, jax.distributed): log where the run stands
        self.poll = min(self.ttl / 4, 5.0) if poll is None else float(poll)
        self.owner = uuid.uuid4().hex
        self.prefix = f"{CLAIMS_DIR}{job}/"
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_over = 0  # claims of other processes this one took (expired, or their process dead here)
        self._taken_from: dict[str, float] = {}  # their owners -> when this process took one of their claims
        self.units_done = 0
        self._finished_at: collections.deque[float] = collections.deque()  # this process's recent unit ends
        self._record_generation: bytes | None = None  # of this process's worker record; None: not registered
        self._started = time.time()
        self._total = self._done_at_start = 0
        self._last_status = time.monotonic()
        self._recorded = 0.0  # when this process's record was last written

    def __enter__(self) -> WorkClaims:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def key(self, unit: str) -> str:
        return self.prefix + unit + ".json"

    def clear(self, keep_live: bool = False) -> None:
        """The start of a run, by the process that opens it (under the writer lease), before any process claims:
        deletes this job's claims and worker records left by an earlier run, so that it retries what that run had
        finished with skips, and a killed run's claims do not make it wait for their expiry.

        ``keep_live`` (a ``--worker`` run, whose lease others share): only what no live process holds goes (finished
        and expired claims, records of workers that exited or stopped renewing, and whatever a process found dead on
        this host held), and the run record once no worker is live: were workers still at work when another took
        their lease for expired (they renewed it late), they lose nothing."""
        if not keep_live:
            self._delete_all()
            return
        now = time.time()
        damaged: dict[str, str] = {}
        left = {**read_records(self.kv, keys_under(self.kv, self.prefix, self.url), self.url, damaged),
                **read_records(self.kv, keys_under(self.kv, worker_prefix(self.job), self.url), self.url, damaged),
                **{key: {} for key in damaged}}  # a damaged record holds nothing: it goes  # fmt: skip
        live = {key for key, r in left.items() if r.get("state") == WORKING and r.get("expires_unix", 0) > now
                and not dead_here(r)}  # fmt: skip
        run = worker_prefix(self.job) + RUN_RECORD
        stale = [key for key in left if key not in live and key != run]
        if not any(key.startswith(worker_prefix(self.job)) for key in live):
            stale.append(run)
        futures = [self.kv.write(key, None) for key in stale]  # a record renewed meanwhile is live: see above
        for key, future in zip(stale, futures, strict=True):
            try:
                future.result()
            except ValueError as e:
                raise storage_error("clear the work claims", key, self.url, e) from None

    def _delete_all(self) -> None:
        for prefix in (self.prefix, worker_prefix(self.job)):
            try:
                self.kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
            except ValueError as e:
                raise storage_error("clear the work claims", prefix, self.url, e) from None

    def tidy(self) -> None:
        """The end of a run whose every unit is done: deletes this job's claims (finished ones included: the next run
        would clear them first anyway) and worker records and, in a local folder, the empty ``claims/`` and
        ``workers/`` folders the file kvstore leaves behind."""
        self._delete_all()
        if "://" in self.url and not self.url.startswith("file://"):
            return  # object stores have no folders
        root = pathlib.Path(self.url.removeprefix("file://"))
        for prefix in (self.prefix, worker_prefix(self.job)):
            for folder in (root / prefix, (root / prefix).parent):
                try:
                    folder.rmdir()  # only when empty: another job's claims stay
                except OSError:
                    break

    # -- the worker record (engine.runtime.status) ----------------------------------------------------------------

    def register(self, total: int, done_at_start: int, opener: bool, what: str | None = None) -> None:
        """Writes this process's worker record (``total`` units in the run, ``done_at_start`` done when it planned)
        and starts renewing it; the opener of the run also writes the run record, once, with ``what`` a unit is
        (what ``status`` says beside the count, such as "blocks of up to 8 utterances of one language")."""
        self._total, self._done_at_start = int(total), int(done_at_start)
        if opener:
            run = {"job": self.job, "units": self._total, "done_at_open": self._done_at_start,
                   "opened": iso_utc(time.time()), "opened_unix": time.time()}  # fmt: skip
            if what:
                run["unit"] = what
            create_key(self.kv, worker_prefix(self.job) + RUN_RECORD, json.dumps(run, indent=1).encode(), self.url)
        missing = read_value(self.kv, self._record_key(), self.url).stamp.generation  # a new owner's key: absent
        with self._lock:
            self._write_record(WORKING, if_equal=missing)
            self._start_renewing()

    def count_done(self) -> None:
        """One more unit done by this process; its record says so within ``RECORD_EVERY`` seconds."""
        now = time.time()
        with self._lock:
            self.units_done += 1
            self._finished_at.append(now)
            while self._finished_at and self._finished_at[0] < now - RATE_WINDOW:
                self._finished_at.popleft()
            if now - self._recorded >= RECORD_EVERY:
                self._write_record(WORKING)

    def _rate(self) -> float:
        window = min(RATE_WINDOW, max(time.time() - self._started, 1.0))
        return len(self._finished_at) / window

    def _write_record(self, state: str, if_equal: bytes | None = None) -> bool:
        """This process's worker record, conditional on the generation it wrote last (``if_equal``: the first
        write's condition): once the run's end deleted the records (``tidy``), it is not written again. False: the
        write failed (the store could not be reached within --store_timeout, say)."""
        condition = self._record_generation if if_equal is None else if_equal
        if condition is None:
            return True
        now = time.time()
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "label": task_label(),
                  "job": self.job, "state": state, "started": iso_utc(self._started), "renewed": iso_utc(now),
                  "expires_unix": now + self.ttl, "ttl": self.ttl, "units_total": self._total,
                  "done_at_start": self._done_at_start, "units_done": self.units_done,
                  "taken_over": self.taken_over, "taken_from": dict(self._taken_from), "claimed": len(self._held),
                  "rate": self._rate()}  # fmt: skip
        key = self._record_key()
        try:
            stamp = self.kv.write(key, json.dumps(record, indent=1).encode(), if_equal=condition).result()
        except ValueError as e:
            log.warning("could not write the worker record %s (%s)", key, e)
            return False
        self._record_generation = stamp.generation or None  # a failed condition: the run's end removed it
        self._recorded = now
        return True

    def _record_key(self) -> str:
        return worker_prefix(self.job) + self.owner + ".json"

    def status_line(self) -> str:
        """Where the whole run stands, from the store's records (``engine.runtime.status``), this process's own
        written first."""
        with self._lock:
            self._write_record(WORKING)
        return run_status(self.kv, self.url, self.job).line(mine=self.units_done)

    def _start_renewing(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew_loop, name="babelgrid-claims", daemon=True)
            self._thread.start()

    def _record(self, unit: str, state: str = WORKING, **extra) -> bytes:
        now = time.time()
        record = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": self.job,
            "unit": unit,
            "state": state,
            "renewed": iso_utc(now),
            "expires_unix": now + self.ttl,
            **extra,
        }
        return json.dumps(record, indent=1).encode()

    def claim(self, unit: str) -> Claim | dict | None:
        """Takes ``unit``: a Claim when this process holds it now; the claim's record (a dict) when another process
        finished it in this run; None when another live process holds it."""
        key = self.key(unit)
        found = read_value(self.kv, key, self.url)
        holder = {} if found.state == "missing" else parse_record(found.value)
        problem = record_problem(holder) if holder else None
        if problem is not None:  # hand-edited or foreign: it holds the unit for nobody, so it is taken over
            log.warning("the work claim %s of %r is damaged (%s): taking it over", key, self.url, problem)
            holder = {}
        if holder.get("state") == FINISHED:
            return holder
        left = holder.get("expires_unix", 0.0) - time.time() if holder else 0.0
        if holder and left > 0 and not dead_here(holder):
            return None  # held by a live process (one found dead on this host is taken over at once)
        # Create-if-absent, or take over the expired claim: conditional on the generation read either way.
        try:
            stamp = self.kv.write(key, self._record(unit), if_equal=found.stamp.generation).result()
        except ValueError as e:
            if "No such file or directory" in str(e):
                # Process 0 ended the run and tidied the claims folder under this write (tidy's delete takes the
                # write's lock file too): every unit is done, so there is nothing to claim; the caller re-checks.
                log.info("the claims folder of %r went away under a claim of %s: the run is complete", self.url, unit)
                return None
            raise storage_error("write the work claim", key, self.url, e) from None
        if not stamp.generation:  # another process created it or took it over first
            return None
        if holder:
            self._took_over(unit, holder, left)
        return self._hold(unit, stamp.generation)

    def _took_over(self, unit: str, holder: dict, left: float) -> None:
        """Counts and logs a claim taken from another process, naming why: its expiry passed, or (``left`` > 0) its
        process is gone from this host. The holder's owner goes into this process's worker record at once
        (``taken_from``), so that ``status`` counts it dead now, not once its own record expires."""
        who = f"{holder.get('host')} pid {holder.get('pid')}"
        if left > 0:
            log.info("took over the claim of %s on %s (%r): its process no longer runs on this host (%.1f s of its "
                     "lease were left)", who, unit, self.url, left)  # fmt: skip
        else:
            log.info("took over the expired claim of %s on %s (%r; expired %.1f s ago)", who, unit, self.url, -left)
        self.taken_over += 1
        with self._lock:
            if isinstance(holder.get("owner"), str) and holder["owner"] != self.owner:
                self._taken_from[holder["owner"]] = time.time()
            self._write_record(WORKING)

    def _hold(self, unit: str, generation: bytes) -> Claim:
        claim = Claim(unit, generation)
        with self._lock:
            self._held[unit] = claim
            self._start_renewing()
        return claim

    def release(self, claim: Claim) -> None:
        """The unit is done (its markers are committed): deletes the claim if it is still this process's."""
        self._drop(claim, None)

    def finish(self, claim: Claim, **record) -> None:
        """The unit ended with items that cannot be done: rewrites its claim as finished, with ``record``."""
        self._drop(claim, self._record(claim.unit, FINISHED, **record))

    def _drop(self, claim: Claim, value: bytes | None) -> None:
        with self._lock:
            self._held.pop(claim.unit, None)
            if claim.lost:
                return
            try:
                write_value(self.kv, self.key(claim.unit), value, self.url, if_equal=claim.generation)
            except StoreError as e:
                if "No such file or directory" not in str(e):
                    raise
                # Process 0 ended the run and tidied the claims folder while this process released a claim it took
                # on a unit found done in its last round (as in ``claim``): the claim is gone with the folder.
                log.info("the claims folder of %r went away under the release of %s", self.url, claim.unit)

    def close(self) -> None:
        """Stops renewing; releases the claims still held (an error ended the work: others may take them at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = list(self._held.values())
        for n, claim in enumerate(held):
            try:
                self.release(claim)
            except StoreError as e:  # they expire instead
                # Each write waits out --store_timeout before it fails: an unreachable store held a job that had
                # already failed for minutes, one timeout per claim and one for the record (cluster-user probe).
                log.warning("could not release the work claim on %s: %s; the %d other claims it holds expire "
                            "after --claim_ttl, untried", claim.unit, e, len(held) - n - 1)  # fmt: skip
                return
        with self._lock:
            self._write_record(EXITED)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if not self._write_record(WORKING):
                    continue  # the store failed it: the claims are tried next round, not each for --store_timeout
                for claim in [c for c in self._held.values() if not c.lost]:
                    try:
                        stamp = self.kv.write(
                            self.key(claim.unit), self._record(claim.unit), if_equal=claim.generation
                        ).result()
                    except ValueError as e:
                        log.warning("could not renew the work claim on %s (%s); it and the others are tried again "
                                    "next round, and may expire", claim.unit, e)  # fmt: skip
                        break
                    if stamp.generation:
                        claim.generation = stamp.generation
                    else:
                        # This process stalled past the expiry and another took the unit: both finish it, and
                        # the writes are the same bytes. Only the taker releases the claim.
                        claim.lost = True
                        log.warning("the work claim on %s was taken over by another process", claim.unit)
            if self.shared and time.monotonic() - self._last_status >= STATUS_EVERY:
                self._last_status = time.monotonic()
                try:
                    log.info("%s", self.status_line())
                except StoreError as e:
                    log.warning("could not read where the run stands (%s)", e)


PREFER_WINDOW = 8  # units ahead in the order among which ``prefer`` may pick


def rounds(
    claims: WorkClaims,
    units: Sequence[str],
    is_done: Callable[[str], bool],
    prefer: Callable[[str], float] | None = None,
    elsewhere: Callable[[str], object] | None = None,
) -> Iterator[Iterator[Claim]]:
    """The work loop of one process over ``units`` (the same list, in the same order, on every process).

    Yields rounds; a round yields a Claim for each unit this process takes, in order, skipping units that are done
    (``is_done``, the store's own markers, checked again once claimed), finished or held by another process. The
    caller works on each claimed unit and releases (or finishes) its claim; it must consume a round to its end
    before the next starts. Rounds go on, ``claims.poll`` seconds apart when one claimed nothing, until no unit is
    held by another process: after a peer's death, its claims expire and a later round takes them.

    ``prefer(unit)``: how much this process would rather take ``unit`` now (seqsim: the share of its languages it
    holds already). The next unit tried is then the most preferred of the next ``PREFER_WINDOW`` untried ones, ties
    to the first: claims stay in order but for that window, so every process still walks the same list.
    ``elsewhere(unit)`` is called for each unit found done or finished by another process (a progress bar's count).
    """
    remaining = list(units)
    while remaining:
        state = {"held_by_others": [], "claimed": 0}
        yield _round(claims, remaining, is_done, state, prefer, elsewhere)
        if state["held_by_others"] and not state["claimed"]:
            log.info("waiting for %d work units held by other processes", len(state["held_by_others"]))
            time.sleep(claims.poll)
        remaining = state["held_by_others"]


def _in_order(units: Sequence[str], prefer: Callable[[str], float] | None) -> Iterator[str]:
    """``units`` in order, or, with ``prefer``, each time the most preferred of the next ``PREFER_WINDOW``."""
    if prefer is None:
        yield from units
        return
    pending = collections.deque(units)
    while pending:
        head = [pending[i] for i in range(min(PREFER_WINDOW, len(pending)))]
        scores = [prefer(unit) for unit in head]
        pick = max(range(len(head)), key=lambda i: (scores[i], -i))
        del pending[pick]  # within the window: O(PREFER_WINDOW)
        yield head[pick]


def _round(claims: WorkClaims, units, is_done, state: dict, prefer=None, elsewhere=None) -> Iterator[Claim]:
    for unit in _in_order(units, prefer):
        got = claims.claim(unit)
        if got is None:
            state["held_by_others"].append(unit)
        elif isinstance(got, Claim):
            if is_done(unit):  # another process did it and released its claim meanwhile
                claims.release(got)
                if elsewhere is not None:
                    elsewhere(unit)
                continue
            state["claimed"] += 1
            yield got
        elif elsewhere is not None:  # finished by another process in this run
            elsewhere(unit)
