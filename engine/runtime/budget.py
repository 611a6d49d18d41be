"""Memory budgets: how many bytes of states one process of an all-pairs job may hold at once.

The seqsim job (every all-pairs measure) holds the languages of the layer it scores; with a budget it holds only
what fits, loading languages in tiles and splitting a pair too large for it into utterance blocks
(``engine.pipelines.seqsim.tiling.tiles``). ``--memory_budget`` (``RunOptions.memory_budget``, a size such as
``20GiB``) sets it; without it the budget comes from the machine:

- on CPU, where the states live in host memory: ``HOST_SHARE`` of the RAM this process may use (the smaller of the
  machine's RAM and its cgroup's memory limit), the rest left to the runtime, the kernels' working sets and the
  other processes of the host;
- on an accelerator, where they live in device memory: ``DEVICE_SHARE`` of the device's memory (its
  ``bytes_limit``); the kernels' blocks take their share of what is left free (``kernels.seqsim``).

A budget is per process: several processes on one host each hold their own (pass ``--memory_budget`` so that they
add up to the host's RAM).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from engine.runtime.options import ConfigError

HOST_SHARE = 0.5  # of host RAM, on CPU
DEVICE_SHARE = 0.5  # of an accelerator's memory
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


@dataclasses.dataclass(frozen=True)
class Budget:
    """``bytes`` a process may hold, and where the number came from (printed by the plan and the summary)."""

    bytes: int
    source: str


def host_memory() -> int:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower (a container, a batch
    scheduler's allocation)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = pathlib.Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@dataclasses.dataclass(frozen=True)
class Memory:
    """The memory a budget bounds: its ``bytes``, its ``name`` in messages, and the ``share`` of it a process takes
    without ``--memory_budget``."""

    bytes: int
    name: str
    share: float


def resolve_budget(asked: int | None, device=None) -> Budget:
    """``asked`` bytes (``--memory_budget``) when given, else the machine's default on ``device`` (default: the
    first JAX device); see the module docstring. A budget beyond the memory the states live in (``machine_memory``)
    is refused: a 40 GiB budget was accepted on a 23 GiB machine."""
    memory = machine_memory(device)
    if asked is not None:
        if asked > memory.bytes:
            raise ConfigError(
                f"--memory_budget {_gib(asked)} is more than the {_gib(memory.bytes)} of {memory.name}: give "
                f"--memory_budget of at most {_gib(memory.bytes)}, or leave it out for {memory.share:.0%} of it"
            )
        return Budget(int(asked), "--memory_budget")
    return Budget(int(memory.bytes * memory.share), f"{memory.share:.0%} of {memory.name}")


def machine_memory(device=None) -> Memory:
    """The memory the states of a process on ``device`` (default: the first JAX device) live in: an accelerator's
    (its ``bytes_limit``), or this process's RAM (``host_memory``) on CPU and on a backend that does not say."""
    import jax  # the job's process has JAX loaded already; a config (--help) does not need it

    device = device or jax.devices()[0]
    limit = None
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            limit = None
    if limit:
        return Memory(int(limit), f"the {device.platform} device's memory", DEVICE_SHARE)
    return Memory(host_memory(), "this machine's RAM", HOST_SHARE)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
