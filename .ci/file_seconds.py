"""Each test file's seconds (setup, call and teardown of its tests) from a pytest junit report, as JSON, heaviest
first: tests/file_seconds.json, from which tests/conftest.py orders the files so that xdist starts the longest first.

    python .ci/file_seconds.py build/junit.xml > tests/file_seconds.json

Run it on the junit report of a whole `make test` (CI writes build/junit.xml) when the suite's heavy files change.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
import xml.etree.ElementTree as ET


def file_seconds(junit: pathlib.Path) -> dict[str, float]:
    seconds: dict[str, float] = collections.Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("file") or case.get("classname", "").replace(".", "/")
        path = module if module.endswith(".py") else _module_file(module)
        if path:
            seconds[path] += float(case.get("time") or 0)
    return {path: round(s, 1) for path, s in sorted(seconds.items(), key=lambda kv: -kv[1]) if s >= 1}


def _module_file(dotted: str) -> str | None:
    """``tests/jobs/test_encode/SomeClass`` -> ``tests/jobs/test_encode.py``: the longest prefix that is a file."""
    parts = dotted.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end]) + ".py"
        if pathlib.Path(candidate).is_file():
            return candidate
    return None


if __name__ == "__main__":
    json.dump(file_seconds(pathlib.Path(sys.argv[1])), sys.stdout, indent=1)
    sys.stdout.write("\n")
