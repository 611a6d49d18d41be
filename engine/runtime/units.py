"""The claimed-unit loop: how every job that shares its work between processes walks its work units.

encode (utterance blocks), seqsim ((layer, pair) matrices), align and decode (parts) and interp ((pair, layer) units)
run the same loop over ``engine.runtime.claims``::

    with UnitLoop(claims, lease, summary, bar) as loop:
        for claimed in loop.rounds(units, is_done):      # rounds until no unit is held by another process
            for claim in claimed:                        # a stop signal and the writer lease: checked before each unit
                ... compute and commit the unit's results ...
                loop.done(claim, progress=n)             # release the claim, count the unit, advance the bar

A unit is done when its results are committed; ``done`` releases its claim (or, with ``finished=...``, rewrites it as
finished with the items that could not be done, so that no other process of this run retries them). An error leaves
the claims held by this process to be released on exit (``WorkClaims.close``), so others may take them at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

from engine.runtime.claims import Claim, WorkClaims, rounds
from engine.runtime.compiles import CompileClock
from engine.runtime.parallel import is_process_zero
from engine.runtime.stops import check as check_stop

log = logging.getLogger(__name__)


class UnitLoop:
    """One process's walk over a job's claimed units (see the module docstring). ``summary`` is a ``RunSummary``:
    its ``units``, ``busy_seconds``, ``taken_over`` and compile counts are kept here; ``bar`` a progress bar
    (``engine.runtime.runs.progress_bar``), closed on exit; ``lease`` has ``check()``, raising once the run's writer
    lease is lost."""

    def __init__(self, claims: WorkClaims, lease, summary, bar):
        self.claims, self.lease, self.summary, self.bar = claims, lease, summary, bar
        self.t0 = time.perf_counter()
        self.clock = CompileClock()

    def __enter__(self) -> UnitLoop:
        self.claims.__enter__()
        self.clock.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None and self.claims.shared and self.summary.units:
                log.info("%s", self.claims.status_line())  # where the run stands as this process leaves it
            self.claims.__exit__(*exc)
            if exc[0] is None and is_process_zero():
                # Every unit is done (the rounds end only when no other process holds one): no claims/ left behind.
                self.claims.tidy()
        finally:
            self.clock.__exit__(*exc)
            self.bar.close()
            self.summary.taken_over = self.claims.taken_over
            self.summary.compile_seconds, self.summary.compiles = self.clock.seconds, self.clock.compiles
            self.summary.cache_hits = self.clock.cache_hits

    def rounds(
        self, units: Sequence[str], is_done: Callable[[str], bool], prefer: Callable[[str], float] | None = None,
        *, total: int | None = None, weight: Callable[[str], float] | None = None, what: str | None = None,
    ) -> Iterator[Iterator[Claim]]:  # fmt: skip
        """``engine.runtime.claims.rounds`` over ``units`` (``prefer``: see there), with the writer lease checked
        before each claimed unit is handed out (another run that broke the lease stops this one before it writes
        more). ``units``: those not done when this process planned its work, of ``total`` in the run (default: as
        many), which this process's worker record counts (``engine.runtime.status``). ``weight(unit)``: what the bar
        counts for a unit another process did (as ``done``'s ``progress`` for this one's), so that every worker's bar
        ends at the whole run, not at its own share. ``what``: what a unit is, in the plural, for ``status``."""
        total = len(units) if total is None else total
        self.claims.register(total, total - len(units), opener=self.lease.opener, what=what)
        if not units:
            log.info("nothing left to do: all %d work units of this run are done (by this process or others)", total)
        elsewhere = None if weight is None else (lambda unit: self.bar.update(weight(unit)))
        for claimed in rounds(self.claims, units, is_done, prefer, elsewhere):
            yield self._checked(claimed)

    def _checked(self, claimed: Iterator[Claim]) -> Iterator[Claim]:
        for claim in claimed:
            check_stop()  # a stop signal swallowed where it landed (engine.runtime.stops): obeyed before the next unit
            self.lease.check()
            yield claim

    def done(self, claim: Claim, *, progress: float = 1, finished: dict | None = None) -> None:
        """The unit's results are committed: releases its claim (or marks it finished with ``finished``, the record
        of what could not be done), counts it and advances the bar by ``progress``."""
        if finished:
            self.claims.finish(claim, **finished)
        else:
            self.claims.release(claim)
        self.claims.count_done()
        self.summary.units += 1
        self.summary.busy_seconds = time.perf_counter() - self.t0
        if progress:
            self.bar.update(progress)


def claimed_units(
    claims: WorkClaims, lease, summary, bar, units: Sequence[str], is_done: Callable[[str], bool], total: int,
    what: str | None = None,
) -> Iterator[str]:  # fmt: skip
    """The units of ``units`` this process claims, one at a time, through a ``UnitLoop``: a unit is counted done (its
    claim released) when the caller asks for the next one, so the caller commits its results before that. For jobs
    whose units are whole files written at once (neurons' counts and intervention passes). ``what``: see ``rounds``."""
    with UnitLoop(claims, lease, summary, bar) as loop:
        for claimed in loop.rounds(units, is_done, total=total, what=what):
            for claim in claimed:
                yield claim.unit
                loop.done(claim, progress=0)
