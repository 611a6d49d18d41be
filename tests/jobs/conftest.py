"""``run_job``: a job run the way a user runs it, through its flags, for every test of a job.

A job runs as ``python -m jobs.<job> ARGS`` from the checkout, with the checkout on ``PYTHONPATH`` and
``JAX_PLATFORMS=cpu``: a test's job never competes with the pytest process for an accelerator (JAX preallocates
most of a GPU's memory per process); ``env`` overrides either. Its output is captured, so stderr is no terminal and
the job draws no progress bar (``--progress`` defaults to off then): no ``--progress=false`` needed, which the jobs
without a progress bar (retrieval, challenge) would refuse.
"""

from __future__ import annotations

import importlib
import json
import locale
import os
import pathlib
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

import pytest
from absl import flags

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


def job_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the checkout importable and JAX on the CPU, then ``env`` over it."""
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **(env or {})}


class _ForkServer:
    """This test process's ``tests/jobs/forkserver.py``, started at the first job (see its docstring): a job runs as
    a forked child of a process that has imported JAX and the other heavy libraries once, rather than as a fresh
    ``python -m``, which saves each job the seconds of those imports. ``BABELGRID_TEST_FORK=0`` turns it off."""

    def __init__(self):
        self.server: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.pending = b""

    def run(self, job: str, args: list[str], env: dict[str, str], timeout: float):
        """The job's ``CompletedProcess`` (``None`` when it must run as a fresh process instead)."""
        from tests.jobs import forkserver

        if os.environ.get("BABELGRID_TEST_FORK", "1") == "0":
            return None
        if self.server is not None and forkserver.differs_at_import(self.env, job_env()):
            # Started while an earlier test had changed the environment (a monkeypatch since undone): every later job
            # would differ from it at import and run fresh, so it ends (at its stdin's close) and a new one starts.
            self.server.stdin.close()
            self.server.wait(60)
            self.server = None
        if self.server is None or self.server.poll() is not None:
            self.env, self.pending = job_env(), b""
            self.server = subprocess.Popen(
                [sys.executable, "-m", "tests.jobs.forkserver"], cwd=REPO, env=self.env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
        if forkserver.differs_at_import(self.env, env):
            return None
        with tempfile.TemporaryDirectory(prefix="job-output-") as folder:
            out, err = pathlib.Path(folder, "stdout"), pathlib.Path(folder, "stderr")
            request = {"module": f"jobs.{job}", "args": args, "env": env, "cwd": str(REPO),
                       "stdout": str(out), "stderr": str(err)}  # fmt: skip
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            pid = self._answer(60)["pid"]
            try:
                answer = self._answer(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                self._answer(60)
                raise subprocess.TimeoutExpired([sys.executable, "-m", f"jobs.{job}", *args], timeout) from None
            code = answer["returncode"]
            forkserver.CHILD_CPU[0] += answer["cpu"]
            encoding = locale.getpreferredencoding(False)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", f"jobs.{job}", *args], code,
                out.read_text(encoding, errors="replace"), err.read_text(encoding, errors="replace"),
            )  # fmt: skip

    def _answer(self, timeout: float) -> dict:
        """The server's next line, read from its pipe unbuffered (a buffered reader could hold the second of two lines
        that arrived together, and ``select`` would then wait for it in vain)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.server.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise subprocess.TimeoutExpired("forkserver", timeout)
            chunk = os.read(self.server.stdout.fileno(), 65536)
            if not chunk:
                code = self.server.wait()
                raise RuntimeError(f"the test's fork server exited ({code}): rerun with BABELGRID_TEST_FORK=0")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)


class _ForkServers:
    """``_ForkServer``s for the threads of one test process: a server answers one job at a time on one pipe, so a job
    takes a server no other thread is using, and starts one when every server is busy (tests/jobs/test_remote.py runs
    its S3 and GCS chains side by side in threads). One shared server raced there: two threads started a server each
    at once, or read each other's answers, and a chain waited forever on an answer another thread had taken."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free: list[_ForkServer] = []

    def run(self, job: str, args: list[str], env: dict[str, str], timeout: float):
        with self.lock:
            server = self.free.pop() if self.free else _ForkServer()
        try:
            return server.run(job, args, env, timeout)
        finally:
            with self.lock:
                self.free.append(server)


_FORKS = _ForkServers()


def _run_job(
    job: str,
    *args: str,
    expect: int | None = 0,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
    in_process: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m jobs.<job> ARGS`` to its end; asserts the exit status is ``expect`` (``None``: any, the caller
    looks). ``in_process``: parse the flags and call the job's ``main()`` in this process instead, sharing its compiled
    kernels and ``monkeypatch``; stdout and stderr are then left to ``capsys`` (``None`` here), ``env`` cannot apply,
    and only one job module can live in a pytest process (the jobs define flags of the same names)."""
    command = [sys.executable, "-m", f"jobs.{job}", *args]
    if in_process:
        if env:
            raise ValueError(f"run_job({job!r}, in_process=True) cannot set env {sorted(env)}: run it in a subprocess")
        module = importlib.import_module(f"jobs.{job}")
        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS([job, *args])
            proc = subprocess.CompletedProcess(command, module.main(), None, None)
        finally:
            flags.FLAGS.unparse_flags()
    else:
        proc = _FORKS.run(job, list(args), job_env(env), patient(timeout))
        if proc is None:  # an environment the preloaded libraries would read otherwise: a fresh process
            proc = subprocess.run(
                command, cwd=REPO, env=job_env(env), capture_output=True, text=True, timeout=patient(timeout)
            )
    if expect is not None:
        assert proc.returncode == expect, (
            f"jobs.{job} exited {proc.returncode}, expected {expect}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def run_job():
    return _run_job


@pytest.fixture(scope="session")
def whisper_words(fleurs_dir, run_job, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    """jobs.align's output (``<lang>/words.parquet``) on a tiny-Whisper store of tests/jobs/test_families.py's clips:
    two translation pairs, fr and pt, ids ``a`` and ``b``. interp reads these Whisper-aligned words on the other
    families' stores of the same clips (the wav2vec2 and HuBERT stores there, the OWSM store of test_owsm.py), once
    per session."""
    from tests.jobs.test_families import family_clips

    root = tmp_path_factory.mktemp("whisper-words")
    (root / "clips").mkdir()
    clips = family_clips(fleurs_dir, root / "clips")
    whisper_store, words = str(root / "whisper-store"), root / "words"
    run_job("encode", "--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--out", whisper_store)
    run_job("align", "--store", whisper_store, "--model", str(tiny_model_dir), "--out", str(words))
    return words


# -- the independent-worker tests (test_workers.py, test_recipes.py) share these ---------------------------------------

WORKER_LANGS = ("de", "en", "es")
WORKER_TEXTS = {"de": "guten tag", "en": "good morning", "es": "buenos dias"}


@pytest.fixture(scope="module")
def worker_clips(tmp_path_factory) -> pathlib.Path:
    """8 noisy tones of 0.2-0.6 s per language of ``WORKER_LANGS``, with transcripts."""
    from tests.jobs.workers import write_clips

    root = tmp_path_factory.mktemp("worker-clips")
    write_clips(root, WORKER_LANGS, 8, seed=11, texts=WORKER_TEXTS)
    return root


@pytest.fixture(scope="module")
def worker_store(worker_clips, tiny_whisper, tmp_path_factory) -> pathlib.Path:
    """A layer store of ``worker_clips``, every layer of the tiny model, encoded in this process."""
    from engine.models.whisper.encoder import WhisperEncoder
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.runtime.options import configure

    out = tmp_path_factory.mktemp("worker-store") / "store"
    run_encode(configure(EncodeConfig, out=str(out), dataset=f"folder:{worker_clips}", progress=False),
               encoder=WhisperEncoder(tiny_whisper))  # fmt: skip
    return out


def seal(path: pathlib.Path) -> pathlib.Path:
    """Writes the digest file a babelgrid output carries (``<file>.sha256``) beside a file a test wrote by hand in
    one's place (a challenge folder's CSV, a retrieval folder's table): readers refuse one without it."""
    from engine.stores.integrity import DIGEST_SUFFIX, digest_line

    path.with_name(path.name + DIGEST_SUFFIX).write_bytes(digest_line(path.read_bytes(), path.name))
    return path
