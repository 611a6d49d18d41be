"""Running jitted calls on every CPU core: XLA's CPU backend runs a sequential loop (``lax.scan``,
``while_loop``) on one core, so kernels whose work is such loops split it into pieces and wait for each piece's
call in its own thread of one shared pool.

Used inside ``kernels/`` only (``dtw``, ``ot_matrix``); results never depend on the number of workers.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax


def cpu_workers() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a batch scheduler's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="babelgrid-kernels")


def on_cores(run, items, workers: int) -> list:
    """[run(item) for item in items], from the thread pool when workers > 1: each jitted call is waited for in its
    own thread, so on CPU the calls run on as many cores at once."""
    if workers <= 1:
        return [run(item) for item in items]
    return list(_pool(workers).map(lambda item: jax.block_until_ready(run(item)), items))
