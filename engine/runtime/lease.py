"""A writer lease per output store: one run writes into a store at a time.

Protocol (``lease.json`` at the store's root, any kvstore with conditional writes):

- **take**: create the key with a conditional write (``if_equal`` the missing generation), holding the owner (a
  random id), host, pid, job and an expiry time ``ttl`` seconds ahead. Of two runs racing, one write succeeds.
- **renew**: a thread rewrites the key every ``ttl / 3`` seconds with a new expiry, conditional on the generation it
  wrote last; if that fails, someone broke the lease, and the holder stops at its next check (``check``).
- **refuse**: a second run finding an unexpired lease of another owner is refused with ``StoreBusyError`` naming
  the holder, its expiry and how to break it.
- **stale**: a lease whose expiry has passed (its holder was killed, or its host died) is taken over by the next
  run, again conditionally on the generation read, so that two runs taking over a stale lease do not both win. A
  lease whose holder ran on this host and whose process is gone (killed) is stale at once: a rerun right after a
  kill needs no wait.
- **break**: ``break_lease=True`` (``--break_lease``) takes over an unexpired lease too: for a holder known to be
  dead before its expiry. Its writes, if it is in fact alive, are safe (the store's commit protocol makes every
  utterance all-or-nothing), but it will stop at its next renewal.
- **release**: the holder deletes the key at the end, conditionally on its own generation.

Multi-host runs share one lease: process 0 takes, renews and releases it; the others only write.

**Workers** (``--worker``, ``SharedLease``): any number of independent processes run the same command on one store,
with no coordinator. They share one lease whose record says ``mode: workers`` and holds the run's settings:

- the first worker to find no live lease takes it (the same conditional write) in state ``opening``: it creates the
  output and clears an earlier run's claims, then sets ``open``. It is the run's *opener*;
- a worker that finds a live ``workers`` lease of the same job joins: it waits while the lease is ``opening`` (the
  opener's creation is not finished), then compares its settings with the lease's and refuses a mismatch naming each
  differing setting with both values;
- every worker renews the lease (a read-modify-write), so it lives while any worker does; a worker that ends deletes
  the lease once no other worker's record is live (``engine.runtime.status``), and a worker that finds it deleted
  while it still works writes it again. A worker that finds no live lease opens the run again; the renewals of workers
  still at work leave its ``opening`` record as it is (joiners wait for it), and its ``open`` accepts a record that
  such a worker wrote meanwhile;
- a run without ``--worker`` is refused while the workers' lease is live, and workers are refused while a run without
  ``--worker`` holds the lease.

Object stores: TensorStore sends the conditions as the servers' own preconditions (S3 ``If-None-Match: *`` and
``If-Match: <etag>`` on PUT, GCS ``ifGenerationMatch``), which AWS S3, GCS and moto honour, so the protocol above holds
there as on a local disk. A server that ignores them (gcp-storage-emulator does; some S3-compatible stores do) is
found out when the lease is taken: a second conditional write on the generation the taker replaced must fail, and
there it succeeds. The lease then falls back to **write, settle, read back**: after writing, the taker waits
``SETTLE`` seconds and reads the key again, and holds the lease only if the owner read back is its own; a renewal
first reads the key and stops if another owner is there. This closes the race unless two takers' writes land more
than ``SETTLE`` seconds apart after both read the key as free; a warning says the store is in this mode.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import tensorstore as ts

from engine.errors import StoreError
from engine.runtime.status import LEASE, LEASE_FIELDS, dead_here, record_problem, run_status
from engine.stores.kv import UNCONDITIONAL_WORKERS, read_value, storage_error, warn_unconditional, write_value
from engine.stores.records import iso_utc, manifest_diffs, parse_record

DEFAULT_TTL = 120.0  # seconds; renewed every ttl / 3, so a run survives two missed renewals
SETTLE = 1.0  # seconds between writing and reading back the lease on a store that ignores conditional writes
JOIN_POLL = 1.0  # seconds between looks at the lease of a run whose first worker is still creating the output
WORKERS, OPENING, OPEN = "workers", "opening", "open"

log = logging.getLogger(__name__)


def _refuse_unwritable(kv: ts.KvStore, url: str) -> None:
    """After a conditional write of the lease failed: a StoreError when no lease is there at all, for the condition
    then failed on nothing (S3 answers so for a bucket that does not exist), not on another run's lease. Without it,
    jobs said that another run took the lease at the same moment, and workers retried for ever."""
    if read_value(kv, LEASE, url).state == "missing":
        raise StoreError(
            f"store {url!r}: its writer lease ({LEASE}) could not be written, and no other run's is there: the "
            "location refuses writes. Does the bucket exist, and may these credentials write to it?"
        )


class StoreBusyError(StoreError):
    """Another run holds the store's writer lease, or took it over from this one."""


class _Lease:
    """What both kinds of lease share: the store, the holder's identity and record, the renewal thread, the check."""

    shared = False  # shared by --worker processes (SharedLease): the opener clears only what no live one holds

    def __init__(self, kv: ts.KvStore, url: str, job: str, ttl: float, break_lease: bool):
        if ttl <= 0:
            raise ValueError(f"ttl must be positive seconds, got {ttl}")
        self.kv, self.url, self.job, self.ttl, self.break_lease = kv, url, job, float(ttl), break_lease
        self.owner = uuid.uuid4().hex
        self._generation: bytes | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self):
        self.take()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def take(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def _renew_loop(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raises StoreBusyError if the lease was broken or could not be renewed: stop writing."""
        if self._lost is not None:
            raise StoreBusyError(self._lost)

    def _holder(self, ttl: float | None = None, **extra) -> bytes:
        """This holder's record, renewed now, valid ``ttl`` seconds (default: the lease's), with ``extra`` fields."""
        now = time.time()
        ttl = self.ttl if ttl is None else ttl
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "job": self.job, **extra,
                  "renewed": iso_utc(now), "expires": iso_utc(now + ttl),
                  "expires_unix": now + ttl}  # fmt: skip
        return json.dumps(record, indent=1).encode()

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="babelgrid-lease", daemon=True)
        self._thread.start()

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class WriterLease(_Lease):
    """The writer lease of the store at ``url`` (see the module docstring); a context manager that takes, renews and
    releases it. Its holder opens the run it writes (``opener``; ``open`` has nothing to publish)."""

    opener = True

    def __init__(self, kv: ts.KvStore, url: str, job: str, *, ttl: float = DEFAULT_TTL, break_lease: bool = False):
        super().__init__(kv, url, job, ttl, break_lease)
        self.conditional = True  # False: the store ignores conditional writes (write, settle, read back)

    def _record(self) -> bytes:
        return self._holder()

    def take(self) -> None:
        """Takes the lease or raises StoreBusyError; starts renewing it."""
        found = read_value(self.kv, LEASE, self.url)
        if found.state != "missing":
            holder = holder_of(found, self.url)
            expires = holder.get("expires_unix", 0.0)
            said = _who(holder) if holder else "a damaged lease record"
            if expires > time.time() and holder.get("mode") != WORKERS and dead_here(holder):
                # Killed on this very host (a SIGKILL, an out-of-memory kill): no need to wait for the expiry.
                said += ", which no longer runs"
                expires = 0.0
            if expires > time.time() and not self.break_lease:
                workers = " (--worker processes; run this one with --worker to join them)"
                raise StoreBusyError(
                    f"store {self.url!r} is being written by another run"
                    f"{workers if holder.get('mode') == WORKERS else ''}: {holder.get('job')} on host "
                    f"{holder.get('host')!r}, pid {holder.get('pid')}, lease renewed {holder.get('renewed')} and "
                    f"valid until {holder.get('expires')}. Wait for it to finish; if that process is dead, wait "
                    f"until its lease expires, or rerun with --break_lease (the commit protocol keeps the store "
                    f"consistent either way)"
                )
            if expires > time.time():
                log.warning("breaking the unexpired writer lease of %s on %r (--break_lease)", said, self.url)
            else:
                log.info("taking over the writer lease of %s on %r", said, self.url)
        stamp = self._write(found.stamp.generation)
        if not stamp:
            _refuse_unwritable(self.kv, self.url)
            raise StoreBusyError(
                f"store {self.url!r}: another run took the writer lease at the same moment; only one may write"
            )
        # The generation just replaced is stale now: a server that honours conditions must refuse this write.
        if self._write(found.stamp.generation):
            self.conditional = False
            warn_unconditional(self.url, f"the writer lease falls back to write, settle {SETTLE:.1f} s, read back")
            time.sleep(SETTLE)
            holder = self._read_holder()
            if holder.get("owner") != self.owner:
                self._generation = None
                raise StoreBusyError(
                    f"store {self.url!r}: another run ({holder.get('job')} on host {holder.get('host')!r}, pid "
                    f"{holder.get('pid')}) took the writer lease at the same moment; only one may write"
                )
        self._start_renewing()

    def open(self) -> None:
        """Nothing to publish: no other process waits for an exclusive lease's holder (``SharedLease.open``)."""

    def release(self) -> None:
        """Stops renewing and deletes the lease if it is still this run's."""
        self._stop_renewing()
        with self._lock:
            if self._generation is not None and self._lost is None:
                try:
                    write_value(self.kv, LEASE, None, self.url, if_equal=self._generation)
                except StoreError as e:  # the run's work is done; an undeleted lease only expires later
                    log.warning("could not release the writer lease of %r: %s", self.url, e)
            self._generation = None

    def _write(self, generation: bytes) -> bool:
        with self._lock:
            try:
                stamp = self.kv.write(LEASE, self._record(), if_equal=generation).result()
            except ValueError as e:
                raise storage_error("write the writer lease", LEASE, self.url, e) from None
            if stamp.generation:  # a failed condition leaves the generation this run wrote last
                self._generation = stamp.generation
            return bool(stamp.generation)

    def _read_holder(self) -> dict:
        return holder_of(read_value(self.kv, LEASE, self.url), self.url)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.conditional and self._read_holder().get("owner") != self.owner:
                    renewed = False
                else:
                    renewed = self._write(self._generation)
            except StoreError as e:
                self._lost = f"the writer lease of {self.url!r} could not be renewed ({e}); stopping"
                return
            if not renewed:
                self._lost = f"the writer lease of {self.url!r} was broken by another run (--break_lease); stopping"
                log.error(self._lost)
                return


class SharedLease(_Lease):
    """The lease shared by the ``--worker`` processes of one run (module docstring, "Workers"); a context manager.

    ``settings``: what this worker's outputs depend on (``engine.runtime.runs.output_settings``); a joining worker
    must hold the same. ``opener`` says whether this worker opened the run; it calls ``open()`` once the output is
    created and an earlier run's claims are cleared, and the workers waiting to join then go on.

    ``opening_ttl`` (at most ``ttl``; the workers' ``--claim_ttl``): how long the record lives unrenewed while it
    says ``opening``, which the others wait on: an opener killed on another host holds them that long. Once open, a
    record lives ``ttl``, so that a worker that starts after the last live one died still joins the run and takes its
    claims over."""

    shared = True

    def __init__(self, kv: ts.KvStore, url: str, job: str, settings: dict, *, ttl: float = DEFAULT_TTL,
                 break_lease: bool = False, poll: float = JOIN_POLL, opening_ttl: float | None = None):  # fmt: skip
        super().__init__(kv, url, job, ttl, break_lease)
        self.opening_ttl = self.ttl if opening_ttl is None else min(float(opening_ttl), self.ttl)
        if self.opening_ttl <= 0:
            raise ValueError(f"opening_ttl must be positive seconds, got {opening_ttl}")
        self.settings = settings
        self.poll = poll
        self.opener = False
        self._state = OPEN

    def _record(self, state: str) -> bytes:
        ttl = self.opening_ttl if state == OPENING else self.ttl
        return self._holder(ttl, mode=WORKERS, state=state, settings=self.settings)

    def take(self) -> None:
        """Opens the run or joins it (class docstring); StoreBusyError when a run without --worker holds the lease,
        or workers of another job or other settings."""
        waited = False
        while True:
            found = read_value(self.kv, LEASE, self.url)
            holder = holder_of(found, self.url)
            live = holder.get("expires_unix", 0.0) > time.time()
            if live and holder.get("state") == OPENING and dead_here(holder):
                live = False  # its opener was killed on this host before it opened the run
            if live and not self.break_lease:
                self._refuse_unless_joinable(holder)
                if holder.get("state") == OPENING:
                    if not waited:
                        log.info("waiting for the worker that opens %r (%s pid %s) to create it", self.url,
                                 holder.get("host"), holder.get("pid"))  # fmt: skip
                        waited = True
                    time.sleep(self.poll)
                    continue
                log.info("joining the workers of %s on %r", self.job, self.url)
                break
            if live:
                log.warning("breaking the unexpired writer lease of %s on %r (--break_lease)", holder, self.url)
            elif holder:
                log.info("taking over the expired writer lease of %s on %r", holder.get("job"), self.url)
            if self._write(self._record(OPENING), found.stamp.generation):
                self.opener, self._state = True, OPENING
                log.info("opening the run of %s on %r as its first worker", self.job, self.url)
                if self._write(self._record(OPENING), found.stamp.generation):  # stale now: a server must refuse it
                    warn_unconditional(self.url, UNCONDITIONAL_WORKERS)
                break
            _refuse_unwritable(self.kv, self.url)  # else another worker opened it first: join it
        self._start_renewing()

    def _refuse_unless_joinable(self, holder: dict) -> None:
        if holder.get("mode") != WORKERS:
            raise StoreBusyError(
                f"store {self.url!r} is being written by a run started without --worker: {holder.get('job')} on "
                f"host {holder.get('host')!r}, pid {holder.get('pid')}, lease valid until {holder.get('expires')}. "
                "Workers join only workers: wait for it to finish, or stop it and start every process with --worker"
            )
        if holder.get("job") != self.job:
            raise StoreBusyError(
                f"store {self.url!r} is being written by workers of {holder.get('job')}, not {self.job}: write to "
                "another --out"
            )
        diffs = manifest_diffs(holder.get("settings") or {}, self.settings, sorted({*self.settings,
                               *(holder.get("settings") or {})}))  # fmt: skip
        if diffs:
            diffs = [d.replace("store has", "the running workers have") for d in diffs]
            raise StoreBusyError(
                f"store {self.url!r} is being written by workers of {self.job} with other settings: "
                f"{'; '.join(diffs)}. Every worker of a run runs the same command: give these settings, or write to "
                "another --out"
            )

    def open(self) -> None:
        """The opener has created the output and cleared an earlier run's claims: workers may join."""
        if not self.opener or self._state == OPEN:
            return
        self._state = OPEN
        with self._lock:
            generation = self._generation
            while not self._write(self._record(OPEN), generation):
                # Another worker wrote the record since: one still working from before (it found the lease deleted
                # by a worker that ended, and wrote it again) says the run is open, which is what this one publishes.
                # Only a run of another job or without --worker has taken it.
                found = read_value(self.kv, LEASE, self.url)
                holder = holder_of(found, self.url)
                if holder and (holder.get("mode") != WORKERS or holder.get("job") != self.job):
                    self._lost = (
                        f"the writer lease of {self.url!r} was taken by another run ({_who(holder)}) while this "
                        "worker opened it"
                    )
                    raise StoreBusyError(self._lost)
                generation = found.stamp.generation

    def release(self) -> None:
        """Stops renewing; deletes the lease if no other worker's record is live (``engine.runtime.status``)."""
        self._stop_renewing()
        if self._lost is not None:
            return
        try:
            found = read_value(self.kv, LEASE, self.url)
            holder = holder_of(found, self.url)
            if holder.get("mode") != WORKERS or holder.get("job") != self.job:
                return
            if self._state == OPEN and self._others_live():
                return
            write_value(self.kv, LEASE, None, self.url, if_equal=found.stamp.generation)
        except StoreError as e:  # the run's work is done; an undeleted lease only expires later
            log.warning("could not release the writer lease of %r: %s", self.url, e)

    def _others_live(self) -> bool:
        status = run_status(self.kv, self.url, self.job)
        return any(w.get("owner") != self.owner for w in status.live)

    def _write(self, value: bytes, generation: bytes | None) -> bool:
        try:
            stamp = self.kv.write(LEASE, value, if_equal=generation).result()
        except ValueError as e:
            raise storage_error("write the writer lease", LEASE, self.url, e) from None
        if stamp.generation:
            self._generation = stamp.generation
        return bool(stamp.generation)

    def _renew_loop(self) -> None:
        while not self._stop.wait((self.opening_ttl if self._state == OPENING else self.ttl) / 3) and self.renew():
            pass

    def renew(self) -> bool:
        """One renewal (the thread's, every ``ttl / 3`` s): False once another run took the lease (stop renewing)."""
        try:
            with self._lock:
                found = read_value(self.kv, LEASE, self.url)
                holder = holder_of(found, self.url)
                if holder and (holder.get("mode") != WORKERS or holder.get("job") != self.job):
                    self._lost = (
                        f"the writer lease of {self.url!r} was taken by another run ({holder.get('job')} on "
                        f"{holder.get('host')!r}, pid {holder.get('pid')}); stopping"
                    )
                    log.error(self._lost)
                    return False
                if _opening_elsewhere(holder, self.owner):
                    return True  # a new opener's record: rewriting it "open" would let joiners in before it opens
                # Renewed by whichever worker comes first; a lost race means another renewed it just now.
                self._write(self._record(self._state), found.stamp.generation)
        except StoreError as e:
            log.warning("could not renew the shared writer lease of %r (%s); it may expire", self.url, e)
        return True


def _opening_elsewhere(holder: dict, owner: str) -> bool:
    """Whether ``holder`` is another worker's live record in state ``opening``: that worker found no live lease (the
    last worker that ended deleted it while this one was between its records) and is opening the run again."""
    return (
        holder.get("state") == OPENING
        and holder.get("owner") != owner
        and holder.get("expires_unix", 0.0) > time.time()
        and not dead_here(holder)
    )


def holder_of(found, url: str) -> dict:
    """The lease record of a read (``read_value``): {} when there is none, and when it is damaged (not a JSON object,
    a field missing or of another type: ``engine.runtime.status.record_problem``). Its holder, if alive, cannot renew
    a record someone else rewrote (the renewal is conditional), so a damaged lease holds no run: the next run takes it
    over, conditionally on the generation read, as it takes over an expired one; readers read."""
    if found.state != "value":
        return {}
    holder = parse_record(found.value)
    problem = record_problem(holder, LEASE_FIELDS)
    if problem is not None:
        log.warning("the writer lease %s of %r is damaged (%s): taken as no lease", LEASE, url, problem)
        return {}
    return holder


def _who(holder: dict) -> str:
    """A lease holder in words: 'seqsim (host vm, pid 42)'."""
    return f"{holder.get('job')} (host {holder.get('host')!r}, pid {holder.get('pid')})"


def live_writer(kv: ts.KvStore, url: str) -> dict | None:
    """The writer lease of the store at ``url`` when a run holds it now (unexpired, and its holder not found dead on
    this host), else None: what a job that reads the store asks before it reads (``engine.runtime.runs``)."""
    holder = holder_of(read_value(kv, LEASE, url), url)
    if holder.get("expires_unix", 0.0) <= time.time():
        return None
    if holder.get("mode") != WORKERS and dead_here(holder):
        return None
    return holder
