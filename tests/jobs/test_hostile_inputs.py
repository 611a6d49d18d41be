"""What a hostile or careless user hit (issue 82), each case refused before a model runs where it can be: matrix
names that collide, a value that broke the emitted Snakefile, tracebacks where one line belongs, a language given
twice, sizes bounded before anything is allocated or recorded, and the console script that could not run typology."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest
from jobs.studies.spec import StudyError, load_study
from tests.jobs.conftest import job_env
from tests.waits import patient

SHORT = 400  # characters: an error that names the problem, not the 3-million-item list it came from


def _study(folder: pathlib.Path, text: str, name: str = "study.yaml") -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``babelgrid ARGS`` through the console script `pip install -e .` installed: as a user runs it."""
    script = pathlib.Path(sys.executable).parent / "babelgrid"
    assert script.exists(), f"no console script {script}: pip install -e . makes it"
    return subprocess.run([str(script), *args], cwd=cwd, env=job_env(), capture_output=True, text=True,
                          timeout=patient(300))  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The error a job ended with: one line, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and len(lines[-1]) < 2 * SHORT, proc.stderr[-3000:]
    return lines[-1]


# -- F3: matrix names -----------------------------------------------------------------------------------------------

MATRIX = """
vars: {{out: out}}
matrix:
  {axes}
stages:
  - verify: {{location: "{{run}}/store"}}
"""


def test_matrix_names_are_joined_so_that_no_two_combinations_share_a_folder(tmp_path):
    """(a, b-c) and (a-b, c) were both a-b-c: 4 combinations ran as 3. Joined with '--', the 4 have 4 folders."""
    study = load_study(_study(tmp_path, MATRIX.format(axes="x: [a, a-b]\n  y: [b-c, c]")))
    assert sorted(study.combinations) == ["a--b-c", "a--c", "a-b--b-c", "a-b--c"]
    assert len({s.flags["location"] for s in study.stages}) == 4 == len(study.stages)


@pytest.mark.parametrize(
    ("axes", "said"),
    [
        ("x: [a--b, c]", "holds '--'"),  # the joiner inside a name
        ("x: [a-, c]\n  y: [d, e]", "ends with '-'"),
        ("x: [1, '1']", "lists one name twice"),  # both the name '1'
        ("x: [base, Base]", "would run in one folder"),  # one folder on a case-insensitive disk
        ("x: [a, A]\n  y: [b, c]", "would run in one folder"),
    ],
)
def test_matrix_names_that_would_share_a_folder_are_refused(tmp_path, axes, said):
    with pytest.raises(StudyError, match=said):
        load_study(_study(tmp_path, MATRIX.format(axes=axes)))


# -- F20: a Snakefile that parses whatever the values ----------------------------------------------------------------


def test_a_newline_in_a_set_value_is_refused(tmp_path, capsys):
    from jobs.studies.run import run_study

    spec = _study(tmp_path, "vars: {out: out}\nstages:\n  - verify: {location: '{out}/store'}\n")
    assert run_study([spec, "--set", "out=a\nb", "--emit", "snakefile"]) == 2
    err = capsys.readouterr().err
    assert "newline or another control character" in err and len(err.splitlines()) == 1, err


def test_the_emitted_snakefile_parses_whatever_the_names(tmp_path):
    """A study file whose name holds a newline, quotes, a backslash and braces (the Snakefile's comment line and its
    shell strings carry it), and matrix names whose rule names were one (a.b and a_b): snakemake reads the file and
    plans every rule. Before, a newline ended the string literal (and the comment line), and two rules shared a
    name: snakemake refused the file, after babelgrid had exited 0."""
    snakemake = pathlib.Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():  # the test extra installs it on Python >= 3.11; CI fails on this skip
        pytest.skip("snakemake is not installed (pip install 'snakemake>=9')")
    text = "vars: {out: out}\nmatrix:\n  x: [a.b, a_b]\nstages:\n  - verify: {location: '{run}/store'}\n"
    spec = _study(tmp_path, text, name='my "odd"\nstudy\\{x}.yaml')
    emit = _run("run", spec, "--set", "out=it's {here} $(true) é", "--emit", "snakefile", cwd=tmp_path)
    assert emit.returncode == 2 and "holds a brace, which Snakemake reads as a wildcard" in emit.stderr, emit.stderr
    emit = _run("run", spec, "--set", "out=it's {here} $(true) é", "--set", f"runs={tmp_path / 'runs'}", "--emit",
                "snakefile", cwd=tmp_path)  # fmt: skip
    assert emit.returncode == 0, emit.stderr
    (tmp_path / "Snakefile").write_text(emit.stdout)
    proc = subprocess.run([str(snakemake), "--snakefile", "Snakefile", "--dry-run", "--cores", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=patient(300))  # fmt: skip
    assert proc.returncode == 0, emit.stdout + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage_a_b_1_verify" in emit.stdout and "stage_a_b_1_verify_2" in emit.stdout, emit.stdout


# -- F19: one line, not a traceback ----------------------------------------------------------------------------------


def test_a_deeply_nested_study_is_refused_in_one_line(tmp_path):
    spec = _study(tmp_path, "vars: {out: " + "[" * 5000 + "]" * 5000 + "}\nstages: []\n")
    with pytest.raises(StudyError, match="nests deeper than 20 levels at line 1"):
        load_study(spec)


def test_a_study_file_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes("vars: {out: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(StudyError, match=r"is not UTF-8 text \(byte 15\)"):
        load_study(str(path))


def test_a_full_disk_under_runs_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """The stage completed (its job is stubbed: it exits 0), then writing its record fails with ENOSPC."""
    import engine.stores.kv
    import jobs.studies.run as run_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_module.subprocess, "call", lambda command: 0)
    monkeypatch.setattr(engine.stores.kv, "write_value", full)
    spec = _study(tmp_path, f"vars: {{out: {tmp_path / 'out'}}}\nstages:\n  - verify: {{location: '{{out}}/store'}}\n")
    assert run_module.run_study([spec]) == 1
    err = capsys.readouterr().err
    assert "completed, but its record could not be written" in err and "No space left on device" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_compile_cache_that_is_a_file_is_refused_in_one_line(worker_store, tmp_path, run_job):
    (tmp_path / "cache").write_text("not a folder")
    proc = run_job("seqsim", "--store", str(worker_store), "--out", str(tmp_path / "sim"), "--compile_cache",
                   str(tmp_path / "cache"), expect=1)  # fmt: skip
    assert "--compile_cache" in _one_line(proc) and "is a file" in _one_line(proc), proc.stderr[-3000:]
    assert not (tmp_path / "sim").exists()
