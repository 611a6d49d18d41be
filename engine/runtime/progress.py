"""Progress for batch logs: when stderr is not a terminal, a job prints one status line at a steady interval.

A cluster job's log is a file: a progress bar there is either nothing (tqdm off) or thousands of carriage returns.
``StatusLines`` stands in for the bar with the same calls (``update``, ``set_postfix``, ``close``) and prints::

    encode: 120/240 utt (50.0%), 2.31 utt/s, elapsed 52 s, ETA 52 s, audio_s_per_s=6.5

every ``interval`` seconds (``BABELGRID_STATUS_SECONDS``, default 30) while work advances, and once at the end.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_INTERVAL = 30.0  # seconds between two status lines
ENV = "BABELGRID_STATUS_SECONDS"


def status_interval() -> float:
    """The interval in seconds: ``$BABELGRID_STATUS_SECONDS`` when set to a positive number, else 30."""
    try:
        value = float(os.environ.get(ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StatusLines:
    """A tqdm-like progress object that writes a status line to ``stream`` every ``interval`` seconds."""

    disable = False

    def __init__(self, total: float, desc: str, unit: str, interval: float | None = None, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = status_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0.0
        self.postfix: dict[str, str] = {}
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print(time.monotonic())

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n:g}/{self.total:g} {self.unit}"
        share = f" ({100 * self.n / self.total:.1f}%)" if self.total else ""
        left = self.total - self.n
        eta = f", ETA {_duration(left / rate)}" if rate > 0 and left > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done}{share}, {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}{eta}{extra}"

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
