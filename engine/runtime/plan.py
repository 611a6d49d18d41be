"""Dry runs (``--plan``): the plan core. What a run will do and cost, printed before anything runs.

A job's plan (``engine.pipelines.encode.plan``, ``engine.pipelines.seqsim.plan``,
``engine.pipelines.stages.decode_plan``) counts the work from the dataset's headers or the layer store's lengths
(utterances, 30 s windows, frames), turns it into FLOPs and bytes per stage, and into seconds twice:

- **here**: from a calibration of a few seconds on this machine, running the stage's own computation at the run's
  sizes (an encoder block on one window of the model's width, the seqsim kernel on a block of random states, a
  decoder step's matmuls) and scaling its measured FLOP/s;
- **on a named device** (``DEVICES``): FLOPs over the device's peak FLOP/s times its measured fraction for the stage
  (``Device.encoder_efficiency``, ``seqsim_efficiency``; ``EFFICIENCY`` for the rest), or bytes over its memory
  bandwidth (or its measured device-to-host copy rate, for the states an encode copies out) when that is slower;
  the figures used are printed with the estimate.

This module holds what the plans share: the ``Plan`` and its ``Stage`` rows and their rendering, the devices, the
timer. Each family counts its own encoder's cost in ``engine.models.<family>.cost`` (Whisper's:
``engine.models.whisper.cost``). A job hands its plan function to ``jobs.common.define_config_flags(..., plan=...)``;
runtime imports no pipeline and no model.

FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax

from engine.runtime.devices import ASSUMED_EFFICIENCY, Device

EFFICIENCY = ASSUMED_EFFICIENCY  # a device's fraction of peak for the other matmul stages (compare, fits)
DECODE_EFFICIENCY = 0.1  # a decoder step is a few rows per matmul: far from peak on any accelerator


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    flops: float
    bytes_read: float
    bytes_written: float
    seconds_here: float
    seconds_device: float | None = None


@dataclasses.dataclass
class Plan:
    """What a run will do: counts, stages, memory, block sizes and the assumptions behind the numbers."""

    job: str
    counts: list[tuple[str, str]]
    stages: list[Stage]
    peak_memory: float  # bytes per device
    memory_lines: list[str]
    device: Device | None
    calibration: str
    assumptions: list[str]

    @property
    def seconds_here(self) -> float:
        return sum(s.seconds_here for s in self.stages)

    @property
    def seconds_device(self) -> float | None:
        return None if self.device is None else sum(s.seconds_device or 0.0 for s in self.stages)

    def render(self) -> str:
        lines = [f"plan: {self.job} (dry run; nothing was read from or written to the output)"]
        lines += [f"  {name}: {value}" for name, value in self.counts]
        head = f"  {'stage':<22}{'FLOPs':>11}{'read':>11}{'written':>11}{'here':>11}"
        lines += ["", head + (f"{'device':>11}" if self.device else "")]
        for s in self.stages:
            row = f"  {s.name:<22}{flops(s.flops):>11}{size(s.bytes_read):>11}{size(s.bytes_written):>11}"
            row += f"{duration(s.seconds_here):>11}"
            if self.device:
                # A stage the device model cannot estimate (dtw, ot) says so instead of showing 0.
                row += f"{'n/a' if s.seconds_device is None else duration(s.seconds_device):>11}"
            lines.append(row)
        total = Stage("total", *(sum(getattr(s, f) for s in self.stages) for f in ("flops", "bytes_read")), 0, 0)
        row = f"  {'total':<22}{flops(total.flops):>11}{size(total.bytes_read):>11}"
        row += f"{size(sum(s.bytes_written for s in self.stages)):>11}{duration(self.seconds_here):>11}"
        if self.device:
            row += f"{duration(self.seconds_device):>11}"
        lines += [row, "", f"  peak memory per device: {size(self.peak_memory)}"]
        lines += [f"  {line}" for line in self.memory_lines]
        lines += ["", f"  here: {self.calibration}"]
        if self.device:
            lines.append(
                f"  device: {self.device.describe()}; {EFFICIENCY:.0%} of peak FLOP/s assumed for other matmuls, "
                f"{DECODE_EFFICIENCY:.0%} for decoder steps"
            )
        lines += [f"  assumes: {a}" for a in self.assumptions]
        return "\n".join(lines)


def flops(x: float) -> str:
    return _scaled(x, ("", "K", "M", "G", "T", "P", "E"), 1000.0)


def size(x: float) -> str:
    return _scaled(x, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 1024.0)


def _scaled(x: float, units, base: float) -> str:
    i = 0
    while abs(x) >= base and i < len(units) - 1:
        x, i = x / base, i + 1
    return f"{number(x)} {units[i]}".strip()


def number(x: float) -> str:
    """``x`` to 3 significant digits, never in exponent form: ``1.5``, ``31.2``, ``900``, and ``1010`` (a size between
    1000 and 1024 of its unit, or 999.7 rounded), which ``:.3g`` printed as ``1.01e+03``."""
    text = f"{x:.3g}"
    return f"{x:.0f}" if "e" in text and abs(x) >= 1 else text


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{number(seconds * 1e3)} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 10_000 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / (365.25 * 86400):,.1f} y"  # CPU estimates of a whole-FLEURS grid: hours overflow the column


# Bytes/s a plan reads a local zarr store with zstd at (a measured order of magnitude): compare's, interp's and
# seqsim's --remove_language fit price their reads with it.
READ_RATE = 200e6
SAMPLE_WORDS = 32  # words embedded, phonemised and compared when a plan calibrates the text tools (interp, challenge)


def once(fn, *args) -> float:
    """Wall time of one call of ``fn(*args)``, compiles and first loads included."""
    started = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - started


def call_and_word(fn, sample: list[str]) -> tuple[float, float, float]:
    """(seconds of the first call beyond a later one: loading, compiling; seconds of a call; seconds a word) of
    ``fn(words)``, from a first call and a later one on one word, and one on ``sample``."""
    first = once(fn, sample[:1])
    one = once(fn, sample[:1])
    many = once(fn, sample)
    per_word = max(many - one, 0.0) / max(len(sample) - 1, 1)
    return max(first - one, 0.0), max(one - per_word, 0.0), per_word


def timed(fn, *args, repeats: int = 2) -> float:
    """Best wall time of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best
