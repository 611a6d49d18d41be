"""A study as a Snakefile (``babelgrid run STUDY --emit snakefile``): one rule per stage, whose output is the stage's
run record and whose inputs are the records of the stages it reads (``graph.dependencies``). Each rule runs
``babelgrid run STUDY --only STAGE`` with the same ``--set`` values, so that Snakemake orders and schedules the stages
(on a cluster, through its executor plugins) while babelgrid still decides, checks and records each one: the
outputs are the same as ``babelgrid run``'s.

Snakemake deletes a rule's output before it runs the rule: the stage's record goes, the stage runs (its job resumes
what it finds done) and writes it again. Snakemake runs a rule whose record is older than an input record; ``babelgrid
run`` keeps a complete stage's record no older than those it reads (``Runner.keep_newer``), so that a finished run
leaves Snakemake nothing to do. The Snakefile's ``workdir`` is the runs folder, where Snakemake keeps ``.snakemake/``;
each rule's command starts in the folder where the study's relative paths were read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

from jobs.studies import graph, records
from jobs.studies.spec import BUNDLED, Study, StudyError

LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}  # beyond the control characters


def snakefile(study: Study) -> str:
    if records.is_remote(study.runs):
        raise StudyError(
            f"--emit snakefile: the runs folder {study.runs!r} is remote; Snakemake's outputs here are local files. "
            "Set runs to a local folder (--set runs=/path/runs)"
        )
    runs = os.path.abspath(study.runs.removeprefix("file://"))
    if "{" in runs or "}" in runs:
        raise StudyError(
            f"--emit snakefile: the runs folder {runs!r} holds a brace, which Snakemake reads as a wildcard in a "
            "rule's files. Set runs to a folder without one (--set runs=/path/runs)"
        )
    spec = study.spec if study.spec in BUNDLED else os.path.abspath(study.spec)
    base = [sys.executable, "-m", "jobs.cli", "run", spec, *(a for o in study.overrides for a in ("--set", o))]
    deps = graph.dependencies(study.stages)
    rule_names = {}
    for s in study.stages:  # stage names are unique, the letters a rule name keeps of them may not be (a.b, a_b)
        name, n = _rule_name(s.name, s.job), 1
        while name in rule_names.values():
            n += 1
            name = f"{_rule_name(s.name, s.job)}_{n}"
        rule_names[s.name] = name
    lines = [
        _comment(f"# made by: babelgrid run {' '.join(shlex.quote(a) for a in base[4:])} --emit snakefile"),
        "# one rule per stage; its output is the stage's record, its inputs the records of the stages it reads",
        _comment(f"# run: snakemake --snakefile THIS_FILE --cores 1 (the records are under {runs})"),
        "",
        f"workdir: {_quote(runs)}  # Snakemake's own files (.snakemake/) go beside the records",
        "",
        "rule all:",
        "    input:",
        *(f"        {_quote(os.path.join(runs, s.record))}," for s in study.stages),
        "",
    ]
    for stage in study.stages:
        upstream = graph.upstream(deps[stage.name])
        # Run where the study's relative paths were read.
        command = f"cd {shlex.quote(os.getcwd())} && " + " ".join(shlex.quote(a) for a in [*base, "--only", stage.name])
        lines += [f"rule {rule_names[stage.name]}:"]
        if upstream:
            lines += ["    input:", *(f"        {_quote(os.path.join(runs, a.record))}," for a in upstream)]
        lines += [
            "    output:",
            f"        {_quote(os.path.join(runs, stage.record))},",
            "    shell:",
            f"        {_quote(_literal(command))}",
            "",
        ]
    return "\n".join(lines)


def _rule_name(name: str, job: str) -> str:
    return "stage_" + re.sub(r"[^A-Za-z0-9_]", "_", name) + f"_{job}"


def _literal(text: str) -> str:
    """A shell command as Snakemake runs it literally: braces doubled (single ones are its placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def _quote(text: str) -> str:
    """``text`` as a Python string literal on one line: JSON's escapes are Python's, and it escapes every control
    character (a newline in a path ended the literal, and the Snakefile did not parse); the line breaks that
    ``str.splitlines`` knows beyond those are escaped too."""
    return json.dumps(text, ensure_ascii=False).translate(LINE_BREAKS)


def _comment(text: str) -> str:
    """``text`` for a comment line: every line break escaped, so that nothing of it becomes code."""
    return text.translate({c: f"\\x{c:02x}" for c in range(32)} | LINE_BREAKS)
