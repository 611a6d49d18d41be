"""What a hostile or careless user hit (issue 82), each case refused before a model runs where it can be: matrix
names that collide, a value that broke the emitted Snakefile, tracebacks where one line belongs, a language given
twice, sizes bounded before anything is allocated or recorded, and the console script that could not run typology."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from engine.runtime.options import ConfigError, configure
from jobs.studies.spec import StudyError, load_study
from tests.jobs.conftest import job_env
from tests.waits import patient

SHORT = 400  # characters: an error that names the problem, not the 3-million-item list it came from


def _study(folder: pathlib.Path, text: str, name: str = "study.yaml") -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``babelgrid ARGS`` through the console script `pip install -e .` installed: as a user runs it."""
    script = pathlib.Path(sys.executable).parent / "babelgrid"
    assert script.exists(), f"no console script {script}: pip install -e . makes it"
    return subprocess.run([str(script), *args], cwd=cwd, env=job_env(), capture_output=True, text=True,
                          timeout=patient(300))  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The error a job ended with: one line, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and len(lines[-1]) < 2 * SHORT, proc.stderr[-3000:]
    return lines[-1]


# -- F3: matrix names -----------------------------------------------------------------------------------------------

MATRIX = """
vars: {{out: out}}
matrix:
  {axes}
stages:
  - verify: {{location: "{{run}}/store"}}
"""


def test_matrix_names_are_joined_so_that_no_two_combinations_share_a_folder(tmp_path):
    """(a, b-c) and (a-b, c) were both a-b-c: 4 combinations ran as 3. Joined with '--', the 4 have 4 folders."""
    study = load_study(_study(tmp_path, MATRIX.format(axes="x: [a, a-b]\n  y: [b-c, c]")))
    assert sorted(study.combinations) == ["a--b-c", "a--c", "a-b--b-c", "a-b--c"]
    assert len({s.flags["location"] for s in study.stages}) == 4 == len(study.stages)


@pytest.mark.parametrize(
    ("axes", "said"),
    [
        ("x: [a--b, c]", "holds '--'"),  # the joiner inside a name
        ("x: [a-, c]\n  y: [d, e]", "ends with '-'"),
        ("x: [1, '1']", "lists one name twice"),  # both the name '1'
        ("x: [base, Base]", "would run in one folder"),  # one folder on a case-insensitive disk
        ("x: [a, A]\n  y: [b, c]", "would run in one folder"),
    ],
)
def test_matrix_names_that_would_share_a_folder_are_refused(tmp_path, axes, said):
    with pytest.raises(StudyError, match=said):
        load_study(_study(tmp_path, MATRIX.format(axes=axes)))


# -- F20: a Snakefile that parses whatever the values ----------------------------------------------------------------


def test_a_newline_in_a_set_value_is_refused(tmp_path, capsys):
    from jobs.studies.run import run_study

    spec = _study(tmp_path, "vars: {out: out}\nstages:\n  - verify: {location: '{out}/store'}\n")
    assert run_study([spec, "--set", "out=a\nb", "--emit", "snakefile"]) == 2
    err = capsys.readouterr().err
    assert "newline or another control character" in err and len(err.splitlines()) == 1, err


def test_the_emitted_snakefile_parses_whatever_the_names(tmp_path):
    """A study file whose name holds a newline, quotes, a backslash and braces (the Snakefile's comment line and its
    shell strings carry it), and matrix names whose rule names were one (a.b and a_b): snakemake reads the file and
    plans every rule. Before, a newline ended the string literal (and the comment line), and two rules shared a
    name: snakemake refused the file, after babelgrid had exited 0."""
    snakemake = pathlib.Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():  # the test extra installs it on Python >= 3.11; CI fails on this skip
        pytest.skip("snakemake is not installed (pip install 'snakemake>=9')")
    text = "vars: {out: out}\nmatrix:\n  x: [a.b, a_b]\nstages:\n  - verify: {location: '{run}/store'}\n"
    spec = _study(tmp_path, text, name='my "odd"\nstudy\\{x}.yaml')
    emit = _run("run", spec, "--set", "out=it's {here} $(true) é", "--emit", "snakefile", cwd=tmp_path)
    assert emit.returncode == 2 and "holds a brace, which Snakemake reads as a wildcard" in emit.stderr, emit.stderr
    emit = _run("run", spec, "--set", "out=it's {here} $(true) é", "--set", f"runs={tmp_path / 'runs'}", "--emit",
                "snakefile", cwd=tmp_path)  # fmt: skip
    assert emit.returncode == 0, emit.stderr
    (tmp_path / "Snakefile").write_text(emit.stdout)
    proc = subprocess.run([str(snakemake), "--snakefile", "Snakefile", "--dry-run", "--cores", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=patient(300))  # fmt: skip
    assert proc.returncode == 0, emit.stdout + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage_a_b_1_verify" in emit.stdout and "stage_a_b_1_verify_2" in emit.stdout, emit.stdout


# -- F19: one line, not a traceback ----------------------------------------------------------------------------------


def test_a_deeply_nested_study_is_refused_in_one_line(tmp_path):
    spec = _study(tmp_path, "vars: {out: " + "[" * 5000 + "]" * 5000 + "}\nstages: []\n")
    with pytest.raises(StudyError, match="nests deeper than 20 levels at line 1"):
        load_study(spec)


def test_a_study_file_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes("vars: {out: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(StudyError, match=r"is not UTF-8 text \(byte 15\)"):
        load_study(str(path))


def test_a_full_disk_under_runs_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """The stage completed (its job is stubbed: it exits 0), then writing its record fails with ENOSPC."""
    import engine.stores.kv
    import jobs.studies.run as run_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_module, "run_stage", lambda command: (0, None))
    monkeypatch.setattr(engine.stores.kv, "write_value", full)
    spec = _study(tmp_path, f"vars: {{out: {tmp_path / 'out'}}}\nstages:\n  - verify: {{location: '{{out}}/store'}}\n")
    assert run_module.run_study([spec]) == 1
    err = capsys.readouterr().err
    assert "completed, but its record could not be written" in err and "No space left on device" in err, err
    assert len(err.strip().splitlines()) == 1, err


# The stage the runner waits on: it says it is ready, and on SIGTERM releases (prints) and exits 3, as a job does.
STAGE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("stage released", flush=True), sys.exit(3)))
open(sys.argv[1], "w").close()
time.sleep(120)
"""
RUNNER = """
import sys
from jobs.studies.run import run_stage
print("runner got", run_stage([sys.executable, "-c", sys.argv[1], sys.argv[2]]), flush=True)
"""


def test_a_stop_signal_to_the_study_runner_stops_its_stage_and_waits(tmp_path, monkeypatch, capsys):
    """SIGTERM to `babelgrid run` killed the runner at once; its stage's job ran on, orphaned, holding the store,
    and the next run was refused as a second writer (a probe's). The runner passes the signal on and waits."""
    import signal
    import time

    import jobs.studies.run as run_module

    ready = tmp_path / "ready"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, STAGE, str(ready)], env=job_env(), stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    deadline = time.monotonic() + patient(60)
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the runner's handlers are set right after it started the stage
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=patient(60))
    assert runner.returncode == 0 and out.splitlines() == ["stage released", f"runner got (3, {int(signal.SIGTERM)})"]
    # SIGKILL to the runner, which no handler sees: the kernel sends the stage SIGTERM (jobs.gang.stop_with_runner,
    # which every job's start calls), so it stops as a stopped job does instead of running on orphaned
    ready.unlink()
    released = tmp_path / "released"
    stage = STAGE.replace('print("stage released", flush=True)', f"open({str(released)!r}, 'w').close()")
    watch = "from jobs.gang import stop_with_runner\nstop_with_runner()\n"
    stage = stage.replace("time.sleep(120)", watch + "time.sleep(120)")
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, stage, str(ready)], env=job_env())
    deadline = time.monotonic() + patient(60)
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the stage's prctl, after it said it was ready
    runner.kill()
    runner.wait(timeout=patient(60))
    deadline = time.monotonic() + patient(60)
    while not released.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert released.exists(), "the stage ran on after its runner was killed"
    # ... and the run ends there, the stages after it not run, with the signal's status
    monkeypatch.setattr(run_module, "run_stage", lambda command: (3, signal.SIGTERM))
    spec = _study(tmp_path, f"vars: {{out: {tmp_path / 'out'}}}\nstages:\n  - verify: {{location: '{{out}}/a'}}\n"
                  "  - verify: {location: '{out}/b'}\n")  # fmt: skip
    assert run_module.run_study([spec]) == 128 + signal.SIGTERM
    said = capsys.readouterr()
    assert "SIGTERM: stage 1 (verify) was stopped (exit 3); the stages after it were not run" in said.err, said
    assert "[1/2] verify" in said.out and "[2/2]" not in said.out, said.out


def test_a_compile_cache_that_is_a_file_is_refused_in_one_line(worker_store, tmp_path, run_job):
    (tmp_path / "cache").write_text("not a folder")
    proc = run_job("seqsim", "--store", str(worker_store), "--out", str(tmp_path / "sim"), "--compile_cache",
                   str(tmp_path / "cache"), expect=1)  # fmt: skip
    assert "--compile_cache" in _one_line(proc) and "is a file" in _one_line(proc), proc.stderr[-3000:]
    assert not (tmp_path / "sim").exists()


# -- F4: a language given twice --------------------------------------------------------------------------------------

CONFIGS = {  # every job config with a list of languages: its module, its class
    "align": ("engine.pipelines.align.config", "AlignConfig"),
    "challenge": ("engine.pipelines.challenge.run", "ChallengeConfig"),
    "compare": ("engine.pipelines.compare.config", "CompareConfig"),
    "decode": ("engine.pipelines.decode.config", "DecodeConfig"),
    "encode": ("engine.pipelines.encode.config", "EncodeConfig"),
    "finetune": ("engine.pipelines.finetune.config", "FinetuneConfig"),
    "heads": ("engine.pipelines.heads.config", "HeadsConfig"),
    "interp": ("engine.pipelines.interp.config", "InterpConfig"),
    "mixing": ("engine.pipelines.mixing.config", "MixingConfig"),
    "neurons": ("engine.pipelines.neurons.config", "NeuronsConfig"),
    "outliers": ("engine.pipelines.outliers.config", "OutliersConfig"),
    "probe": ("engine.pipelines.probe.config", "ProbeConfig"),
    "probes": ("engine.pipelines.probes.config", "ProbesConfig"),
    "retrieval": ("engine.pipelines.retrieval.config", "RetrievalConfig"),
    "sae": ("engine.pipelines.sae.config", "SaeConfig"),
    "seqsim": ("engine.pipelines.seqsim.config", "SimilarityConfig"),
    "series": ("engine.pipelines.series.config", "SeriesConfig"),
    "typology": ("engine.pipelines.typology.config", "TypologyConfig"),
}


def _config_class(job: str):
    module, name = CONFIGS[job]
    return getattr(importlib.import_module(module), name)


def _with(cls, tmp_path: pathlib.Path, **values):
    """``cls`` with every required field given a placeholder (a path under ``tmp_path``), then ``values``."""
    given = {}
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if field.name != "run" and (required or (field.metadata or {}).get("required")):
            path = str(tmp_path / field.name)
            given[field.name] = (path,) if "tuple" in str(field.type) else path
    return configure(cls, out=str(tmp_path / "out"), **{**given, **values})


@pytest.mark.parametrize("job", sorted(CONFIGS))
def test_every_job_refuses_a_language_given_twice(job, tmp_path):
    cls = _config_class(job)
    fields = [f.name for f in dataclasses.fields(cls) if f.name == "langs" or f.name.endswith("_langs")]
    assert fields, job
    for name in fields:
        with pytest.raises(ConfigError, match=r"\['en'\] given more than once"):
            _with(cls, tmp_path, **{name: ("en", "en", "de")})


def test_heads_refuses_en_en_de_before_it_runs(worker_store, tmp_path, run_job):
    """The issue's case: heads scored en against itself (R@1 1.0) and raised en's R@1 from 0.50 to 0.75."""
    proc = run_job("heads", "--store", str(worker_store), "--out", str(tmp_path / "out"), "--langs",
                   "en,en,de", expect=None)  # fmt: skip
    assert proc.returncode != 0 and "given more than once" in _one_line(proc), proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


# -- F11, F21: sizes bounded before anything is allocated or recorded ------------------------------------------------


def test_a_layer_range_is_bounded_before_it_is_expanded():
    from engine.runtime.options import MAX_LAYER, parse_layers

    for text in ("1-100000000", "1-3000000", str(MAX_LAYER + 1)):
        with pytest.raises(ConfigError, match=f"layer indices run from 0 to {MAX_LAYER}") as e:
            parse_layers(text)
        assert len(str(e.value)) < SHORT
    assert parse_layers(f"0-{MAX_LAYER}") == tuple(range(MAX_LAYER + 1))


@pytest.mark.parametrize("job", ["decode", "heads", "mixing", "outliers", "probes", "retrieval", "sae", "typology"])
def test_a_notebook_layer_list_is_bounded_and_its_error_short(job, tmp_path):
    """A tuple of 3 million layers given to a config (not through the flag): refused in one short line."""
    with pytest.raises(ConfigError, match="out of range") as e:
        _with(_config_class(job), tmp_path, layers=tuple(range(3_000_000)))
    assert len(str(e.value)) < SHORT


def _planted_similarity(root: pathlib.Path, langs=("de", "en", "es")) -> pathlib.Path:
    """A similarity store of three languages, six utterances each, at layers 0 and 1: translations score higher."""
    from engine.stores.similarity import SimilarityStore, done_marker, new_manifest

    ids = [f"s{i}" for i in range(6)]
    manifest = new_manifest(layer_store=str(root / "layers"), model_name="planted", checkpoint_sha256="0" * 64,
                            layers=(0, 1))  # fmt: skip
    store = SimilarityStore.create_or_open(str(root / "sim"), manifest)
    rng = np.random.default_rng(0)
    rows = {"row_ids": ids, "col_ids": ids, "row_recording": list(range(6)), "col_recording": list(range(6))}
    for i, a in enumerate(langs):
        for b in langs[i + 1 :]:
            array = store.create_pair("seqsim", a, b, rows)
            for layer in (0, 1):
                scores = (rng.standard_normal((6, 6)) + 2 * np.eye(6)).astype(np.float32)
                store.write_layer(array, "seqsim", a, b, layer, scores, done_marker(np.arange(6), np.arange(6)))
    return root / "sim"


def test_retrieval_says_a_huge_layer_range_in_one_short_line(tmp_path, run_job):
    sim = _planted_similarity(tmp_path)
    proc = run_job("retrieval", "--similarity", str(sim), "--layers", "1-3000000", expect=None)
    assert proc.returncode != 0 and len(proc.stdout) + len(proc.stderr) < 20_000, len(proc.stderr)
    assert "layer indices run from 0 to" in proc.stderr, proc.stderr[-3000:]


def test_a_missing_item_list_is_cut_short():
    from engine.listing import chosen

    class Missing(ValueError):
        pass

    with pytest.raises(Missing) as e:
        chosen("layer", tuple(range(3, 1_000_000)), [0, 1, 2], Missing)
    assert len(str(e.value)) < SHORT and "(999985 more)" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("sizes", "said"),
    [
        (dict(expansion=1, k=65), "--k 65 is more than the dictionary's 64 features"),  # F21
        (dict(expansion=10**7), "--expansion 10000000 and --batch_size 4096 over the store's 64 dimensions need"),
        (dict(batch_size=10**13), "--batch_size 10000000000000 over the store's 64 dimensions need"),
    ],
)
def test_sae_refuses_sizes_before_anything_is_recorded(worker_store, tmp_path, sizes, said):
    from engine.pipelines.sae.config import SaeConfig, SaeError
    from engine.pipelines.sae.run import run_sae

    out = tmp_path / "sae"
    with pytest.raises(SaeError, match=said.replace("(", r"\(")) as e:
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), layers=(1,), progress=False, **sizes))
    assert len(str(e.value)) < SHORT and not out.exists(), str(e.value)


def test_random_model_sizes_are_bounded_before_a_weight_is_drawn(tmp_path):
    from engine.models.random_folder import write_random_folder

    for sizes, said in ((dict(layers=1_000_000), "layers must be at most 256"),
                        (dict(width=1 << 20), "width must be at most 8192"),
                        (dict(layers=256, width=8192), "GiB of weights")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            write_random_folder("whisper", tmp_path / "m", **sizes)
        assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_random_model_says_layers_1000000_in_one_line(tmp_path, run_job):
    proc = run_job("random_model", "--kind", "whisper", "--out", str(tmp_path / "m"), "--layers", "1000000",
                   expect=1)  # fmt: skip
    assert "layers must be at most 256" in _one_line(proc) and not (tmp_path / "m").exists()


# -- F12: the console script runs typology ---------------------------------------------------------------------------


def test_the_console_script_runs_typology(tmp_path):
    """``bin/`` is the console script's sys.path[0], and lang2vec installs ``bin/lang2vec.py``: ``import lang2vec``
    found the script, and ``babelgrid typology`` always crashed. Through the installed script, on a similarity store
    of three languages URIEL lacks (so that lang2vec is imported and asked, and the job ends there in seconds): its
    own one-line refusal, which only lang2vec's package can lead to."""
    if not (pathlib.Path(sys.executable).parent / "lang2vec.py").exists():
        pytest.skip("lang2vec installs no bin/lang2vec.py here: nothing shadows it")  # the case the fix is for
    _planted_similarity(tmp_path, langs=("xx", "yy", "zz"))
    proc = _run("typology", "--similarity", str(tmp_path / "sim"), "--out", str(tmp_path / "typology"),
                "--permutations", "9", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "URIEL has 0 of the store's languages" in _one_line(proc), proc.stderr[-3000:]
