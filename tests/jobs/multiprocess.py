"""Running a job as several local ``jax.distributed`` processes, as a multi-host run would."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(
    module: str, args, *, n: int = 2, env_extra=None, env_per_process=None, started=None
) -> list[subprocess.Popen]:
    """``python -m module *args`` as ``n`` processes of one run on CPU (stdout and stderr together, as text);
    ``env_per_process[i]``: variables for process i only; ``started``: the process ids started (default: all)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    env.update(env_extra or {})
    dist = [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={n}"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", module, *args, *dist, f"--process_id={i}"],
            env={**env, **((env_per_process or {}).get(i) or {})},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (range(n) if started is None else started)
    ]


def run_processes(module: str, args, *, n: int = 2, env_extra=None, timeout: float = 600) -> list[str]:
    """``python -m module *args`` as ``n`` processes of one run on CPU; asserts each exits 0, returns their output."""
    procs = start_processes(module, args, n=n, env_extra=env_extra)
    outputs = [p.communicate(timeout=patient(timeout))[0] for p in procs]
    for p, o in zip(procs, outputs, strict=True):
        assert p.returncode == 0, o
    return outputs
