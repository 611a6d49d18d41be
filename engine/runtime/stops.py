"""A stop signal the job was asked to obey: noted here, so that it is obeyed even where Python swallowed it.

A job's handler for SIGTERM, SIGINT and SIGHUP (``jobs.common``) raises ``Interrupted`` wherever the main thread is.
Python runs that handler between any two bytecodes, including inside a garbage-collector callback or a ``__del__``
(JAX registers one: ``_xla_gc_callback``), where an exception is printed as "Exception ignored in ..." and dropped:
the job then ran on to the end of its work and exited 0 after a preemption (CI saw it: a SIGTERM'd seqsim worker
finished its units and exited 0). The handler therefore notes the signal here too; the claimed-unit loop
(``engine.runtime.units``) raises it again before it hands out the next unit, and the job's end
(``jobs.common``) exits 128 + the signal's number however the work ended.
"""

from __future__ import annotations

import signal

_pending: int | None = None


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main thread where the job is: it unwinds through the context managers that hold
    the writer lease and the work claims, so that they release them (a SIGTERM's default end left them for other
    workers to wait out until --claim_ttl, and status counted the dead worker as live). A KeyboardInterrupt, not an
    Exception: no job's ``except Exception`` takes it for a bad item to skip, and what cleans up after Ctrl-C cleans
    up after SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def note(signum: int) -> None:
    """Records that the job was asked to stop by ``signum`` (the first such signal is kept)."""
    global _pending
    if _pending is None:
        _pending = signum


def pending() -> int | None:
    """The stop signal this process received, if any."""
    return _pending


def check() -> None:
    """Raises ``Interrupted`` if a stop signal arrived: where a job may stop cleanly, between two units."""
    if _pending is not None:
        raise Interrupted(_pending)
