"""Device to host: each batch's states leave the device in one transfer into pinned host memory, started when the
batch is dispatched, and reach the store as NumPy views of those host buffers.

Why: ``np.asarray`` of a device array copies it into a fresh, unpinned host buffer, which ran at 1.9 GB/s on an H200
while the link does 25-50 GB/s (jax#21438, openxla/xla#12452: the DMA is fast, the host-side copy is slow). A
``device_put`` into the ``pinned_host`` memory kind is one DMA straight into page-locked memory, queued behind the
step that computes the batch, so batch k's copy overlaps batch k+1's compute; ``np.asarray`` of the host array is then
a view, no second copy (JAX's own checkpointing does the same, jax PR #22114). CPU devices have the memory kind too:
there the put is a host copy and the path is the same one, so CPU tests run it.
"""

from __future__ import annotations

import jax

HOST_MEMORY = "pinned_host"  # the memory kind the states are copied into


def has_host_memory(devices) -> bool:
    """Whether every device in ``devices`` can address ``HOST_MEMORY`` (the device's declared memories)."""
    return all(HOST_MEMORY in {m.kind for m in d.addressable_memories()} for d in devices)


def start_to_host(x):
    """Starts the copy of ``x`` (a ``jax.Array``, any sharding) into pinned host memory; returns the host array at
    once. ``np.asarray`` of it waits for the copy and views the pinned buffer. Where a device has no pinned host
    memory, the copy into ordinary host memory is started instead (``copy_to_host_async``) and ``x`` returned.
    Anything else (a NumPy array, an array already in host memory) is returned as it is."""
    if not isinstance(x, jax.Array) or x.sharding.memory_kind == HOST_MEMORY:
        return x
    if not has_host_memory(x.sharding.device_set):
        x.copy_to_host_async()
        return x
    return jax.device_put(x, x.sharding.with_memory_kind(HOST_MEMORY))
