"""What one encoder step holds in memory: the encode plan's peak (``--plan``), and the bound it puts on
``--batch_size`` before a run creates anything.

A step holds the encoder's weights, a batch of input windows, one block's activations (its projections and
feed-forward, the f32 scores of every head) and every stored layer of the batch until it is copied to the host.
Every family's windows are counted by its ``Encoder.cost`` of the full window, the most a batch pads to (Whisper's:
a 30 s log-mel window, its ``EncoderCost.input_bytes``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from engine.models.interface import WINDOW_SECONDS, EncoderCost
from engine.runtime.options import ConfigError
from engine.runtime.plan import size

SAFE_SHARE = 0.9  # of the memory there is, what a step may take (the rest: XLA's workspace, the host threads)
WINDOW_SAMPLES = WINDOW_SECONDS * 16000


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of one encoder step: ``weights`` once, ``per_window`` for each window of the batch."""

    weights: float
    per_window: float

    def peak(self, batch_size: int) -> float:
        return self.weights + batch_size * self.per_window

    def largest_batch(self, limit: float) -> int:
        """The most windows whose step fits in ``SAFE_SHARE`` of ``limit`` bytes (0: not even one)."""
        return max(0, int((SAFE_SHARE * limit - self.weights) // self.per_window))


def step_memory(*, params: int, input_bytes: float, frames: int, embed: int, heads: int, layers: int,
                compute_dtype: str) -> StepMemory:  # fmt: skip
    cbytes = jnp.dtype(compute_dtype).itemsize
    act = frames * embed * 8 * cbytes + heads * frames * frames * 4
    return StepMemory(float(params * cbytes), float(input_bytes + act + layers * frames * embed * 4))


def family_step(cost: EncoderCost, samples: int, embed: int, layers: Sequence[int], compute_dtype: str) -> StepMemory:
    """A family's step on windows of ``samples`` samples, ``cost`` its ``Encoder.cost(samples)``."""
    return step_memory(params=cost.params, input_bytes=cost.input_bytes or samples * 4, frames=cost.frames, embed=embed,
                       heads=cost.n_head, layers=len(layers), compute_dtype=compute_dtype)  # fmt: skip


def model_step(model, layers: Sequence[int], compute_dtype: str) -> StepMemory:
    """The step of a loaded ``Encoder`` (``engine.models.interface``) on full windows."""
    return family_step(model.cost(model.window_samples), model.window_samples, model.embed, layers, compute_dtype)


def available_memory() -> tuple[float, str, bool]:
    """(bytes, what they are, whether per device): an accelerator's own memory, else the host's available memory
    (``MemAvailable``: free and reclaimable), which a CPU run's every device shares."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory", True
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024.0, "available host memory", False
    except (OSError, StopIteration, ValueError):
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free host memory", False


def check_batch_size(model, layers: Sequence[int], compute_dtype: str, batch_size: int) -> None:
    """Refuses a ``batch_size`` whose step does not fit (``SAFE_SHARE`` of ``available_memory``), naming the largest
    that does: before the run creates anything, rather than an allocation failure once the store exists."""
    step = model_step(model, layers, compute_dtype)
    limit, what, per_device = available_memory()
    devices = jax.local_device_count() if per_device else 1
    windows = math.ceil(batch_size / devices)
    if step.peak(windows) <= SAFE_SHARE * limit:
        return
    largest = step.largest_batch(limit) * devices
    way_out = f"pass --batch_size {largest} or less" if largest else "use a machine with more memory"
    raise ConfigError(
        f"batch_size {batch_size} needs about {size(step.peak(windows))} per encoder step ({windows} windows of "
        f"input, one block's activations and the {len(layers)} stored layers, as --plan counts), more than "
        f"{SAFE_SHARE:.0%} of the {size(limit)} of {what}: {way_out}"
    )
