"""Every job's command line as a user meets it: --help exits 0, shows the docstring's examples as written and marks the
required flags; no accelerator-plugin noise on a CPU run."""

from __future__ import annotations

import ast
import errno
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
NOT_JOBS = ("__init__", "common", "gang")  # gang: the jax.distributed part of common's start-up
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem not in NOT_JOBS)
REQUIRED = {"encode": ["out"], "seqsim": ["store", "out"], "align": ["store", "out"], "retrieval": ["similarity"]}


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(120)
    )


@pytest.mark.parametrize("job", JOBS)
def test_help_exits_0_and_marks_required_flags(job):
    proc = run("-m", f"jobs.{job}", "--help")
    assert proc.returncode == 0, proc.stderr
    doc = ast.get_docstring(ast.parse((REPO / "jobs" / f"{job}.py").read_text()))  # importing would define flags
    assert proc.stdout.startswith(doc.splitlines()[0])
    assert "python -m jobs." in proc.stdout, "the docstring's examples are shown"
    for name in REQUIRED.get(job, []):
        assert f"--{name}: (required)" in proc.stdout, f"--{name} not marked required:\n{proc.stdout}"
    if "\\\n" in doc:
        assert "\\\n" in proc.stdout, "an example continued with a backslash keeps its line break"
    if job != "cli":  # every job takes --progress (issue 87: typology did not), one without long stages says so
        assert "--[no]progress:" in proc.stdout, f"jobs.{job} has no --progress"


def test_missing_required_flag_names_it_and_no_tpu_noise(tmp_path):
    proc = run("-m", "jobs.seqsim", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "--store" in proc.stderr
    assert "Unable to initialize backend" not in proc.stderr


STUDY = """
vars:
  out: unset
  model: unset
  data: unset
stages:
  - encode: {out: "{out}/store", model: "{model}", dataset: "folder:{data}", batch_size: 4, progress: false}
  - seqsim: {store: "{out}/store", out: "{out}/similarity", measure: "seqsim,mean", progress: false}
  - retrieval: {similarity: "{out}/similarity"}
"""


def test_the_console_script_knows_every_job():
    from jobs.cli import JOBS as CLI_JOBS

    assert sorted(CLI_JOBS) == sorted(set(JOBS) - {"cli"})


def test_an_unknown_command_names_the_close_one_and_the_rest(capsys):
    from jobs.cli import main

    assert main(["seqsym", "--store", "x"]) == 2
    said = capsys.readouterr().err
    assert said.startswith("babelgrid: unknown command 'seqsym' (did you mean 'seqsim'?); use one of encode, ") and (
        "random-model, series, run" in said
    ), said
    assert main(["zzz"]) == 2 and "'zzz'; use one of" in capsys.readouterr().err  # nothing close: no guess


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of `&a [*a, ...]` in vars: 2.2 GB in 60 s before; refused now, before anything is expanded."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]
    study = tmp_path / "bomb.yaml"
    study.write_text("vars:\n" + "".join(f"  {line}\n" for line in levels) + "stages:\n  - encode: {out: x}\n")
    proc = run("-m", "jobs.cli", "run", str(study), "--dry-run")
    assert proc.returncode == 2 and "uses the YAML alias *a0 at line 3" in proc.stderr, proc.stderr


def test_a_dry_run_refuses_a_misspelt_flag_before_anything_runs(tmp_path):
    """`measures:` for seqsim's `measure`: passed the dry run, then failed after 81 s of encoding. The dry run reads
    the study the way the run does, so it refuses the stage with the flag it meant, and nothing is planned."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.replace('measure: "seqsim,mean"', 'measures: "seqsim,mean"'))
    settings = ["--set", f"out={tmp_path / 'out'}", "--set", "model=m", "--set", "data=d"]
    for extra in (["--dry-run"], []):
        proc = run("-m", "jobs.cli", "run", str(study), *settings, *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "stage 2 (seqsim) of" in proc.stderr and "sets measures: not flags of seqsim" in proc.stderr
        assert "did you mean 'measure'?" in proc.stderr, proc.stderr
        assert "would run" not in proc.stdout and "runs (" not in proc.stdout, proc.stdout
    assert not (tmp_path / "out").exists()


def test_run_help_is_on_stdout_and_exits_0():
    proc = run("-m", "jobs.cli", "run", "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "--rerun changed" in proc.stdout
    assert "JAX" not in proc.stderr
    bad = run("-m", "jobs.cli", "run", "demo", "--rerun", "sometimes")
    assert bad.returncode == 2 and "--rerun takes changed, all, code" in bad.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('vars:\n  out: x\nstages:\n  - encode: {out: "{out}"\n', "is not valid YAML at line 5, column 1"),
        ('vars: {out: x}\nstages:\n  - encode: {out: "{out.__class__.__mro__}"}\n', "templates substitute {name} only"),
        ('vars: {out: x}\nstages:\n  - encode: {out: "{out[0]}"}\n', "templates substitute {name} only"),
        ('vars: {out: x}\nstages:\n  - encode: {out: "{out!r}"}\n', "templates substitute {name} only"),
        ("stages:\n  - encode: {flagfile: /etc/hostname}\n", "sets flagfile: absl's own flags"),
        ("stages:\n  - seqsim: {run_with_pdb: true, profile_file: /tmp/p}\n", "sets profile_file, run_with_pdb"),
        ('stages:\n  - encode: {out: "{nope}"}\n', "uses {nope}, which is not among vars"),
        ("stages:\n  - encode: [out, x]\n", "must map flag names to values"),
        # The flag check compared whole keys: this one reached absl as --flagfile=/p/evil.flags= (any flag set).
        ('stages:\n  - verify: {location: x, "flagfile=/p/evil.flags": ""}\n', "'flagfile=/p/evil.flags', which"),
        ("stages:\n  - verify: {location: x, Location: y}\n", "'Location', which is not a flag name"),
        ("stages:\n  - verify: {location: x, dataset: demo}\n", "sets dataset: not flags of verify"),
        ("stages:\n  - seqsim: {store: s, measures: mean}\n", "not flags of seqsim; did you mean 'measure'? (`"),
        ("stages:\n  - align: {stor: s, outt: o}\n", "'out' for 'outt'?; did you mean 'store' for 'stor'?"),
        ("vars: {out: [a, b]}\nstages:\n  - encode: {out: x}\n", "variable 'out' must be a string, number or boolean"),
        ("stages:\n  - encode: {out: {a: 1}}\n", "--out must be a string, number or boolean, got a dict"),
        ("stages:\n  - encode: {out: }\n", "--out must be a string, number or boolean, got nothing"),
        ("vars: {a: &a [x, x]}\nstages:\n  - encode: {out: *a}\n", "uses the YAML alias *a at line 3"),
        # YAML keeps the last of two equal keys: the stage ran on B without a word (issue 61 item 7)
        ("stages:\n  - verify: {location: A, location: B}\n", "gives 'location' twice in one mapping (lines 2 and 2)"),
        ("vars:\n  out: a\n  out: b\nstages:\n  - encode: {}\n", "gives 'out' twice in one mapping (lines 2 and 3)"),
        # A matrix's names become folders under {out}: nothing that climbs out of it, nothing that collides.
        ("matrix: {m: {../x: a}}\nstages:\n  - encode: {out: '{run}'}\n", "'../x' cannot name a folder"),
        ("matrix: {m: [a, b]}\nstages:\n  - encode: {out: o, langs: '{m}'}\n", "writes --out=o in every combination"),
        ("matrix: {out: [a]}\nvars: {out: x}\nstages:\n  - encode: {out: o}\n", "axis 'out' must be a new name"),
        ("stages:\n  - encode: {out: o}\nafter:\n  - verify: {location: o}\n", "has 'after' stages but no 'matrix'"),
        ("stages:\n  - compare: {stores: {each: x}, out: o}\n", "{each: ...} is for the stages after a matrix"),
        ("stage:\n  - encode: {out: o}\n", "has 'stage': a study holds vars, matrix, stages"),  # the typo, named
        ("vars: {a: b}\n", "needs a 'stages' list"),
        (
            "vars: {out: o, runs: o/store/runs}\nstages:\n  - encode: {out: '{out}/store'}\n",
            "runs=o/store/runs lies inside stage 1 (encode)'s --out=o/store",
        ),
        ("stages:\n  - encode: {out: o}\nmatrx: {m: [a]}\n", "has 'matrx': a study holds vars, matrix, stages"),
    ],
)
def test_a_bad_study_file_is_a_named_error(tmp_path, text, message):
    from jobs.cli import StudyError, load_study

    study = tmp_path / "study.yaml"
    study.write_text(text)
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(str(study))


def test_a_flag_value_no_file_could_be_named_is_not_taken_for_a_path():
    """A full-FLEURS study's langs: 80 codes, one path component over 255 bytes; fingerprinting the stage's inputs
    asked the file system about it and died with OSError: File name too long (issue 61 item 7)."""
    from jobs.studies.records import external_inputs, local_path

    codes = ",".join(f"l{i:02d}_xx" for i in range(80))
    assert len(codes) > 255 and local_path(codes) is None
    assert external_inputs({"langs": codes, "dataset": f"folder:/{codes}"}, set()) == {}


@pytest.mark.parametrize("job", sorted(set(JOBS) - {"cli"}))
def test_every_help_example_parses_into_a_config(job):
    """Each `python -m jobs.<job> ...` example of --help, parsed by the job's flags and built into its config (no
    misspelt flag, bad value or missing required flag); the examples chain on the demo set's /tmp/demo-* folders.
    Flags and config load no JAX (what kept --help at 5-18 s): the job imports its pipeline after parsing."""
    proc = run(str(REPO / "tests" / "jobs" / "help_examples.py"), job)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.count("ok  ") >= 1
    assert "jax loaded: False" in proc.stdout, proc.stdout


def test_an_output_never_nests_with_what_the_job_reads(tmp_path):
    """One check for every job (``options.check_apart``, run by every config): an --out inside a store the job
    reads, or a store inside the --out, is refused before anything is opened. Retrieval writes beside its similarity
    store (its default --out), never inside it."""
    from engine.pipelines.align.config import AlignConfig
    from engine.pipelines.compare.config import CompareConfig
    from engine.pipelines.retrieval.config import RetrievalConfig
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.runtime.options import ConfigError, configure

    s, sim = str(tmp_path / "S"), str(tmp_path / "SIM")
    refused = [
        (AlignConfig, {"store": s, "out": s}, "out '.*/S' is store '.*/S'"),  # align --store S --out S
        (SimilarityConfig, {"store": s, "out": f"{s}/en"}, "out '.*/S/en' is inside store"),  # seqsim --out S/en
        (SimilarityConfig, {"store": f"file://{s}/", "out": s}, "is store 'file://"),  # one place, two spellings
        (SimilarityConfig, {"store": f"{tmp_path}/out/store", "out": f"{tmp_path}/out"}, "holds store"),
        (RetrievalConfig, {"similarity": sim, "out": f"{sim}/r"}, "is inside similarity"),
        (CompareConfig, {"stores": (s, f"{tmp_path}/c/T"), "out": f"{tmp_path}/c"}, "holds stores"),
        (CompareConfig, {"stores": (s,), "retrieval": (sim,), "out": f"{sim}/cmp"}, "is inside retrieval"),
    ]
    for cls, values, message in refused:
        with pytest.raises(ConfigError, match=message + ".*never nest"):
            configure(cls, **values)
    configure(RetrievalConfig, similarity=sim, out=sim)  # beside: retrieval.csv in the similarity store
    configure(SimilarityConfig, store=s, out=str(tmp_path / "S-sim"))  # a sibling whose name starts alike
    configure(CompareConfig, stores=(s, s), retrieval=("", sim), out=str(tmp_path / "c"))


# A job run as `python -m jobs.<job>` would run it, in a child that reports whether JAX was loaded when it stopped.
JOB_WITH_JAX_CHECK = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module("jobs." + sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    print("exit", e.code, "jax loaded:", "jax" in sys.modules)
"""


@pytest.mark.parametrize(
    ("job", "args", "named"),
    [
        ("seqsim", ["--store", "{missing}", "--out", "{out}"], "--store '{missing}' does"),
        ("retrieval", ["--similarity", "{missing}"], "--similarity '{missing}' does"),
        ("compare", ["--stores", "{store},file://{missing}", "--out", "{out}"], "--stores 'file://{missing}' does"),
        ("interp", ["--store", "{store}", "--words", "{missing}", "--out", "{out}"], "--words '{missing}' does"),
        ("probes", ["--store", "{empty}", "--out", "{out}"], "--store '{empty}' is no babelgrid store"),
        ("seqsim", ["--store", "{store}", "--out", "{out}"], "--store '{store}' does"),
        ("retrieval", ["--similarity", "file://{empty}"], "--similarity 'file://{empty}' is no babelgrid store"),
    ],
)
def test_a_missing_input_is_one_line_before_jax_loads(tmp_path, job, args, named):
    """A mistyped store path, or a folder that is no store: named in one line, without the job's --help, before JAX
    is imported (which took 8-37 s on a loaded machine). ``store``: a folder with a manifest, which passes this check
    (what the manifest holds is the job's to check once it runs)."""
    paths = {"missing": tmp_path / "no-such-store", "empty": tmp_path / "empty", "out": tmp_path / "out"}
    paths |= {"store": tmp_path / "store"}
    paths["empty"].mkdir()
    paths["store"].mkdir()
    (paths["store"] / "manifest.json").write_text("{}")
    if named == "--store '{store}' does":  # the manifest alone passes: the refusal is the job's own, after JAX
        proc = run("-c", JOB_WITH_JAX_CHECK, job, *(a.format(**paths) for a in args))
        assert "exit 1 jax loaded: True" in proc.stdout, proc.stdout + proc.stderr
        assert "ConfigError" not in proc.stderr and "StoreError" in proc.stderr, proc.stderr
        return
    proc = run("-c", JOB_WITH_JAX_CHECK, job, *(a.format(**paths) for a in args))
    assert "exit 1 jax loaded: False" in proc.stdout, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{job}: ConfigError: {named.format(**paths)}"), lines
    assert "check the path" in lines[0]
    assert not paths["out"].exists()


def test_a_data_error_in_a_plan_is_its_one_line_not_the_jobs_help(tmp_path):
    """--plan on a store whose manifest is not a layer store's: the plan's StoreError alone, not 73-117 lines of
    --help before it."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{}")
    proc = run("-m", "jobs.seqsim", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--plan")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("seqsim: StoreError: manifest.json in"), proc.stderr
    assert "flags:" not in proc.stderr and "python -m jobs.seqsim" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("flag", [["--ot_epsilon", "-1"], ["--ot_iterations", "0", "--measure", "ot"]])
def test_a_bad_ot_option_is_one_line(tmp_path, flag):
    """seqsim --ot_epsilon -1 gave a traceback from OtConfig, even without --measure ot (interp's was one line)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{}")
    proc = run("-m", "jobs.seqsim", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), *flag)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("seqsim: ConfigError: OT "), proc.stderr


def test_set_refuses_a_variable_the_study_does_not_have(tmp_path):
    """`--set otu=/data/x` was accepted, and the study ran into its default `out`: a name not among the study's vars
    (or `runs`) is refused with the names it has."""
    from jobs.cli import StudyError, load_study

    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    with pytest.raises(StudyError, match=re.escape("has no variable 'otu' (did you mean 'out'?); its variables: data")):
        load_study(str(study), ["otu=/data/x"])
    with pytest.raises(StudyError, match=re.escape("no variable 'speed'; its variables: data, model, out, runs")):
        load_study(str(study), ["out=/data/x", "speed=2"])
    loaded = load_study(str(study), ["out=/data/x", "runs=/data/runs"])
    assert loaded.variables["out"] == "/data/x" and loaded.runs == "/data/runs"
    assert loaded.stages[0].flags["out"] == "/data/x/store"
    proc = run("-m", "jobs.cli", "run", str(study), "--set", "otu=x", "--dry-run")
    assert proc.returncode == 2 and "did you mean 'out'?" in proc.stderr and not proc.stdout, proc.stdout + proc.stderr


def test_a_jobs_log_lines_print_plainly():
    """A job's log lines among its printed ones: the message alone (a warning marked), not absl's prefix of date,
    thread id and source line ("I1124 18:00:00.000000 140350979050368 run.py:12] ...")."""
    code = (
        "import logging\nfrom absl import logging as absl_logging\nfrom jobs import common\n"
        "def main():\n"
        "    logging.getLogger('engine.x').info('planned %d units', 3)\n"
        "    logging.getLogger('engine.x').warning('2 skipped')\n"
        "    absl_logging.info('absl says hello')\n"
        "    return 0\n"
        "common.run(main)\n"
    )
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "planned 3 units" in lines and "warning: 2 skipped" in lines and "absl says hello" in lines, lines
    assert not [line for line in lines if re.match(r"[IWEF]\d{4} \d\d:\d\d", line)], lines


@pytest.mark.parametrize(
    "error",
    [
        ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/out/a.csv\": Failed to write 80 bytes to file 6: "
                   "No space left on device [os_error_code='28']"),  # TensorStore's, as measured on a full tmpfs
        OSError(errno.ENOSPC, "No space left on device"),  # Python's own writes
    ],
)  # fmt: skip
def test_a_full_disk_ends_a_job_in_one_line_saying_how_to_resume(error, capsys, monkeypatch):
    """A write refused for want of space that no babelgrid code wrapped ended the job in a traceback."""
    from jobs.common import _without_traceback

    monkeypatch.delenv("BABELGRID_TRACEBACK", raising=False)

    def start(argv):
        raise error

    with pytest.raises(SystemExit) as ended:
        _without_traceback(start, [])
    lines = capsys.readouterr().err.strip().splitlines()
    assert ended.value.code == 1 and len(lines) == 1 and "the disk is full" in lines[0], lines
    assert "rerun the same command to resume" in lines[0]
    with pytest.raises(ValueError):  # any other failure keeps its traceback
        _without_traceback(lambda argv: int("x"), [])
