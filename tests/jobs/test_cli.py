"""Every job's command line as a user meets it: --help exits 0, shows the docstring's examples as written and marks the
required flags; no accelerator-plugin noise on a CPU run."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem not in ("__init__", "common"))
REQUIRED = {"encode": ["out"], "seqsim": ["store", "out"], "align": ["store", "out"], "retrieval": ["similarity"]}


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("job", JOBS)
def test_help_exits_0_and_marks_required_flags(job):
    proc = run("-m", f"jobs.{job}", "--help")
    assert proc.returncode == 0, proc.stderr
    doc = ast.get_docstring(ast.parse((REPO / "jobs" / f"{job}.py").read_text()))  # importing would define flags
    assert proc.stdout.startswith(doc.splitlines()[0])
    assert "python -m jobs." in proc.stdout, "the docstring's examples are shown"
    for name in REQUIRED.get(job, []):
        assert f"--{name}: (required)" in proc.stdout, f"--{name} not marked required:\n{proc.stdout}"
    if "\\\n" in doc:
        assert "\\\n" in proc.stdout, "an example continued with a backslash keeps its line break"


def test_missing_required_flag_names_it_and_no_tpu_noise(tmp_path):
    proc = run("-m", "jobs.seqsim", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "--store" in proc.stderr
    assert "Unable to initialize backend" not in proc.stderr
