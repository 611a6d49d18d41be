"""A job process without the start-up: one process per test process imports the heavy libraries once, then forks a
child for each ``python -m jobs.<job> ARGS`` the tests run.

A job started as a fresh ``python -m jobs.<job>`` spends its first seconds importing JAX, Flax, TensorStore, SciPy and
the rest before it reads a flag; the job tests start several hundred of them. Here the child of a fork starts with
those modules already imported, then runs the job exactly as ``-m`` does (``runpy.run_module(..., "__main__")``), in
its own process: its flags, signal handlers, exit status, stdout and stderr are its own, and nothing it does reaches
the server or the test process.

babelgrid's pipeline modules (``engine.pipelines.<job>.run`` and what they import: 0.3-0.9 s of a job's start after
the libraries, measured 2026-11-28) are preloaded too, never the ``jobs`` scripts (importing one defines its absl
flags). The one babelgrid module that reads the environment at import, ``engine.faults`` (``BABELGRID_FAULT_*``), is
imported again in the child once the job's environment is in place (its functions read its module's globals, so
every caller sees the job's settings). Importing them starts no JAX backend and no thread (``serve`` checks).

What a child cannot change is what the preloaded libraries read from the environment at import (JAX's
``JAX_*`` configuration, XLA's flags, the hub's ``HF_*``): ``differs_at_import`` names those variables, and
``tests/jobs/conftest.py`` runs a job whose environment differs in one of them as a real subprocess. JAX's backends
are never initialised here, so the children fork a process with no JAX threads (JAX warns at a fork only after that).

Protocol, on the server's stdin and stdout, one JSON line each way per job: ``{"module", "args", "env", "cwd",
"stdout", "stderr"}`` (the last two: files for the child's output), answered ``{"pid"}`` once forked and
``{"returncode", "cpu"}`` when it has exited (``cpu``: its CPU seconds, added to ``CHILD_CPU``).
``python -m tests.jobs.forkserver``; it ends when its stdin closes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

# The libraries every job imports, and the slow ones that many do. Nothing of babelgrid's own.
PRELOAD = (
    "numpy",
    "scipy.stats",
    "scipy.linalg",
    "jax",
    "jax.numpy",
    "flax.nnx",
    "optax",
    "tensorstore",
    "pyarrow.parquet",
    "soundfile",
    "safetensors.numpy",
    "huggingface_hub",
    "yaml",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "absl.app",
    "absl.flags",
    "absl.logging",
)

# babelgrid's own, under the libraries: every job's pipeline module (``run`` or the decoder), found at start.
OWN = "engine.pipelines"
REREAD = ("engine.faults",)  # read the environment at import: imported again in each child

# Environment variables a preloaded library reads when it is imported: a job whose environment differs from the
# server's in one of these must start as a fresh process.
IMPORT_TIME_PREFIXES = (
    "JAX_",
    "XLA_",
    "TF_",
    "HF_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "TENSORSTORE_",
    "MPL",
    "PYTHON",
    "LD_",
)


# The CPU seconds of the jobs this test process has run through a server: a forked job is the server's child, not the
# test process's, so tests/conftest.py's record of a test's CPU adds this to the children it waited for itself.
CHILD_CPU = [0.0]


def differs_at_import(server_env: dict[str, str], job_env: dict[str, str]) -> list[str]:
    """The variables read at a preloaded library's import whose value differs between the server and the job."""
    names = {name for name in {*server_env, *job_env} if name.startswith(IMPORT_TIME_PREFIXES)}
    return sorted(name for name in names if server_env.get(name) != job_env.get(name))


def _child(request: dict) -> None:
    """In the forked child: the job's environment, folder, output files and argv, then the job as ``-m`` runs it.
    Never returns."""
    import atexit
    import runpy
    import threading
    import traceback

    code: int = 1
    try:
        os.setpgid(0, 0)  # the test can stop the job and whatever it started as one group
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own streams, never closed)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.path[0] = request["cwd"]  # as `python -m` puts the working folder first
        for name in REREAD:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            threading._shutdown()  # what the interpreter does at exit: wait for the job's non-daemon threads
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _preload_own() -> None:
    """The pipeline modules of every job, if they import here without starting JAX's backends or a thread (a fork
    after either would hand the children a half-copied runtime); a module that fails to import is left to the job."""
    import pkgutil
    import threading

    from jax._src import xla_bridge

    try:
        package = importlib.import_module(OWN)
    except ImportError:
        return
    for info in pkgutil.walk_packages(package.__path__, OWN + "."):
        if info.name.endswith((".run", ".decoder")):
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 (the job imports it again and reports its own error)
                pass
    if xla_bridge._backends or threading.active_count() > 1:
        raise RuntimeError("a preloaded babelgrid module started JAX's backends or a thread: the fork server's "
                           "children would inherit them")  # fmt: skip


def serve() -> None:
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # an optional library missing here is imported (and missing) in the job as it would be anyway
    _preload_own()
    answers = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        answers.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime  # the job's CPU seconds (with what it waited for), for the test's record
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "cpu": cpu}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
