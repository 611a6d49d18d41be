"""Independent ``--worker`` processes of one command, started, killed and joined at chosen moments, as a cluster's
scheduler starts array tasks: what the worker tests and the launch-recipe tests share."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np
import soundfile as sf
import tensorstore as ts

from engine.data.audio import SAMPLE_RATE
from engine.runtime.status import run_status
from tests.jobs.conftest import REPO, job_env
from tests.waits import patient


def write_clips(root: pathlib.Path, langs, n: int, *, seed: int, texts: Mapping[str, str] | None = None) -> None:
    """``n`` noisy tones of 0.2-0.6 s per language in ``root/<lang>/utt<i>.wav``, with ``texts[lang] i`` beside."""
    rng = np.random.default_rng(seed)
    for lang in langs:
        (root / lang).mkdir(parents=True)
        for i in range(n):
            t = np.arange(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / lang / f"utt{i}.wav", x.astype(np.float32), SAMPLE_RATE)
            if texts:
                (root / lang / f"utt{i}.txt").write_text(f"{texts[lang]} {i}\n")


def start_worker(command: list[str], env: Mapping[str, str] | None = None, **popen) -> subprocess.Popen:
    """``command`` (a job's argv after ``python``) as its own process group, stdout and stderr together as text."""
    return subprocess.Popen(
        [sys.executable, *command], cwd=REPO, env=job_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, **popen,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 120, procs=()) -> None:
    """Polls ``condition`` until true; fails naming ``what`` (and the output of any of ``procs`` that ended)."""
    deadline = time.monotonic() + patient(seconds)
    while not condition():
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            outputs = "\n".join(p.communicate()[0] for p in ended)
            raise AssertionError(f"gave up waiting for {what}\n{outputs}")
        time.sleep(0.2)


def working(out: pathlib.Path, job: str) -> bool:
    """Whether a worker of ``job`` on ``out`` holds a claim or has done a unit."""
    return (
        any((out / "claims" / job).glob("*/*.json"))
        or any((out / "claims" / job).glob("*.json"))
        or (units_done(out, job) > 0)
    )


def units_done(out: pathlib.Path, job: str) -> int:
    """Units the workers of ``job`` on ``out`` have done so far, by their records (``engine.runtime.status``)."""
    try:
        kv = ts.KvStore.open({"driver": "file", "path": str(out) + "/"}).result()
        return sum(int(w.get("units_done", 0)) for w in run_status(kv, str(out), job).workers)
    except ValueError:
        return 0


def units_claimed(output: str) -> int:
    """The units a worker's summary says it claimed and did (``work units: N`` or seqsim's ``busy s, N units``)."""
    found = re.search(r"work units: (\d+)|busy [0-9.]+ s, (\d+) units", output)
    return 0 if found is None else int(found.group(1) or found.group(2))  # None: killed before its summary


def taken_over(output: str) -> int:
    return int(re.search(r"(\d+) taken over from other processes", output).group(1))


def staggered_run(command: list[str], out: pathlib.Path, job: str, *, kill: str, delay: str, gap: float = 1.0,
                  joining: int = 2):  # fmt: skip
    """The acceptance scenario of the workers issue: worker 1 starts (slowed by ``delay``, ``BABELGRID_FAULT_DELAY``,
    and SIGKILLed by ``kill``, ``BABELGRID_FAULT_KILL``, in the middle of a unit); once it works on a unit, workers 2
    and 3 start ``gap`` seconds apart; once worker 1 is dead, the last worker starts. Returns the outputs of workers
    1-4, after asserting that worker 1 was killed and the others exited 0. ``joining``: the workers started while
    worker 1 works (2: workers 2 and 3; 1: worker 2 alone, for a job whose units are the point, not the crowd, and
    the outputs are then those of workers 1, 2 and the last)."""
    slow = {"BABELGRID_FAULT_DELAY": delay}
    first = start_worker(command, {**slow, "BABELGRID_FAULT_KILL": kill, "BABELGRID_WORKER_LABEL": "worker 1"})
    wait_for(lambda: working(out, job) or first.poll() is not None, f"worker 1's first {job} claim")
    joined = []
    for n in range(2, 2 + joining):
        if joined:
            time.sleep(gap)
        joined.append(start_worker(command, {**slow, "BABELGRID_WORKER_LABEL": f"worker {n}"}))
    dead = first.communicate(timeout=patient(300))[0]
    assert first.returncode == -signal.SIGKILL, f"worker 1 was not killed:\n{dead}"
    last = start_worker(command, {**slow, "BABELGRID_WORKER_LABEL": f"worker {2 + joining}"})
    outputs = [dead]
    for proc in (*joined, last):
        outputs.append(proc.communicate(timeout=patient(300))[0])
        assert proc.returncode == 0, outputs[-1]
    return outputs


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a worker started by ``start_worker`` and everything it started."""
    os.killpg(proc.pid, signal.SIGKILL)
