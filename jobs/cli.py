r"""babelgrid: one command for every job, and for a whole study from one config file.

    babelgrid encode --out out/store                 # = python -m jobs.encode --out out/store
    babelgrid seqsim --store out/store --out out/sim
    babelgrid run demo                               # the bundled demo study (jobs/configs/demo.yaml)
    babelgrid run study.yaml --set out=/data/run1    # a study of your own; --set overrides a variable

A study file (YAML) names variables and the stages to run in order, each a job with its flags; ``{name}`` in a flag
value is replaced by the variable::

    vars:
      out: out/demo
    stages:
      - encode: {out: "{out}/store"}
      - seqsim: {store: "{out}/store", out: "{out}/similarity"}
      - retrieval: {similarity: "{out}/similarity"}

Every job resumes by itself. On top of that a stage is skipped when it completed before with the same flags and
no stage before it ran again: ``babelgrid run`` records each completed stage under ``{runs}/`` (default
``{out}/runs``; set ``runs`` among the vars to move it).
"""

from __future__ import annotations

import datetime
import importlib.resources
import pathlib
import runpy
import subprocess
import sys
from collections.abc import Sequence

JOBS = ("encode", "seqsim", "retrieval", "align", "decode", "interp", "challenge", "probe", "probes", "finetune")
BUNDLED = {"demo": "demo.yaml"}


class StudyError(ValueError):
    """A study file that cannot be run as written."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\njobs: {', '.join(JOBS)}; run: a study file or one of {sorted(BUNDLED)}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run_study(rest)
    if command not in JOBS:
        print(f"babelgrid: unknown command {command!r}; use one of {', '.join((*JOBS, 'run'))}", file=sys.stderr)
        return 2
    sys.argv = [f"babelgrid {command}", *rest]
    try:
        runpy.run_module(f"jobs.{command}", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # absl's app.run ends every job with sys.exit(its return value)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def load_study(spec: str, overrides: Sequence[str] = ()) -> tuple[dict, list[tuple[str, dict]]]:
    """(variables, [(job, flags)]) of a study file or a bundled study's name, ``NAME=VALUE`` overrides applied."""
    import yaml

    if spec in BUNDLED:
        text = importlib.resources.files("jobs").joinpath("configs", BUNDLED[spec]).read_text("utf-8")
    else:
        path = pathlib.Path(spec)
        if not path.is_file():
            raise StudyError(f"no study file {spec!r}: give a YAML file or one of {sorted(BUNDLED)}")
        text = path.read_text("utf-8")
    study = yaml.safe_load(text) or {}
    if not isinstance(study, dict) or not isinstance(study.get("stages"), list) or not study["stages"]:
        raise StudyError(f"study {spec!r} needs a 'stages' list, e.g. stages: [{{encode: {{out: out/store}}}}]")
    variables = {k: str(v) for k, v in (study.get("vars") or {}).items()}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StudyError(f"--set takes NAME=VALUE, got {item!r}")
        variables[name] = value
    variables.setdefault("runs", f"{variables.get('out', 'out')}/runs")
    stages = []
    for i, stage in enumerate(study["stages"]):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise StudyError(f"stage {i + 1} of {spec!r} must be one job with its flags, e.g. {{seqsim: {{...}}}}")
        ((job, flags),) = stage.items()
        if job not in JOBS:
            raise StudyError(f"stage {i + 1} of {spec!r} names job {job!r}; jobs: {', '.join(JOBS)}")
        try:
            flags = {k: str(v).format(**variables) for k, v in (flags or {}).items()}
        except KeyError as e:
            missing, known = e.args[0], sorted(variables)
            raise StudyError(f"stage {i + 1} ({job}) uses {{{missing}}}, which is not among vars {known}") from None
        stages.append((job, flags))
    return variables, stages


def run_study(args: Sequence[str]) -> int:
    """Runs a study's stages in order, each as its own process, skipping those complete with the same flags."""
    if not args or args[0].startswith("-"):
        print("usage: babelgrid run STUDY.yaml|demo [--set NAME=VALUE ...]", file=sys.stderr)
        return 2
    spec, rest, overrides = args[0], list(args[1:]), []
    while rest:
        flag = rest.pop(0)
        if flag == "--set" and rest:
            overrides.append(rest.pop(0))
        elif flag.startswith("--set="):
            overrides.append(flag[len("--set=") :])
        else:
            print(f"babelgrid run: unexpected argument {flag!r}", file=sys.stderr)
            return 2
    try:
        variables, stages = load_study(spec, overrides)
    except StudyError as e:
        print(f"babelgrid run: {e}", file=sys.stderr)
        return 2
    from engine.stores.kv import json_bytes, open_kvstore, read_json, write_value

    runs = variables["runs"]
    _, kv = open_kvstore(runs)
    upstream_ran = False
    for i, (job, flags) in enumerate(stages, 1):
        key = f"{i:02d}-{job}.json"
        record = {"job": job, "flags": flags}
        done = read_json(kv, key, runs)
        if not upstream_ran and done is not None and {k: done.get(k) for k in record} == record:
            print(f"[{i}/{len(stages)}] {job}: complete (since {done.get('finished')}), skipped", flush=True)
            continue
        command = [sys.executable, "-m", f"jobs.{job}", *(f"--{k}={v}" for k, v in flags.items())]
        print(f"[{i}/{len(stages)}] {job}: {' '.join(command[2:])}", flush=True)
        code = subprocess.call(command)
        if code != 0:
            print(f"babelgrid run: stage {i} ({job}) exited {code}; fix it and run again to resume", file=sys.stderr)
            return code
        finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_value(kv, key, json_bytes({**record, "finished": finished}), runs)
        upstream_ran = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
