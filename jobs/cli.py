r"""babelgrid: one command for every job, and for a whole study from one config file.

    babelgrid encode --out out/store                 # = python -m jobs.encode --out out/store
    babelgrid seqsim --store out/store --out out/sim
    babelgrid run demo                               # the bundled demo study (jobs/configs/demo.yaml)
    babelgrid run demo-matrix --dry-run              # the demo as a matrix: its graph, and what would run and why
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

Every job resumes by itself. On top of that a stage is skipped while its record (under ``{runs}/``, default
``{out}/runs``) still holds: the same flags, inputs and upstream outputs, and its own output still there as it
listed it. A matrix of models or settings, the graph, versions, --only/--until, --verify and --emit snakefile:
``babelgrid run --help`` and BUILD.md#studies (``jobs.studies``).
"""

from __future__ import annotations

import difflib
import os
import runpy
import sys
from collections.abc import Sequence

from jobs.studies.spec import BUNDLED, JOBS, StudyError, load_study  # noqa: F401  (the study's names, re-exported)

COMMANDS = {"random-model": "random_model"}  # a command's name where it is not its job module's


def main(argv: Sequence[str] | None = None) -> int:
    _unshadow()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\njobs: {', '.join(_command_names())}; run: a study file or one of {sorted(BUNDLED)}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from jobs.studies.run import run_study  # lazy: a job's command loads nothing of the study runner

        return run_study(rest)
    job = COMMANDS.get(command, command)
    if job not in JOBS:
        names = (*_command_names(), "run")
        guess = difflib.get_close_matches(command, names, n=1)
        print(f"babelgrid: unknown command {command!r}{f' (did you mean {guess[0]!r}?)' if guess else ''}; use one of "
              f"{', '.join(names)}", file=sys.stderr)  # fmt: skip
        return 2
    sys.argv = [f"babelgrid {command}", *rest]
    try:
        runpy.run_module(f"jobs.{job}", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # absl's app.run ends every job with sys.exit(its return value)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _unshadow() -> None:
    """Drops the console script's own folder (the environment's ``bin/``) from ``sys.path``. Python puts a script's
    folder first on the path, so the scripts installed beside ``babelgrid`` shadow the packages they share a name
    with: lang2vec installs ``bin/lang2vec.py``, and ``import lang2vec.lang2vec`` found that script and failed, so
    ``babelgrid typology`` crashed while ``python -m jobs.typology`` ran. A folder that holds babelgrid's own
    packages (a checkout's root) stays."""
    script = sys.argv[0] if sys.argv else ""
    if not script or not os.path.isfile(script):
        return
    folder = os.path.realpath(os.path.dirname(os.path.abspath(script)))
    if any(os.path.isfile(os.path.join(folder, package, "__init__.py")) for package in ("jobs", "engine")):
        return
    sys.path[:] = [p for p in sys.path if os.path.realpath(os.path.abspath(p or os.curdir)) != folder]


def _command_names() -> list[str]:
    """The jobs as commands name them (``random-model`` for ``jobs.random_model``)."""
    names = {job: command for command, job in COMMANDS.items()}
    return [names.get(job, job) for job in JOBS]


if __name__ == "__main__":
    sys.exit(main())
