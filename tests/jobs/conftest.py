"""``run_job``: a job run the way a user runs it, through its flags, for every test of a job.

A job runs as ``python -m jobs.<job> ARGS`` from the checkout, with the checkout on ``PYTHONPATH`` and
``JAX_PLATFORMS=cpu``: a test's job never competes with the pytest process for an accelerator (JAX preallocates
most of a GPU's memory per process); ``env`` overrides either. Its output is captured, so stderr is no terminal and
the job draws no progress bar (``--progress`` defaults to off then): no ``--progress=false`` needed, which the jobs
without a progress bar (retrieval, challenge) would refuse.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping

import pytest
from absl import flags

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


def job_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the checkout importable and JAX on the CPU, then ``env`` over it."""
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **(env or {})}


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
