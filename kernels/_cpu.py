"""Running jitted calls on every CPU core: XLA's CPU backend runs a sequential loop (``lax.scan``,
``while_loop``) on one core, so kernels whose work is such loops split it into pieces and wait for each piece's
call in its own thread of one shared pool.

Used inside ``kernels/`` only (``dtw``, ``ot_matrix``; ``cca`` and ``outliers`` re-export ``one_lapack_thread``);
results never depend on the number of workers.

``one_lapack_thread``: JAX's CPU decompositions (SVD, QR, eigh) call SciPy's OpenBLAS, whose thread pool waits for
every thread at each call. On a loaded machine a descheduled thread stalls every small call: 40 permutations of the
SVCCA null of one layer pair (n = 426) took 567 ms quiet and 17.0 s at load 8 on 2 cores (x30), against x4 for a
matmul; with one OpenBLAS thread, 539 ms quiet and 2.0 s at load 8 (x3.7). Small decompositions gain nothing from a
second thread, so the CCA measures run their many small ones under this limit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os

import jax
import threadpoolctl


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
    # The caller's transfer guard is its thread's: the pool's threads take it on, so that a call refused inline (as
    # on an accelerator, where one worker runs every item) is refused here too.
    guard = jax.config.jax_transfer_guard_host_to_device

    def one(item):
        with jax.transfer_guard_host_to_device(guard) if guard else contextlib.nullcontext():
            return jax.block_until_ready(run(item))

    return list(_pool(workers).map(one, items))


def one_lapack_thread() -> contextlib.AbstractContextManager:
    """Within it, the BLAS/LAPACK libraries of this process (SciPy's and NumPy's OpenBLAS, which JAX's CPU
    decompositions call) run on one thread each (module docstring)."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
