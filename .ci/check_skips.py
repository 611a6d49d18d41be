"""Fail CI when a test was skipped that the allow-list does not name: the parity and real-data tests skip with a
reason when a reference or ../shared is missing, and a green run must mean they ran.

    python3 .ci/check_skips.py build/junit.xml .ci/allowed-skips.txt

Reads pytest's junit report written with ``-o junit_family=xunit1`` (the flavour that records each test's file),
prints every skipped test (xfails count: they did not pass either) with its reason, and exits 1 unless each one
matches a line of the allow-list. An allow-list line is ``<test id or fnmatch pattern> <reason>``; test ids are
pytest's (``tests/engine/test_x.py::test_y[param]``, or the file alone for a module skipped at collection); blank
lines and lines starting with ``#`` are ignored. A report with no test in it fails as well. Standard library only.
"""

from __future__ import annotations

import fnmatch
import pathlib
import sys
import xml.etree.ElementTree as ET


class CheckError(Exception):
    """A report or allow-list this script cannot use; the message says which and how to fix it."""


def test_id(case: ET.Element) -> str:
    """pytest's node id of a junit ``testcase``: ``file::Class::name``, or the file for a collection skip."""
    file = case.get("file")
    if not file:
        raise CheckError(
            f"testcase {case.get('classname')}::{case.get('name')} has no file attribute: "
            "write the report with `pytest -o junit_family=xunit1 --junitxml=...`"
        )
    classname, name = case.get("classname", ""), case.get("name", "")
    if not classname:  # the whole module was skipped while collecting it
        return file
    module = file.removesuffix(".py").replace("/", ".")
    inner = classname[len(module) :].lstrip(".") if classname.startswith(module) else ""
    return "::".join([file, *inner.split("."), name] if inner else [file, name])


def skipped(report: pathlib.Path) -> tuple[int, list[tuple[str, str]]]:
    """(tests in the report, [(test id, reason)] of those skipped or xfailed)."""
    try:
        root = ET.parse(report).getroot()
    except FileNotFoundError:
        raise CheckError(f"no junit report at {report}: run `make test` (pytest --junitxml={report})") from None
    except ET.ParseError as e:
        raise CheckError(f"junit report {report} is not XML ({e}): did pytest stop while writing it?") from None
    cases = list(root.iter("testcase"))
    found = []
    for case in cases:
        skip = case.find("skipped")
        if skip is not None:
            reason = skip.get("message") or (skip.text or "").strip()
            kind = "xfail" if skip.get("type") == "pytest.xfail" else "skip"
            found.append((test_id(case), f"{kind}: {reason}"))
    return len(cases), found


def read_allowed(path: pathlib.Path) -> list[tuple[str, str]]:
    """[(pattern, reason)] from the allow-list; a missing file allows nothing."""
    if not path.exists():
        return []
    allowed = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, *reason = line.split(maxsplit=1)
        if not reason:
            raise CheckError(f"{path}:{number}: {pattern!r} has no reason: write `<test id pattern> <why it may skip>`")
        allowed.append((pattern, reason[0]))
    return allowed


def matches(test: str, pattern: str) -> bool:
    # Test ids carry [params], which fnmatch would read as a character class: an exact id matches as written.
    return test == pattern or fnmatch.fnmatchcase(test, pattern)


def check(report: pathlib.Path, allow_list: pathlib.Path) -> tuple[bool, list[str]]:
    """(passed, lines to print)."""
    n_tests, skips = skipped(report)
    allowed = read_allowed(allow_list)
    if n_tests == 0:
        return False, [f"{report} holds no test: pytest collected nothing"]
    lines, bad, used = [], 0, set()
    for test, reason in skips:
        hit = next((p for p in allowed if matches(test, p[0])), None)
        if hit is None:
            bad += 1
            lines.append(f"NOT ALLOWED  {test}  ({reason})")
        else:
            used.add(hit[0])
            lines.append(f"allowed      {test}  ({reason}; allowed: {hit[1]})")
    lines += [f"note: {allow_list} allows {p!r}, which nothing matched" for p, _ in allowed if p not in used]
    summary = f"{n_tests} tests, {len(skips)} skipped, {bad} of them not in {allow_list}"
    if bad:
        summary += ": make them run (install the reference, put ../shared/data beside the clone) or allow them there"
    return not bad, [*lines, summary]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        passed, lines = check(pathlib.Path(argv[1]), pathlib.Path(argv[2]))
    except CheckError as e:
        print(f"check_skips: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
