"""A study file read into stages: variables substituted, every key checked against its job's flags, a matrix expanded.

    vars:                     # {name} in any value below; `--set name=value` overrides one
      out: out/demo
    matrix:                   # optional: the stages run once per combination, each in its own folder {run}
      model: {base: /models/whisper-base, small: /models/whisper-small}   # name: value (or a list of names)
    stages:                   # in each combination: {model} is its value, {matrix} its name, {run} = {out}/{matrix};
                              # a stage that uses none of these runs once, shared by every combination
      - encode: {out: "{run}/store", model: "{model}"}
    after:                    # once, after every combination; {each: TEMPLATE} is TEMPLATE per combination, joined by ,
      - compare: {stores: {each: "{run}/store"}, names: {each: "{matrix}"}, out: "{out}/compare"}

Nothing else is evaluated: ``{a.b}``, ``{a[0]}``, ``{a!r}`` and format specs are refused, and so are absl's own flags,
YAML aliases and a key given twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.resources
import itertools
import json
import pathlib
import re
import string
import subprocess
import sys

JOBS = (
    "encode", "seqsim", "retrieval", "align", "decode", "interp", "challenge", "probe", "probes", "finetune", "compare",
    "neurons", "heads", "typology", "sae", "mixing", "outliers", "verify", "status", "random_model",
    "series",
)  # fmt: skip
BUNDLED = {"demo": "demo.yaml", "demo-matrix": "demo_matrix.yaml"}
FLAG_NAME = re.compile(r"[a-z_]+")  # every job's flag names; a study key must be one of its job's
SCALARS = (str, int, float, bool)  # what a variable or a flag value may be in a study file
COMBINATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a folder name: it stays inside {out}
# Joins a combination's names, one per axis: no name holds it or ends with '-', so that two combinations never join
# to one name ('-' did: (a, b-c) and (a-b, c) were both a-b-c, and one ran in place of the other)
JOIN = "--"
MATRIX_VARS = ("matrix", "run")  # set per combination; a study's vars may not use these names when it has a matrix
EACH = "each"  # {each: TEMPLATE} in an after-stage: TEMPLATE per combination, joined by commas
MAX_DEPTH = 20  # levels of YAML nesting; a study needs five, and PyYAML recurses once per level (a traceback at ~1000)


class StudyError(ValueError):
    """A study file that cannot be run as written."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One job run of a study: ``number`` is its place in the file (the after-stages count on from the stages),
    ``combination`` the matrix combination it runs in ("" without a matrix, or after it)."""

    number: int
    job: str
    flags: dict[str, str]
    combination: str = ""
    after: bool = False

    @property
    def name(self) -> str:
        """What ``--only`` and ``--until`` take, and how the runner names the stage: ``2`` or ``small/2``."""
        return f"{self.combination}/{self.number}" if self.combination else str(self.number)

    @property
    def record(self) -> str:
        """The key of its record under the study's ``runs`` folder."""
        key = f"{self.number:02d}-{self.job}.json"
        return f"{self.combination}/{key}" if self.combination else key

    def title(self, total: int) -> str:
        where = f"{self.combination} " if self.combination else ""
        return f"[{where}{self.number}/{total}] {self.job}"


@dataclasses.dataclass
class Study:
    spec: str  # the file, or a bundled study's name
    variables: dict[str, str]  # after --set, before any matrix combination
    stages: list[Stage]
    combinations: dict[str, dict[str, str]]  # name -> the matrix variables of that combination ({} without a matrix)
    overrides: tuple[str, ...] = ()

    @property
    def runs(self) -> str:
        return self.variables["runs"]

    @property
    def total(self) -> int:
        return max(s.number for s in self.stages)


def load_study(spec: str, overrides=()) -> Study:
    """The study of a file or a bundled study's name, ``NAME=VALUE`` overrides applied.

    Every key of a stage must be one of its job's own flags (``job_flags``) and every value a scalar: a key is never
    passed to absl unless it is a flag of the job (``flagfile=...`` would make absl read a file of any flags)."""
    if spec in BUNDLED:
        text = importlib.resources.files("jobs").joinpath("configs", BUNDLED[spec]).read_text("utf-8")
    else:
        path = pathlib.Path(spec)
        if not path.is_file():
            raise StudyError(f"no study file {spec!r}: give a YAML file or one of {sorted(BUNDLED)}")
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError as e:
            raise StudyError(f"study {spec!r} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
        except OSError as e:
            raise StudyError(f"cannot read study {spec!r}: {e.strerror}") from None
    study = _parse_yaml(text, spec)
    extra = sorted(set(study) - {"vars", "matrix", "stages", "after"}) if isinstance(study, dict) else []
    if extra:  # first: a misspelt 'stagse:' said only that a 'stages' list was needed
        raise StudyError(f"study {spec!r} has {', '.join(map(repr, extra))}: a study holds vars, matrix, stages, after")
    if not isinstance(study, dict) or not isinstance(study.get("stages"), list) or not study["stages"]:
        raise StudyError(f"study {spec!r} needs a 'stages' list, e.g. stages: [{{encode: {{out: out/store}}}}]")
    variables = {}
    for name, value in (study.get("vars") or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise StudyError(f"study {spec!r}: variable name {name!r} is not a name (letters, digits and '_')")
        variables[name] = _scalar(value, f"study {spec!r}: variable {name!r}")
    combinations = _matrix(study.get("matrix"), spec, variables)
    known = sorted({*variables, "runs"})  # `runs` has a default of its own (below)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StudyError(f"--set takes NAME=VALUE, got {item!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in item):  # a newline broke the Snakefile --emit wrote
            raise StudyError(f"--set {item!r} holds a newline or another control character: give the value on one line")
        if name not in known:  # a misspelt name would leave the variable it meant at its default, silently
            guess = difflib.get_close_matches(name, known, n=1)
            raise StudyError(
                f"--set {name}=...: study {spec!r} has no variable {name!r}"
                + (f" (did you mean {guess[0]!r}?)" if guess else "")
                + f"; its variables: {', '.join(known)}"
            )
        variables[name] = value
    variables.setdefault("runs", f"{variables.get('out', 'out')}/runs")
    after = study.get("after") or []
    if not isinstance(after, list):
        raise StudyError(f"study {spec!r}: 'after' must be a list of stages, like 'stages'")
    if after and not combinations:
        raise StudyError(f"study {spec!r} has 'after' stages but no 'matrix': put them among the stages")
    stages = []
    for i, item in enumerate(study["stages"]):
        each = {}
        for name, values in (combinations or {"": {}}).items():
            scope = dict(variables)
            if name:
                scope |= values | {"matrix": name, "run": f"{variables.get('out', 'out')}/{name}"}
            each[name] = _stage(i, item, spec, lambda v, where, scope=scope: _substitute(v, scope, where))
        if len({json.dumps(v, sort_keys=True) for v in each.values()}) == 1:  # no matrix variable: run it once
            stages.append(Stage(i + 1, *next(iter(each.values()))))
        else:
            stages += [Stage(i + 1, job, flags, name) for name, (job, flags) in each.items()]
    for i, item in enumerate(after, len(study["stages"])):
        job, flags = _stage(i, item, spec, lambda v, where: _each(v, where, variables, combinations), after=True)
        stages.append(Stage(i + 1, job, flags, "", True))
    _check_outputs_apart(stages, spec)
    _check_runs_apart(variables["runs"], stages, spec)
    return Study(spec, variables, stages, combinations, tuple(overrides))


def _matrix(matrix, spec: str, variables: dict[str, str]) -> dict[str, dict[str, str]]:
    """Combination name -> its variables: the product of the matrix's axes, in the order written. An axis maps names
    to values, or lists names that are their own values; a combination's name joins its names with ``JOIN`` (one
    axis: the name alone). Two combinations of one name (or of names that differ in case only: one folder on a
    case-insensitive disk) are refused."""
    if matrix is None:
        return {}
    if not isinstance(matrix, dict) or not matrix:
        raise StudyError(f"study {spec!r}: 'matrix' maps names to values, e.g. matrix: {{model: {{base: /m/base}}}}")
    axes = []
    for axis, values in matrix.items():
        where = f"study {spec!r}: matrix axis {axis!r}"
        if not isinstance(axis, str) or not axis.isidentifier() or axis in MATRIX_VARS or axis in variables:
            raise StudyError(f"{where} must be a new name (not a variable, not {' or '.join(MATRIX_VARS)})")
        if isinstance(values, list):
            values = {_scalar(v, where): v for v in values}
        if not isinstance(values, dict) or not values:
            raise StudyError(f"{where} must list names or map names to values")
        for name in values:
            if not isinstance(name, str) or not COMBINATION_NAME.fullmatch(name):
                raise StudyError(f"{where}: {name!r} cannot name a folder (letters, digits and _.+- only)")
            if JOIN in name or name.endswith("-"):
                raise StudyError(
                    f"{where}: {name!r} holds {JOIN!r} or ends with '-': {JOIN!r} joins the names of a combination "
                    "(one per axis), so that no two combinations share a folder"
                )
        if isinstance(matrix[axis], list) and len(values) < len(matrix[axis]):
            raise StudyError(f"{where} lists one name twice ({matrix[axis]!r}): each name runs in a folder of its own")
        axes.append([(axis, name, _scalar(value, f"{where} {name!r}")) for name, value in values.items()])
    if set(variables) & set(MATRIX_VARS):
        raise StudyError(f"study {spec!r} has a matrix: {' and '.join(MATRIX_VARS)} are set per combination")
    combinations, folders = {}, {}
    for combo in itertools.product(*axes):
        name = JOIN.join(n for _, n, _ in combo)
        other = folders.setdefault(name.casefold(), name)
        if other != name or name in combinations:
            raise StudyError(
                f"study {spec!r}: matrix combinations {other!r} and {name!r} would run in one folder (names that "
                "differ in case only are one folder on a case-insensitive disk): rename one of them"
            )
        combinations[name] = {a: v for a, _, v in combo}
    return combinations


def _each(value, where: str, variables: dict[str, str], combinations: dict[str, dict[str, str]]) -> str:
    """An after-stage's value: a template of the study's vars, or {each: TEMPLATE} expanded per combination."""
    if isinstance(value, str):
        return _substitute(value, variables, where)
    out = variables.get("out", "out")
    return ",".join(
        _substitute(value[EACH], variables | values | {"matrix": name, "run": f"{out}/{name}"}, where)
        for name, values in combinations.items()
    )


def _stage(i: int, stage, spec: str, substitute, after: bool = False) -> tuple[str, dict[str, str]]:
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
    values = {}
    for k, v in flags.items():
        if isinstance(v, dict) and set(v) == {EACH} and isinstance(v[EACH], str):
            if not after:
                raise StudyError(f"{where} --{k}: {{{EACH}: ...}} is for the stages after a matrix ('after')")
            values[k] = substitute(v, f"{where} --{k}")
        else:
            values[k] = substitute(_scalar(v, f"{where} --{k}"), f"{where} --{k}")
    return job, values


def _check_outputs_apart(stages: list[Stage], spec: str) -> None:
    """Two stages never write one output: in a matrix, each combination's outputs need {run} or {matrix}."""
    seen = {}
    for stage in stages:
        out = stage.flags.get("out")
        if out is None:
            continue
        if out in seen and seen[out].combination != stage.combination and seen[out].number == stage.number:
            raise StudyError(
                f"stage {stage.number} ({stage.job}) of {spec!r} writes --out={out} in every combination of the "
                "matrix: put {run} or {matrix} in it"
            )
        seen[out] = stage


def _check_runs_apart(runs: str, stages: list[Stage], spec: str) -> None:
    """The runs folder is never inside a stage's output: `runs: {out}/store` wrote the records into the layer store,
    and --rerun changed moved them aside with it (newcomer probe)."""
    where = runs.rstrip("/") + "/"
    for stage in stages:
        out = stage.flags.get("out")
        if out and where.startswith(out.rstrip("/") + "/"):
            raise StudyError(f"study {spec!r}: runs={runs} lies inside stage {stage.number} ({stage.job})'s "
                             f"--out={out}, whose old output --rerun moves aside: put the records beside the outputs, "
                             "e.g. runs: '{out}/runs'")  # fmt: skip


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

        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise StudyError(
                    f"study {spec!r} uses the YAML alias *{event.anchor} at line {event.start_mark.line + 1}: "
                    "aliases are refused (they can expand without bound); write the value out, or use a variable"
                )
            if self.depth >= MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise StudyError(
                    f"study {spec!r} nests deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column "
                    f"{mark.column + 1}: a study is vars, matrix, stages and after, a few levels deep"
                )
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

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


@functools.cache
def job_flags() -> dict[str, frozenset[str]]:
    """Each job's own flags, listed by a child process (``python -c``): a job defines its flags when its module is
    imported, and the jobs' flags share names, so that one process holds one job's flags at a time."""
    code = "from jobs.studies.spec import _print_job_flags; _print_job_flags()"
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
