"""A study as a Snakefile (``babelgrid run STUDY --emit snakefile``): one rule per stage, whose output is the stage's
run record and whose inputs are the records of the stages it reads (``graph.dependencies``). Each rule runs
``babelgrid run STUDY --only STAGE`` with the same ``--set`` values, so that Snakemake orders and schedules the stages
(on a cluster, through its executor plugins) while babelgrid still decides, checks and records each one: the
outputs are the same as ``babelgrid run``'s.

Snakemake deletes a rule's output before it runs the rule: the stage's record goes, the stage runs (its job resumes
what it finds done) and writes it again.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from jobs.studies import graph, records
from jobs.studies.spec import BUNDLED, Study, StudyError


def snakefile(study: Study) -> str:
    if records.is_remote(study.runs):
        raise StudyError(
            f"--emit snakefile: the runs folder {study.runs!r} is remote; Snakemake's outputs here are local files. "
            "Set runs to a local folder (--set runs=/path/runs)"
        )
    runs = os.path.abspath(study.runs.removeprefix("file://"))
    spec = study.spec if study.spec in BUNDLED else os.path.abspath(study.spec)
    base = [sys.executable, "-m", "jobs.cli", "run", spec, *(a for o in study.overrides for a in ("--set", o))]
    deps = graph.dependencies(study.stages)
    rule_names = {s.name: _rule_name(s.name, s.job) for s in study.stages}
    lines = [
        f"# made by: babelgrid run {' '.join(shlex.quote(a) for a in base[4:])} --emit snakefile",
        "# one rule per stage; its output is the stage's record, its inputs the records of the stages it reads",
        f"# run: snakemake --snakefile THIS_FILE --cores 1 (the records are under {runs})",
        "",
        f"workdir: {_quote(os.getcwd())}  # where the study's relative paths were read",
        "",
        "rule all:",
        "    input:",
        *(f"        {_quote(os.path.join(runs, s.record))}," for s in study.stages),
        "",
    ]
    for stage in study.stages:
        upstream = graph.upstream(deps[stage.name])
        command = " ".join(shlex.quote(a) for a in [*base, "--only", stage.name])
        lines += [f"rule {rule_names[stage.name]}:"]
        if upstream:
            lines += ["    input:", *(f"        {_quote(os.path.join(runs, a.record))}," for a in upstream)]
        lines += [
            "    output:",
            f"        {_quote(os.path.join(runs, stage.record))},",
            "    shell:",
            f"        {_quote(command.replace('{', '{{').replace('}', '}}'))}",
            "",
        ]
    return "\n".join(lines)


def _rule_name(name: str, job: str) -> str:
    return "stage_" + re.sub(r"[^A-Za-z0-9_]", "_", name) + f"_{job}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
