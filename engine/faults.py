"""Test-only fault injection: the one hook the kill-and-resume tests use to SIGKILL a job at a chosen point.

``BABELGRID_FAULT_KILL="<point>:<N>"`` makes the process SIGKILL itself when ``fault_point(point)`` has been reached
N times in this process (``count`` adds several at once). The points a job offers:

- ``before_part``: align, decode and interp, right before a part is written (the unit's claim is held, nothing
  written);
- ``after_matrix``: seqsim, right after a matrix of a (layer, pair) unit is written, before the unit's claim is
  released;
- ``after_block``: seqsim, right after a block of a split pair is staged, before its pair-layer may be committed;
- ``after_states``: encode, right after an utterance's states shard committed, before its length marker is queued
  (states on disk, utterance not done);
- ``after_marker``: encode, right after a length-marker write that brings this process's committed markers to N;
- ``before_part``, ``after_part``: heads and outliers, before a unit's part (a pass, a layer) is computed and after it
  is written (its claim held either way);
- ``before_count``, ``after_count``: neurons, before a language is counted and after its counts are written (its
  claim held either way);
- ``after_checkpoint``: sae, right after a training checkpoint is written (the layer's claim held, its files not);
- ``barrier``: a ``jax.distributed`` process, as it reaches a barrier (before the others can see it there).

``BABELGRID_FAULT_DELAY="<point>:<seconds>"`` makes every pass of ``point`` sleep that long: the worker tests slow a
job's units down so that workers started seconds apart overlap.

``BABELGRID_FAULT_HOLD="<point>:<path>"`` makes every pass of ``point`` wait while the file ``path`` exists: a test
that must look at a job while it holds a unit (its claim, its worker record) holds it there for as long as it takes,
however slow the machine, and lets it go by removing the file.

Read once, at import. Unset (every real run), a point costs three comparisons. Never set it outside tests.
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV = "BABELGRID_FAULT_KILL"
_point, _, _after = os.environ.get(ENV, "").partition(":")
_AFTER = int(_after or 0)
_delay_point, _, _delay = os.environ.get("BABELGRID_FAULT_DELAY", "").partition(":")
_DELAY = float(_delay or 0)
_hold_point, _, _hold = os.environ.get("BABELGRID_FAULT_HOLD", "").partition(":")
_count = 0
_lock = threading.Lock()


def fault_point(point: str, count: int = 1) -> None:
    """Counts ``count`` passes of ``point``; SIGKILLs this process when the configured point reaches its N."""
    global _count
    if _DELAY and point == _delay_point:
        time.sleep(_DELAY)
    while _hold and point == _hold_point and os.path.exists(_hold):
        time.sleep(0.05)
    if not _AFTER or point != _point:
        return
    with _lock:
        _count += count
        if _count >= _AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
