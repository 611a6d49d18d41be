"""Run coordination across the processes of a ``jax.distributed`` run: a barrier, and which process writes.

The data-parallel encoder and its mesh are the models' (``engine.models.common.parallel``).
"""

from __future__ import annotations

import itertools

import jax

# How long a process waits at a barrier for the others. Long, because process 0 may be creating a large output
# before it gets there (the similarity store of the full FLEURS grid: 5151 pairs' arrays, on an object store); a
# process that dies is reported to the others sooner by jax.distributed's heartbeats.
BARRIER_TIMEOUT_S = 3600
_barriers = itertools.count()  # every process passes the same barriers in the same order


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait for every process of a ``jax.distributed`` run (a no-op in a single process).

    The coordination service's barrier, as orbax uses it, not ``multihost_utils.sync_global_devices``: that one is
    a collective over the devices, whose first use on CPU sets up a Gloo context with a fixed 30 s deadline, so a
    process that waited longer than 30 s for process 0 failed ("Gloo context initialization failed:
    DEADLINE_EXCEEDED", measured with 102 languages on 2 processes). A barrier name serves once in the service, so
    each use gets a sequence number.
    """
    if jax.process_count() > 1:
        from jax._src import distributed  # the client orbax.checkpoint's multihost barrier uses

        client = distributed.global_state.client
        client.wait_at_barrier(f"babelgrid:{name}:{next(_barriers)}", int(timeout_s * 1000))


def is_process_zero() -> bool:
    """True on the process that creates shared outputs (manifests, arrays) and merges results."""
    return jax.process_index() == 0
