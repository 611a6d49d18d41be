"""What a job checks of its inputs and takes of its output before it writes: no store it reads is being written
(``inputs_settled``), and the writer lease of its output (``output_lease``, for a job of one process)."""

from __future__ import annotations

import contextlib
import dataclasses

from engine.runtime.lease import WORKERS, StoreBusyError, WriterLease, live_writer
from engine.runtime.options import read_locations
from engine.stores.kv import open_kvstore


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
                continue
            who = "workers of " if holder.get("mode") == WORKERS else ""
            partial = ", or pass --allow_partial to read what is done" if hasattr(config, "allow_partial") else ""
            raise StoreBusyError(
                f"--{field.name} {location!r} is being written now by {who}{holder.get('job')} (host "
                f"{holder.get('host')!r}, pid {holder.get('pid')}, lease valid until {holder.get('expires')}), so what "
                f"{job} would read of it is incomplete. Wait until that run ends (`babelgrid status {location}` says "
                f"where it stands), then rerun{partial}; nothing was written"
            )


@contextlib.contextmanager
def output_lease(config, job: str):
    """``inputs_settled``, then the writer lease of ``config.run.out`` for the run: for a job of one process whose
    config module must not load JAX (challenge's)."""
    inputs_settled(config, job)
    _, kv = open_kvstore(config.run.out)
    with WriterLease(kv, config.run.out, job, break_lease=config.run.break_lease) as lease:
        yield lease
