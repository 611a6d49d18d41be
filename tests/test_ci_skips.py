""".ci/check_skips.py, the CI step that fails on a skip the allow-list does not name, on planted junit reports."""

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_skips", REPO / ".ci" / "check_skips.py")
check_skips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_skips)

# What `pytest -o junit_family=xunit1 --junitxml` writes for a module skipped at collection, a passing test, a
# skipped parametrized case, a skipped method and an xfail.
REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="0"
failures="0" skipped="4" tests="5">
<testcase classname="" name="tests.engine.test_ct2" file="tests/engine/test_ct2.py" time="0.000">
  <skipped message="collection skipped">('tests/engine/test_ct2.py', 2, 'Skipped: no ctranslate2')</skipped></testcase>
<testcase classname="tests.sub.test_a" name="test_ok" file="tests/sub/test_a.py" line="1" time="0.004" />
<testcase classname="tests.sub.test_a" name="test_p[2]" file="tests/sub/test_a.py" line="2" time="0.000">
  <skipped type="pytest.skip" message="no two">tests/sub/test_a.py:5: no two</skipped></testcase>
<testcase classname="tests.sub.test_a.TestC" name="test_m" file="tests/sub/test_a.py" line="6" time="0.000">
  <skipped type="pytest.skip" message="needs a GPU">tests/sub/test_a.py:7: needs a GPU</skipped></testcase>
<testcase classname="tests.sub.test_a" name="test_x" file="tests/sub/test_a.py" line="9" time="0.000">
  <skipped type="pytest.xfail" message="known bug" /></testcase>
</testsuite></testsuites>
"""
SKIPPED = ["tests/engine/test_ct2.py", "tests/sub/test_a.py::test_p[2]", "tests/sub/test_a.py::TestC::test_m"]


def _write(tmp_path, report=REPORT, allowed=""):
    (tmp_path / "junit.xml").write_text(report)
    (tmp_path / "allowed.txt").write_text(textwrap.dedent(allowed))
    return tmp_path / "junit.xml", tmp_path / "allowed.txt"


def test_every_skip_and_xfail_is_reported_by_its_pytest_id(tmp_path):
    report, _ = _write(tmp_path)
    n, skips = check_skips.skipped(report)
    assert n == 5
    assert [t for t, _ in skips] == [*SKIPPED, "tests/sub/test_a.py::test_x"]
    assert skips[-1][1] == "xfail: known bug" and skips[2][1] == "skip: needs a GPU"


def test_unlisted_skips_fail_and_listed_ones_pass(tmp_path):
    report, allowed = _write(tmp_path)
    passed, lines = check_skips.check(report, allowed)
    assert not passed and sum(line.startswith("NOT ALLOWED") for line in lines) == 4
    assert lines[-1].startswith("5 tests, 4 skipped, 4 of them not in")
    allow = """
        # comment
        tests/engine/test_ct2.py  the CT2 parity needs ctranslate2
        tests/sub/test_a.py::test_p[2]  an exact id, brackets and all
        tests/sub/test_a.py::TestC::*  no GPU in CI
        tests/sub/test_a.py::test_x  the known bug
        tests/gone.py::*  stale
        """
    report, allowed = _write(tmp_path, allowed=allow)
    passed, lines = check_skips.check(report, allowed)
    assert passed, lines
    assert "allowed      tests/sub/test_a.py::TestC::test_m  (skip: needs a GPU; allowed: no GPU in CI)" in lines
    assert any(line.startswith("note:") and "tests/gone.py::*" in line for line in lines)
    # allowing one skip does not allow the others
    report, allowed = _write(tmp_path, allowed="tests/sub/test_a.py::TestC::*  no GPU in CI\n")
    assert check_skips.main(["check_skips", str(report), str(allowed)]) == 1


def test_unusable_reports_and_allow_lists_fail_with_the_fix(tmp_path, capsys):
    report, allowed = _write(tmp_path, allowed="tests/sub/test_a.py::test_p[2]\n")
    with pytest.raises(check_skips.CheckError, match="has no reason"):
        check_skips.check(report, allowed)
    with pytest.raises(check_skips.CheckError, match="run `make test`"):
        check_skips.check(tmp_path / "missing.xml", allowed)
    report, allowed = _write(tmp_path, report=REPORT.replace(' file="tests/sub/test_a.py"', ""))
    with pytest.raises(check_skips.CheckError, match="junit_family=xunit1"):
        check_skips.check(report, allowed)
    report, allowed = _write(tmp_path, report='<testsuites><testsuite tests="0" /></testsuites>')
    assert check_skips.check(report, allowed)[0] is False
    assert check_skips.main(["check_skips", str(tmp_path / "missing.xml"), str(allowed)]) == 1
    assert "run `make test`" in capsys.readouterr().err


def test_ids_match_what_pytest_itself_reports(tmp_path):
    """A real pytest run writes the report; the checker names its skips as pytest's own -rs summary does."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text(
        textwrap.dedent(
            """
            import pytest
            @pytest.mark.parametrize("x", [1, 2])
            def test_p(x):
                if x == 2:
                    pytest.skip("no two")
            class TestC:
                def test_m(self):
                    pytest.skip("class skip")
            """
        )
    )
    (tests / "test_b.py").write_text("import pytest\npytest.importorskip('no_such_module_here')\n")
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
    subprocess.run(
        [*cmd, f"--junitxml={junit}", "tests"], cwd=tmp_path, capture_output=True, check=False, timeout=patient(120)
    )
    n, skips = check_skips.skipped(junit)
    assert n == 4
    assert sorted(t for t, _ in skips) == [
        "tests/test_a.py::TestC::test_m",
        "tests/test_a.py::test_p[2]",
        "tests/test_b.py",
    ]


def test_make_test_is_what_ci_runs_and_fails_on_a_disallowed_skip(tmp_path):
    """`make test` ends with the skip check, so a newcomer's `make test` fails where CI fails (issue 62 item 4); and
    CI runs `make test` alone. Shown with make's dry run on a planted report of a skip the allow-list lacks."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "check_skips" not in ci.replace("# ", "").split("make test", 1)[1]
    junit, _ = _write(tmp_path)
    dry = subprocess.run(["make", "-n", "test", f"JUNIT={junit}"], cwd=REPO, capture_output=True, text=True,
                         timeout=patient(60))  # fmt: skip
    lines = dry.stdout.splitlines()
    pytest_at = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    check = next(line for line in lines[pytest_at:] if "check_skips.py" in line)
    assert f"{junit} .ci/allowed-skips.txt" in check
    proc = subprocess.run([sys.executable, *check.split()[1:]], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "tests/sub/test_a.py::TestC::test_m" in proc.stdout + proc.stderr
