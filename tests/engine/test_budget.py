"""``--memory_budget`` against the memory it bounds (``engine.runtime.budget``): a budget beyond the machine is
refused before anything is allocated (a 40 GiB budget was accepted on a 23 GiB machine)."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from engine.runtime.budget import DEVICE_SHARE, HOST_SHARE, host_memory, resolve_budget
from engine.runtime.options import ConfigError

GIB = 2**30


@dataclasses.dataclass
class Accelerator:
    """A stand-in for a JAX GPU device with ``bytes_limit`` bytes of memory: nothing is allocated."""

    bytes_limit: int
    platform: str = "gpu"

    def memory_stats(self) -> dict:
        return {"bytes_limit": self.bytes_limit}


def test_a_budget_beyond_the_machines_ram_is_refused_on_cpu():
    cpu = jax.devices("cpu")[0]
    ram = host_memory()
    with pytest.raises(ConfigError) as refused:
        resolve_budget(ram + GIB, cpu)
    message = str(refused.value)
    assert "\n" not in message, message
    assert f"{(ram + GIB) / GIB:,.1f} GiB" in message and f"{ram / GIB:,.1f} GiB of this machine's RAM" in message
    assert "give --memory_budget of at most" in message, message
    assert resolve_budget(ram // 4, cpu).bytes == ram // 4  # within it: taken as asked
    assert resolve_budget(None, cpu).bytes == int(ram * HOST_SHARE)


def test_an_accelerator_budget_is_bounded_by_the_devices_memory_not_the_hosts():
    """On an accelerator the states live in device memory: 40 GiB is refused on a 24 GiB GPU whatever the host's
    RAM, and taken on an 80 GiB one."""
    with pytest.raises(ConfigError, match=r"40\.0 GiB is more than the 24\.0 GiB of the gpu device's memory"):
        resolve_budget(40 * GIB, Accelerator(24 * GIB))
    assert resolve_budget(40 * GIB, Accelerator(80 * GIB)).bytes == 40 * GIB
    assert resolve_budget(None, Accelerator(24 * GIB)).bytes == int(24 * GIB * DEVICE_SHARE)
