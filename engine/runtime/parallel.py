"""Run coordination across the processes of a ``jax.distributed`` run: a barrier, and which process writes.

The data-parallel encoder and its mesh are the models' (``engine.models.common.parallel``).
"""

from __future__ import annotations

import jax


def barrier(name: str) -> None:
    """Wait for every process of a ``jax.distributed`` run (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_process_zero() -> bool:
    """True on the process that creates shared outputs (manifests, arrays) and merges results."""
    return jax.process_index() == 0
