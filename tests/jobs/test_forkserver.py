"""The job tests' fork server (tests/jobs/forkserver.py): a job forked from it ends as the same job started as a fresh
``python -m`` does (exit status, stdout, stderr), and a job whose environment a preloaded library reads at import
starts fresh."""

import subprocess
import sys

from tests.jobs import forkserver
from tests.jobs.conftest import _FORKS, REPO, job_env


def fresh(job: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", f"jobs.{job}", *args]
    return subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)


def test_a_forked_job_ends_as_a_fresh_one(tmp_path):
    for args in (["--store", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], ["--no_such_flag"]):
        forked = _FORKS.run("seqsim", args, job_env(), 300)
        assert forked is not None, "no fork server in this environment"
        alone = fresh("seqsim", *args)
        assert (forked.returncode, forked.stdout, forked.stderr) == (alone.returncode, alone.stdout, alone.stderr)
        assert forked.returncode != 0 and forked.stderr
    assert _FORKS.run("seqsim", ["--helpshort"], job_env(), 300).stdout == fresh("seqsim", "--helpshort").stdout


def test_an_environment_read_at_import_starts_a_fresh_process():
    assert _FORKS.run("seqsim", ["--helpshort"], job_env({"JAX_ENABLE_X64": "1"}), 300) is None
    assert _FORKS.run("seqsim", ["--helpshort"], job_env({"BABELGRID_FAULT_DELAY": "x:1"}), 300) is not None
    assert forkserver.differs_at_import({"XLA_FLAGS": "a", "PATH": "x"}, {"PATH": "y"}) == ["XLA_FLAGS"]


def test_a_server_started_under_another_environment_is_replaced(monkeypatch):
    """A server started while a test had set an import-time variable (here a harmless TENSORSTORE_ one) is not kept
    once the variable is gone: the next job with the test process's own environment is forked again, not run fresh
    (CI, 2026-11-28: a server left from such a test made this file's first test find no fork server)."""
    monkeypatch.setenv("TENSORSTORE_BABELGRID_TEST", "1")
    assert _FORKS.run("seqsim", ["--helpshort"], job_env(), 300) is not None
    monkeypatch.delenv("TENSORSTORE_BABELGRID_TEST")
    assert _FORKS.run("seqsim", ["--helpshort"], job_env(), 300) is not None
