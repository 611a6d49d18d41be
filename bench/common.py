"""What every benchmark program shares: the machine line, interleaved timing, the results file."""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import subprocess
import time


def machine() -> str:
    """CPU model, cores, OS, JAX version and platform, for the results file."""
    import jax

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informational only
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {platform.system()}; jax {jax.__version__} on {jax.devices()[0].platform}"


def interleaved(contenders: dict, repeats: int) -> dict:
    """Median seconds per contender, timed in rounds that run every contender once.

    On a shared machine a slow spell then hits every contender of that round alike, instead of
    all the repeats of whichever contender happened to be running.
    """
    for fn in contenders.values():
        fn()  # warm-up (compilation, allocator)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def record(path: pathlib.Path, section: str, text: str) -> None:
    """Replace (or add) the ``## <section>`` part of a markdown results file, leaving the other sections alone."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    head, sep, rest = old.partition(f"\n## {section}\n")
    tail = ""
    if sep:
        nxt = rest.find("\n## ")
        tail = rest[nxt:] if nxt >= 0 else ""
    path.write_text(f"{head.rstrip()}\n\n## {section}\n\n{text}\n{tail}")
