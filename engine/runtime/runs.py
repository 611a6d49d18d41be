"""Run plumbing shared by every job's library side: one way to create or check a run's manifest, to let process 0
create what every process then opens, to count what a run skipped, to show progress, to refuse inputs still being
written (``inputs_settled``) and to hold the output's writer lease (``job_lease``, ``output_run``, ``writer_lease``,
``output_lease``); and the dtype table (``engine.dtypes``).

A job's library function (``run_encode``, ``run_similarity``, ``run_align``, ...) follows one pattern, with
``engine.stores.kv.create_or_compare`` for its manifest::

    stored = process_zero_first("babelgrid-x-created", lambda: create_or_compare(kv, "x.json", manifest, url, ...))
    summary = MySummary()                     # a RunSummary: skips counted by reason
    bar = progress_bar(total, "x", "utt", config.progress)
    ... summary.skip("no_transcription", lang, uid) ...
    print(summary.report())
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import jax
from tqdm.auto import tqdm

from engine.errors import BabelgridError
from engine.runtime.claims import WorkClaims
from engine.runtime.lease import DEFAULT_TTL, WORKERS, SharedLease, StoreBusyError, WriterLease, live_writer
from engine.runtime.options import ConfigError, RunOptions, canonical_location, read_locations
from engine.runtime.parallel import barrier, is_process_zero
from engine.stores.kv import create_or_compare, open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import manifest_diffs

log = logging.getLogger(__name__)

SETTINGS = "manifest.json"  # an output folder's record of the settings its files were made with (output_run)

T = TypeVar("T")


def process_zero_first(name: str, create: Callable[[], T]) -> T:
    """``create()`` on process 0, a barrier named ``name``, then ``create()`` on every other process.

    For anything process 0 must create and the others must then open (a manifest, arrays): run alone, it is just
    ``create()``.
    """
    if is_process_zero():
        result = create()
    barrier(name)
    if not is_process_zero():
        result = create()
    return result


def open_claimed_run(name: str, claims, lease, kv, key: str, manifest: dict, url: str, **compare) -> dict:
    """The start of a run whose processes share parts through ``claims`` (``engine.runtime.claims.WorkClaims``),
    process 0 first (``process_zero_first``, barrier ``name``): the run's manifest at ``key`` created or compared
    with ``manifest`` (``create_or_compare``; ``compare``: its ``fields``, ``error``, ``what``), and by the process that
    opens the run (``lease.opener``: process 0, or the first ``--worker``) the claims of an earlier run cleared,
    under the writer lease and before any process claims (the barrier; workers wait for ``lease.open()``).
    Returns the stored manifest."""

    def create() -> dict:
        stored = create_or_compare(kv, key, manifest, url, **compare)
        if lease.opener:
            claims.clear(keep_live=lease.shared)
        return stored

    stored = process_zero_first(name, create)
    lease.open()
    return stored


@dataclasses.dataclass
class RunSummary:
    """What a run skipped, by reason: ``skipped[reason] = [(lang, id), ...]``. Jobs extend it with their counts."""

    skipped: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    units: int = 0  # work units this process claimed and did (engine.runtime.units)
    taken_over: int = 0  # of them, units taken from another process (its claim expired, or it died here)
    busy_seconds: float = 0.0  # from the start of the work to the end of this process's last unit
    compile_seconds: float = 0.0  # of the work, kernels traced, lowered and compiled or loaded (runtime.compiles)
    compiles: int = 0  # kernels compiled or loaded from the persistent cache during the work
    cache_hits: int = 0  # of them, loaded from the persistent compilation cache

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, reason: str, lang: str, uid: str) -> None:
        self.skipped.setdefault(reason, []).append((lang, str(uid)))

    def work_line(self, what: str = "units") -> str:
        """The claimed-unit loop's counts, one line."""
        line = (
            f"work units: {self.units} {what} claimed, busy {self.busy_seconds:.1f} s, {self.taken_over} taken over "
            "from other processes (claims expired, or holder dead)"
        )
        if self.compiles:
            line += f"; kernels: {self.compiles} compiled or loaded, {self.cache_hits} from the compilation cache"
        return line

    def skip_lines(self, shown: int = 5) -> list[str]:
        """One line per reason, with the count and the first ``shown`` items."""
        lines = []
        for reason, items in sorted(self.skipped.items()):
            names = ", ".join(f"{lang}/{uid}" for lang, uid in items[:shown])
            lines.append(f"  skipped {len(items)} ({reason}): {names}{' ...' if len(items) > shown else ''}")
        return lines


# -- progress for batch logs -----------------------------------------------------------------------------------------
# When stderr is not a terminal, a job prints one status line at a steady interval. A cluster job's log is a file: a
# progress bar there is either nothing (tqdm off) or thousands of carriage returns. ``StatusLines`` stands in for the
# bar with the same calls (``update``, ``set_postfix``, ``close``) and prints
#
#     encode: 120/240 utt (50.0%), 2.31 utt/s, elapsed 52 s, ETA 52 s, audio_s_per_s=6.5
#
# every ``interval`` seconds (``BABELGRID_STATUS_SECONDS``, default 30) while work advances, and once at the end.

STATUS_INTERVAL = 30.0  # seconds between two status lines
STATUS_ENV = "BABELGRID_STATUS_SECONDS"


def status_interval() -> float:
    """The interval in seconds: ``$BABELGRID_STATUS_SECONDS`` when set to a positive number, else 30."""
    try:
        value = float(os.environ.get(STATUS_ENV, STATUS_INTERVAL))
    except ValueError:
        return STATUS_INTERVAL
    return value if value > 0 else STATUS_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StatusLines:
    """A tqdm-like progress object that writes a status line to ``stream`` every ``interval`` seconds."""

    disable = False

    def __init__(self, total: float, desc: str, unit: str, interval: float | None = None, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = status_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0.0
        self.postfix: dict[str, str] = {}
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print(time.monotonic())

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:g}/{self.total:g} {self.unit}"
        share = f" ({100 * self.n / self.total:.1f}%)" if self.total else ""
        left = self.total - self.n
        eta = f", ETA {_duration(left / rate)}" if rate > 0 and left > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done}{share}, {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}{eta}{extra}"

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None = True) -> tqdm | StatusLines:
    """A tqdm bar over ``total`` items; a no-op when ``enabled`` is False, when there is nothing to do, or off process
    0. For ``enabled=None`` (auto) and stderr not a terminal (a batch log), a ``StatusLines`` instead: one status line
    every 30 s (``StatusLines``)."""
    active = bool(enabled is not False and total and is_process_zero())
    if active and enabled is None and not sys.stderr.isatty():
        return StatusLines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not active)


class _NoLease:
    """What processes other than 0 hold: they write under process 0's lease, and process 0 opens the run."""

    opener = False
    shared = False

    def open(self) -> None:
        pass

    def check(self) -> None:
        pass


# Settings that change how a worker computes, not a bit of what it writes: each worker may choose its own. Not
# --batch_size: XLA compiles another kernel for another batch shape, whose float sums may differ in their last bits.
WORKER_FREE = ("prefetch",)


@contextlib.contextmanager
def writer_lease(url: str, job: str, break_lease: bool = False, ttl: float = DEFAULT_TTL, *, worker: bool = False,
                 settings: dict | None = None, opening_ttl: float | None = None):  # fmt: skip
    """The writer lease of the store at ``url`` (``engine.runtime.lease``) for the run's duration, taken by process 0;
    yields an object whose ``check()`` raises once the lease is lost, ``opener`` says whether this process opens the
    run (creates its output and clears an earlier run's claims) and ``open()`` says it has. A second run on the same
    store is refused. ``worker``: the lease shared by ``--worker`` processes, who must hold the same ``settings``
    (``opening_ttl``: ``SharedLease``'s)."""
    if worker and jax.process_count() > 1:
        raise ConfigError(
            "--worker runs independent processes and jax.distributed joins them into one run: give one or the other"
        )
    if not worker and not is_process_zero():
        yield _NoLease()
        return
    _, kv = open_kvstore(url)
    if worker:
        lease = SharedLease(kv, url, job, settings or {}, ttl=ttl, break_lease=break_lease, opening_ttl=opening_ttl)
    else:
        lease = WriterLease(kv, url, job, ttl=ttl, break_lease=break_lease)
    with lease:
        yield lease


def inputs_settled(config, job: str) -> None:
    """Refuses (``StoreBusyError``, one line) to start ``job`` while a store or folder it reads (a field an ``option``
    marks ``reads``) is being written: its writer lease is live, so what the job would read is incomplete (a
    retrieval of a similarity store still computing, a decode of a store still encoding). A job that scores a partly
    written store on request (``allow_partial``) reads its store anyway."""
    for field in dataclasses.fields(config):
        reads, value = (field.metadata or {}).get("reads"), getattr(config, field.name)
        if field.name == "store" and getattr(config, "allow_partial", False):
            continue
        for location in read_locations(reads, value):
            holder = live_writer(open_kvstore(location)[1], location)
            if holder is None:
                if not hasattr(config, "allow_partial"):  # seqsim and retrieval refuse a partial input unless told
                    _say_if_partial(location, f"--{field.name}", job)
                continue
            who = "workers of " if holder.get("mode") == WORKERS else ""
            partial = ", or pass --allow_partial to read what is done" if hasattr(config, "allow_partial") else ""
            raise StoreBusyError(
                f"--{field.name} {location!r} is being written now by {who}{holder.get('job')} (host "
                f"{holder.get('host')!r}, pid {holder.get('pid')}, lease valid until {holder.get('expires')}), so what "
                f"{job} would read of it is incomplete. Wait until that run ends (`babelgrid status {location}` says "
                f"where it stands), then rerun{partial}; nothing was written"
            )


def _say_if_partial(location: str, flag: str, job: str) -> None:
    """A warning where ``location`` is a layer store with utterances not done: the job reads the done ones, and a
    person should know what was left out and why (the encode job's skips, or a run that stopped)."""
    try:
        reader = open_store(location)
        done = {lang: reader.done(lang) for lang in reader.languages}
    except BabelgridError:  # not a layer store (a similarity store, a folder), or one the job's own reads will name
        return
    n, total = sum(len(d) for d in done.values()), sum(int(d.sum()) for d in done.values())
    if total == n:
        return
    try:
        n_skipped, skips = reader.skips_named([lang for lang, d in done.items() if not d.all()])
        why = [f"{n_skipped} skipped by the encode job ({skips})"] * bool(n_skipped)
    except BabelgridError as e:  # a damaged skip record hides why (so no split into skipped and unfinished), not what
        n_skipped, why = n - total, [f"the encode job's record of its skips cannot be read: {e}"]
    why += [f"{n - total - n_skipped} not encoded yet"] * bool(n - total - n_skipped)
    log.warning("%s %s is partly encoded: %d of %d utterances not done (%s); %s reads the %d done ones", flag,
                location, n - total, n, "; ".join(why), job, total)  # fmt: skip


@contextlib.contextmanager
def output_lease(config, job: str):
    """``job_lease`` for a job of one process that runs no JAX (challenge's): ``inputs_settled``, then the writer
    lease of ``config.run.out``, taken without asking JAX which process this is (which would start its backend)."""
    inputs_settled(config, job)
    _, kv = open_kvstore(config.run.out)
    with WriterLease(kv, config.run.out, job, break_lease=config.run.break_lease) as lease:
        yield lease


@contextlib.contextmanager
def job_lease(config, job: str, ignore: tuple[str, ...] = ()):
    """``writer_lease`` of a job, from its ``config``, once its inputs are settled (``inputs_settled``): with
    ``--worker`` the lease shared by the workers, whose settings (``output_settings`` but ``WORKER_FREE`` and
    ``ignore``, and ``--matmul_precision``) must agree, and whose ``opening`` record (which the others wait on) lives
    ``--claim_ttl`` unrenewed, as their claims do, at most ``DEFAULT_TTL``: a worker killed while it opens the run holds
    the others that long, not 2 minutes whatever ``--claim_ttl`` said. Open, it lives ``DEFAULT_TTL``: a worker started
    after the last live one died joins the run and takes its claims over. The run's float32 products run at
    ``config.run.matmul_precision`` (``float32_products``), called from a job script or from Python alike."""
    inputs_settled(config, job)
    run: RunOptions = config.run
    if not run.worker:
        lease = writer_lease(run.out, job, run.break_lease)
    else:
        settings = {**output_settings(job, config, (*WORKER_FREE, *ignore)), "matmul_precision": run.matmul_precision}
        lease = writer_lease(run.out, job, run.break_lease, worker=True, settings=settings, opening_ttl=run.claim_ttl)
    with lease as held, float32_products(run.matmul_precision):
        yield held


@contextlib.contextmanager
def float32_products(precision: str):
    """JAX's float32 products at ``precision`` (``--matmul_precision``) for the block, then as they were: process-wide,
    as the job scripts set it, because ``jax.default_matmul_precision`` holds for the calling thread only and the jobs
    compute in threads too. Stores record the value (``StoreInfo.matmul_precision``, the similarity manifest's), so
    a run from Python computes what it records as a job does."""
    before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", precision)
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", before)


def work_claims(run: RunOptions, job: str, kv=None) -> WorkClaims:
    """The claims of a ``job`` run on ``run.out`` (``engine.runtime.claims``), logging where the run stands when this
    process is one of several."""
    kv = open_kvstore(run.out)[1] if kv is None else kv
    return WorkClaims(kv, run.out, job, ttl=run.claim_ttl, shared=run.worker or jax.process_count() > 1)


def output_settings(job: str, config, ignore: tuple[str, ...] = ()) -> dict:
    """What the files of a ``job`` run depend on: every field of its ``config`` but ``run`` and ``ignore`` (settings
    that change how, not what: a block size), the locations it reads (fields an ``option`` marks ``reads``) as
    absolute paths or URLs, under ``format: babelgrid-<job>``."""
    values = {}
    for field in dataclasses.fields(config):
        if field.name == "run" or field.name in ignore:
            continue
        value = getattr(config, field.name)
        located = (field.metadata or {}).get("reads")
        located = located and not callable(located)  # a spec naming what it reads (a dataset) is recorded as given
        if isinstance(value, tuple):
            value = [canonical_location(v) if located and v else v for v in value]
        elif located and value:
            value = canonical_location(value)
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)  # nested settings (seqsim's OT options)
        values[field.name] = value
    return {"format": f"babelgrid-{job}", **values}


@contextlib.contextmanager
def output_run(config, job: str, error: type[Exception], ignore: tuple[str, ...] = (), claims: tuple = (),
               prepare: Callable[[], None] | None = None, check: Callable[[dict], dict] | None = None,
               inputs: dict | None = None):  # fmt: skip
    """The start of a run that writes its files at the end (compare, probes, neurons), as every job's: before any work,
    the output's writer lease (a second run is refused, and an output that cannot be written fails at once: the lease
    is the run's first write; with ``--worker`` the lease the workers share, ``job_lease``), then its settings
    (``output_settings``) recorded in ``manifest.json``, or compared with those of the run that wrote the folder: a
    folder never mixes the files of two settings (``error`` names the difference). ``claims``: the ``WorkClaims`` of
    the run's claimed units, whose earlier run's claims the opener clears before workers join; ``prepare``: what else
    the opener does before they join (neurons: an intervention of other settings deleted); ``check``: a recorded
    manifest as today's settings would say it (a folder of an older version, ``create_or_compare``); ``inputs``:
    what the run reads, beyond its settings' paths (``provenance.store_inputs``: the layer store and its utterances
    done; a words folder's digests, a dataset's listing), recorded beside them and compared the same way, so that a
    rerun after they changed is refused instead of keeping or extending results of the old ones (a folder written
    before inputs were recorded is not compared). Yields the lease."""
    url = config.run.out
    settings = output_settings(job, config, ignore) | ({} if inputs is None else {"inputs": inputs})
    with job_lease(config, job) as lease:  # workers share every setting, the ignored ones too
        _, kv = open_kvstore(url)
        stored = create_or_compare(kv, SETTINGS, settings, url, fields=[f for f in settings if f != "inputs"],
                                   error=error, what=f"{job} output folder", check=check)  # fmt: skip
        then = (stored if check is None else check(stored)).get("inputs")  # as today's would say it, too
        diffs = [] if inputs is None or then is None else manifest_diffs(then, inputs, sorted({*then, *inputs}))
        if diffs:
            raise error(
                f"{job} output folder {url!r} was computed from other inputs than this run's: {'; '.join(diffs)}. "
                "Its results are not kept or extended with others: write to another --out (or delete it and run again)"
            )
        if lease.opener:
            for held in claims:
                held.clear(keep_live=lease.shared)
            if prepare is not None:
                prepare()
        lease.open()
        yield lease
