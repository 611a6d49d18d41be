"""A study as a Snakefile (``babelgrid run STUDY --emit snakefile``): one rule per stage, whose output is the stage's
run record and whose inputs are the records of the stages it reads (``graph.dependencies``). Each rule runs
``babelgrid run STUDY --only STAGE`` with the same ``--set`` values, so that Snakemake orders and schedules the stages
(on a cluster, through its executor plugins) while babelgrid still decides, checks and records each one: the
outputs are the same as ``babelgrid run``'s.

Snakemake reruns a stage whose flags changed, and only it (and what reads its output): each rule's ``params`` holds a
digest of its stage's job and flags, which the Snakefile asks of the study as Snakemake reads it (``babelgrid run STUDY
--emit digests``), so that an edit of the study is seen without emitting the Snakefile again; Snakemake's default
rerun triggers rerun a rule whose params changed. A study that no longer loads stops Snakemake with babelgrid's
error.

Snakemake deletes a rule's output before it runs the rule: the stage's record goes, the stage runs (its job resumes
what it finds done) and writes it again. Snakemake runs a rule whose record is older than an input record; ``babelgrid
run`` keeps a complete stage's record no older than those it reads (``Runner.keep_newer``), so that a finished run
leaves Snakemake nothing to do. The Snakefile's ``workdir`` is the runs folder, where Snakemake keeps ``.snakemake/``;
each rule's command starts in the folder where the study's relative paths were read.
"""

from __future__ import annotations

import hashlib
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
        "import json as _json, subprocess as _subprocess, sys as _sys",
        "",
        "# each stage's flags as the study says now (a digest a stage): a rule whose flags changed runs again",
        f"_said = _subprocess.run({json.dumps([*base, '--emit', 'digests'])}, cwd={_quote(os.getcwd())},",
        "                        capture_output=True, text=True)",
        "if _said.returncode:",
        '    _sys.exit("babelgrid run --emit digests: the study does not load: " + _said.stderr)',
        "FLAGS = _json.loads(_said.stdout)",
        "",
        f"workdir: {_quote(runs)}  # Snakemake's own files (.snakemake/) go beside the records",
        "",
        "rule all:",
        "    input:",
        *(f"        {_quote(os.path.join(runs, s.record))}," for s in study.stages),
        "",
    ]
    for stage in study.stages:
        inputs = [os.path.join(runs, a.record) for a in graph.upstream(deps[stage.name])]
        # Run where the study's relative paths were read.
        command = f"cd {shlex.quote(os.getcwd())} && " + " ".join(shlex.quote(a) for a in [*base, "--only", stage.name])
        flags = " ".join(f"--{k}={v}" for k, v in sorted(stage.flags.items()))
        lines += [_comment(f"# {stage.job} {flags}"), f"rule {rule_names[stage.name]}:"]
        if inputs:
            lines += ["    input:", *(f"        {_quote(path)}," for path in inputs)]
        lines += [
            "    output:",
            f"        {_quote(os.path.join(runs, stage.record))},",
            "    params:",
            f"        flags=FLAGS.get({_quote(stage.name)}, 'not in the study now'),  # a change reruns the rule",
            "    shell:",
            f"        {_quote(_literal(command))}",
            "",
        ]
    return "\n".join(lines)


def digests(study: Study) -> str:
    """``--emit digests``: each stage's 16 hex digits of the SHA-256 of its job and flags, as JSON (stage name ->
    digest), which the Snakefile's rules hold as ``params``: a hex digest, never braces Snakemake would read as
    wildcards."""
    return json.dumps({s.name: hashlib.sha256(json.dumps([s.job, s.flags], sort_keys=True).encode()).hexdigest()[:16]
                       for s in study.stages}, indent=1) + "\n"  # fmt: skip


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
