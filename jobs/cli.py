r"""babelgrid: one command for every job, and for a whole study from one config file.

    babelgrid encode --out out/store                 # = python -m jobs.encode --out out/store
    babelgrid seqsim --store out/store --out out/sim
    babelgrid run demo                               # the bundled demo study (jobs/configs/demo.yaml)
    babelgrid run study.yaml --set out=/data/run1    # a study of your own; --set overrides a variable
    babelgrid random-model --kind parakeet --out /tmp/parakeet   # a random-weight folder of any family, no hub

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
import difflib
import functools
import hashlib
import importlib
import importlib.resources
import json
import pathlib
import re
import runpy
import string
import subprocess
import sys
from collections.abc import Sequence

JOBS = (
    "encode", "seqsim", "retrieval", "align", "decode", "interp", "challenge", "probe", "probes", "finetune", "compare",
    "neurons", "heads", "typology", "sae", "verify", "status", "random_model",
)  # fmt: skip
COMMANDS = {"random-model": "random_model"}  # a command's name where it is not its job module's
BUNDLED = {"demo": "demo.yaml"}
FLAG_NAME = re.compile(r"[a-z_]+")  # every job's flag names; a study key must be one of its job's
SCALARS = (str, int, float, bool)  # what a variable or a flag value may be in a study file


class StudyError(ValueError):
    """A study file that cannot be run as written."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\njobs: {', '.join(_command_names())}; run: a study file or one of {sorted(BUNDLED)}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run_study(rest)
    job = COMMANDS.get(command, command)
    if job not in JOBS:
        print(f"babelgrid: unknown command {command!r}; use one of {', '.join((*_command_names(), 'run'))}",
              file=sys.stderr)  # fmt: skip
        return 2
    sys.argv = [f"babelgrid {command}", *rest]
    try:
        runpy.run_module(f"jobs.{job}", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # absl's app.run ends every job with sys.exit(its return value)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _command_names() -> list[str]:
    """The jobs as commands name them (``random-model`` for ``jobs.random_model``)."""
    names = {job: command for command, job in COMMANDS.items()}
    return [names.get(job, job) for job in JOBS]


def load_study(spec: str, overrides: Sequence[str] = ()) -> tuple[dict, list[tuple[str, dict]]]:
    """(variables, [(job, flags)]) of a study file or a bundled study's name, ``NAME=VALUE`` overrides applied.

    Every key of a stage must be one of its job's own flags (``job_flags``) and every value a scalar: a key is never
    passed to absl unless it is a flag of the job (``flagfile=...`` would make absl read a file of any flags)."""
    if spec in BUNDLED:
        text = importlib.resources.files("jobs").joinpath("configs", BUNDLED[spec]).read_text("utf-8")
    else:
        path = pathlib.Path(spec)
        if not path.is_file():
            raise StudyError(f"no study file {spec!r}: give a YAML file or one of {sorted(BUNDLED)}")
        text = path.read_text("utf-8")
    study = _parse_yaml(text, spec)
    if not isinstance(study, dict) or not isinstance(study.get("stages"), list) or not study["stages"]:
        raise StudyError(f"study {spec!r} needs a 'stages' list, e.g. stages: [{{encode: {{out: out/store}}}}]")
    variables = {}
    for name, value in (study.get("vars") or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise StudyError(f"study {spec!r}: variable name {name!r} is not a name (letters, digits and '_')")
        variables[name] = _scalar(value, f"study {spec!r}: variable {name!r}")
    known = sorted({*variables, "runs"})  # `runs` has a default of its own (below)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StudyError(f"--set takes NAME=VALUE, got {item!r}")
        if name not in known:  # a misspelt name would leave the variable it meant at its default, silently
            guess = difflib.get_close_matches(name, known, n=1)
            raise StudyError(
                f"--set {name}=...: study {spec!r} has no variable {name!r}"
                + (f" (did you mean {guess[0]!r}?)" if guess else "")
                + f"; its variables: {', '.join(known)}"
            )
        variables[name] = value
    variables.setdefault("runs", f"{variables.get('out', 'out')}/runs")
    return variables, [_stage(i, stage, variables, spec) for i, stage in enumerate(study["stages"])]


def _parse_yaml(text: str, spec: str):
    """The YAML of a study file, aliases refused: nine levels of ``&a [*a, *a]`` expand to gigabytes."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            """A key given twice in one mapping is refused: YAML keeps the last silently (``{location: A,
            location: B}`` ran on B)."""
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise StudyError(
                        f"study {spec!r} gives {key!r} twice in one mapping (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}): keep one"
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise StudyError(
                    f"study {spec!r} uses the YAML alias *{event.anchor} at line {event.start_mark.line + 1}: "
                    "aliases are refused (they can expand without bound); write the value out, or use a variable"
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, NoAliases) or {}  # noqa: S506 (a SafeLoader without aliases)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise StudyError(f"study {spec!r} is not valid YAML{where}: {problem}") from None


def _scalar(value, where: str) -> str:
    """A study value as the text of a flag: strings, numbers and booleans only."""
    if not isinstance(value, SCALARS):
        shown = "nothing" if value is None else f"a {type(value).__name__}"
        raise StudyError(f"{where} must be a string, number or boolean, got {shown}: {str(value)[:80]}")
    return str(value)


def _stage(i: int, stage, variables: dict[str, str], spec: str) -> tuple[str, dict[str, str]]:
    if not isinstance(stage, dict) or len(stage) != 1:
        raise StudyError(f"stage {i + 1} of {spec!r} must be one job with its flags, e.g. {{seqsim: {{...}}}}")
    ((job, flags),) = stage.items()
    if job not in JOBS:
        raise StudyError(f"stage {i + 1} of {spec!r} names job {job!r}; jobs: {', '.join(JOBS)}")
    if not isinstance(flags or {}, dict):
        raise StudyError(f"stage {i + 1} ({job}) of {spec!r} must map flag names to values, got {flags!r}")
    where, flags = f"stage {i + 1} ({job}) of {spec!r}", flags or {}
    names = [k for k in flags if not isinstance(k, str) or not FLAG_NAME.fullmatch(k)]
    if names:
        raise StudyError(f"{where} sets {names[0]!r}, which is not a flag name (lower-case letters and '_')")
    refused = sorted(set(flags) & absl_flags())
    if refused:
        raise StudyError(
            f"{where} sets {', '.join(refused)}: absl's own flags are not study settings; a stage sets the flags "
            f"`babelgrid {job} --help` lists"
        )
    unknown = sorted(set(flags) - job_flags()[job])
    if unknown:
        guesses = {k: difflib.get_close_matches(k, job_flags()[job], n=1) for k in unknown}
        hints = "".join(
            f"; did you mean {guess[0]!r}" + (f" for {k!r}" if len(unknown) > 1 else "") + "?"
            for k, guess in guesses.items()
            if guess
        )
        raise StudyError(
            f"{where} sets {', '.join(unknown)}: not flags of {job}{hints} (`babelgrid {job} --help` lists them)"
        )
    return job, {k: _substitute(_scalar(v, f"{where} --{k}"), variables, f"{where} --{k}") for k, v in flags.items()}


@functools.cache
def job_flags() -> dict[str, frozenset[str]]:
    """Each job's own flags, listed by a child process (``python -c``): a job defines its flags when its module is
    imported, and the jobs' flags share names, so that one process holds one job's flags at a time."""
    code = "from jobs.cli import _print_job_flags; _print_job_flags()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise StudyError(f"could not list the jobs' flags: {proc.stderr.strip()[-500:]}")
    return {job: frozenset(names) for job, names in json.loads(proc.stdout.splitlines()[-1]).items()}


def _print_job_flags() -> None:
    """Prints ``{job: [flag, ...]}`` as JSON: each job module imported in turn, its flags listed, then removed."""
    from absl import app, flags  # noqa: F401  (absl's own flags first: they are no job's)
    from absl import logging as absl_logging  # noqa: F401

    names = {}
    for job in JOBS:
        before = set(flags.FLAGS)
        importlib.import_module(f"jobs.{job}")
        names[job] = sorted(set(flags.FLAGS) - before)
        for name in names[job]:
            delattr(flags.FLAGS, name)
    print(json.dumps(names))


RUN_USAGE = """usage: babelgrid run STUDY.yaml|demo [--set NAME=VALUE ...] [--dry-run] [--rerun changed|all]

Runs a study's stages in order, each as its own process. A stage is skipped when it completed before with the same
flags, the same inputs and no stage before it ran again. Inputs are the local files and folders its flags name
(--dataset folder:/manifest:/fleurs:/hf:/covost2:/mass: paths, --model folders, upstream stores), compared by their
files' names, sizes and modification times; remote URLs (gs://, s3://) are not fingerprinted.

  --set NAME=VALUE   override a variable of the study's vars (or runs); another name is refused
  --dry-run          list what would run and why, run nothing
  --rerun changed    a stage whose inputs changed since it completed: move its old output aside (OUT.stale-TIME,
                     local paths only) and redo it and every stage after it; without it, such a stage is run on its
                     existing output, where the job refuses what it cannot resume (its own message says why)
  --rerun all        redo every stage, old outputs moved aside likewise

The study file's format: BUILD.md#studies."""

RERUN_MODES = ("changed", "all")
OUTPUT_FLAGS = ("out",)  # the flags that name what a stage writes (moved aside before a rerun)
# Files that change while a store is read or written without changing what it holds.
VOLATILE = ("claims/", "lease.json", "runs/")


def _parse_run_args(args: Sequence[str]) -> tuple[str, list[str], bool, str | None]:
    spec, rest, overrides, dry_run, rerun = None, list(args), [], False, None
    while rest:
        flag = rest.pop(0)
        if flag == "--set" and rest:
            overrides.append(rest.pop(0))
        elif flag.startswith("--set="):
            overrides.append(flag[len("--set=") :])
        elif flag in ("--dry-run", "--dry_run"):
            dry_run = True
        elif flag == "--rerun" and rest or flag.startswith("--rerun="):
            rerun = rest.pop(0) if flag == "--rerun" else flag.partition("=")[2]
            if rerun not in RERUN_MODES:
                raise StudyError(f"--rerun takes {' or '.join(RERUN_MODES)}, got {rerun!r}")
        elif spec is None and not flag.startswith("-"):
            spec = flag
        else:
            raise StudyError(f"unexpected argument {flag!r}\n{RUN_USAGE}")
    if spec is None:
        raise StudyError(f"no study named\n{RUN_USAGE}")
    return spec, overrides, dry_run, rerun


def _local_path(value: str) -> pathlib.Path | None:
    """The local file or folder a flag value names (``folder:/x`` and the like included), if it exists."""
    if "://" in value and not value.startswith("file://"):
        return None
    _, sep, rest = value.partition(":")
    # covost2:/dir:en_zh-CN and hf:/dir:config name a folder before their last ':'
    candidates = (rest, rest.rpartition(":")[0]) if sep and rest else ()
    for candidate in candidates + (value.removeprefix("file://"),):
        path = pathlib.Path(candidate).expanduser()
        try:
            if candidate and path.exists():
                return path
        except OSError:  # a name no file can have (a component over 255 bytes: a list of 80 language codes)
            continue
    return None


def fingerprint(path: pathlib.Path) -> str:
    """sha256 of every file under ``path`` (or of the file): relative name, size and modification time."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(path).as_posix() if f != path else f.name
        if any(rel.startswith(v) or f"/{v}" in f"/{rel}" for v in VOLATILE):
            continue
        st = f.stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def stage_inputs(flags: dict[str, str]) -> dict[str, str]:
    """flag -> fingerprint of every local input a stage's flags name (its outputs excluded)."""
    return {
        k: fingerprint(path)
        for k, v in sorted(flags.items())
        if k not in OUTPUT_FLAGS and (path := _local_path(v)) is not None
    }


def _why_run(record: dict, done: dict | None, upstream: str | None, rerun: str | None) -> str | None:
    """Why a stage must run (None: it may be skipped)."""
    if rerun == "all":
        return "--rerun all"
    if upstream:
        return f"stage {upstream} before it runs"
    if done is None:
        return "never completed"
    changed = sorted(k for k in set(record["flags"]) | set(done.get("flags", {})) if record["flags"].get(k) !=
                     done.get("flags", {}).get(k))  # fmt: skip
    if changed:
        return "flags changed: " + ", ".join(f"--{k}" for k in changed)
    inputs = sorted(k for k in record["inputs"] if record["inputs"][k] != done.get("inputs", {}).get(k))
    if inputs:
        return "inputs changed since it completed: " + ", ".join(f"--{k}={record['flags'][k]}" for k in inputs)
    return None


def _move_aside(flags: dict[str, str]) -> list[str]:
    """Renames the stage's existing local outputs to ``OUT.stale-TIME``; remote outputs cannot be moved here."""
    moved = []
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for k in OUTPUT_FLAGS:
        if k not in flags:
            continue
        path = _local_path(flags[k])
        if path is None and "://" in flags[k] and not flags[k].startswith("file://"):
            raise StudyError(f"--rerun cannot move the remote output --{k}={flags[k]} aside: delete it, then rerun")
        if path is not None:
            target = path.with_name(f"{path.name}.stale-{stamp}")
            path.rename(target)
            moved.append(f"{path} -> {target}")
    return moved


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    """``{name}`` replaced by the variable; nothing else (no attribute or index access, no format specs)."""
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(text):
        out.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise StudyError(f"{where}: {{{shown}}} is not a variable name; templates substitute {{name}} only")
        if field not in variables:
            raise StudyError(f"{where} uses {{{field}}}, which is not among vars {sorted(variables)}")
        out.append(variables[field])
    return "".join(out)


def absl_flags() -> set[str]:
    """The flags absl itself defines (flagfile, profile_file, run_with_pdb, logging's, help): never study settings."""
    from absl import app, flags  # noqa: F401  (lazy: importing absl.app defines its flags)
    from absl import logging as absl_logging  # noqa: F401

    names = {"flagfile", "undefok", "help", "helpfull", "helpshort", "helpxml", "h", "?", "v"}
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module.startswith("absl."):
            names |= {f.name for f in defined}
    return names


def run_study(args: Sequence[str]) -> int:
    """Runs a study's stages in order, each as its own process (``RUN_USAGE``)."""
    if args and args[0] in ("-h", "--help", "help"):
        print(RUN_USAGE)
        return 0
    try:
        spec, overrides, dry_run, rerun = _parse_run_args(args)
        variables, stages = load_study(spec, overrides)
    except StudyError as e:
        print(f"babelgrid run: {e}", file=sys.stderr)
        return 2
    from engine.stores.kv import json_bytes, open_kvstore, read_json, write_value  # lazy: `run --help` stays light

    runs = variables["runs"]
    _, kv = open_kvstore(runs)
    upstream = None  # the first stage that ran (or would run) in this call
    for i, (job, flags) in enumerate(stages, 1):
        key = f"{i:02d}-{job}.json"
        record = {"job": job, "flags": flags, "inputs": stage_inputs(flags)}
        done = read_json(kv, key, runs)
        why = _why_run(record, done, upstream, rerun)
        head = f"[{i}/{len(stages)}] {job}"
        if why is None:
            print(f"{head}: complete (since {done.get('finished')}), inputs unchanged: skipped", flush=True)
            continue
        command = [sys.executable, "-m", f"jobs.{job}", *(f"--{k}={v}" for k, v in flags.items())]
        if dry_run:
            print(f"{head}: would run ({why}): {' '.join(command[2:])}", flush=True)
            upstream = upstream or f"{i} ({job})"
            continue
        print(f"{head}: runs ({why}): {' '.join(command[2:])}", flush=True)
        if rerun and done is not None:  # it completed before on what changed: redo it from scratch
            try:
                for line in _move_aside(flags):
                    print(f"{head}: old output moved aside: {line}", flush=True)
            except (StudyError, OSError) as e:
                print(f"babelgrid run: stage {i} ({job}): {e}", file=sys.stderr)
                return 2
        upstream = upstream or f"{i} ({job})"
        code = subprocess.call(command)
        if code != 0:
            hint = (
                "; its inputs changed since it completed: `babelgrid run ... --rerun changed` moves its old output "
                "aside and redoes it and the stages after it"
                if why.startswith("inputs changed") and rerun is None
                else "; fix it and run again to resume"
            )
            print(f"babelgrid run: stage {i} ({job}) exited {code}{hint}", file=sys.stderr)
            return code
        finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record["inputs"] = stage_inputs(flags)  # as this stage leaves them (retrieval writes beside its input)
        write_value(kv, key, json_bytes({**record, "finished": finished}), runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
