"""`babelgrid run` as a lab uses it: outputs checked before a stage is skipped, only what a change reaches rerun, the
versions that made a stage recorded, --only and --until, a matrix of models with a stage that reads them all, and the
same study run by Snakemake from the Snakefile it emits.

One study is run once per module (``done``) and shared by the tests after it, in the order written: each leaves it
complete as it found it, but the last, which changes its flags. (A copy cannot stand in: a similarity store records
its layer store's absolute path, and refuses another.)"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.stores.reader import open_store
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
STUDY = """
vars:
  out: run
  model: unset
  data: unset
  measure: "seqsim,mean"
stages:
  - encode: {out: "{out}/store", model: "{model}", dataset: "folder:{data}", batch_size: 4, progress: false}
  - seqsim: {store: "{out}/store", out: "{out}/similarity", measure: "{measure}", progress: false}
  - retrieval: {similarity: "{out}/similarity"}
  - verify: {location: "{out}/store", progress: false}
"""
MATRIX = """
vars:
  out: unset
  data: unset
  permutations: 0
matrix:
  model: {one: unset, two: unset}
stages:
  - encode: {out: "{run}/store", model: "{model}", dataset: "folder:{data}", progress: false}
after:
  - compare: {stores: {each: "{run}/store"}, names: {each: "{matrix}"}, out: "{out}/compare", measures: cka,
              levels: utterance, null_permutations: "{permutations}"}
"""


def babelgrid(*args: str, cwd: pathlib.Path = REPO, console: bool = False) -> subprocess.CompletedProcess:
    """``babelgrid run ARGS`` in ``cwd``: what the runner and its stages' processes print, and its exit status.

    In this process by default (``jobs.studies.run.run_study``, the console script's ``run``): each stage is still a
    process of its own, as the runner starts it, and its output is captured at the file descriptors, in order with the
    runner's (it flushes every line). The console script's own process and its child that lists the jobs' flags
    (``jobs.studies.spec.job_flags``, cached in this process) were two of every call's processes. ``console``: through
    the console script `pip install -e .` made (else ``python -m jobs.cli``), as a user types it; the module
    fixtures' study runs go that way."""
    env = dict(PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="")
    if console:
        script = pathlib.Path(sys.executable).parent / "babelgrid"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]
        return subprocess.run([*command, "run", *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=patient(300))  # fmt: skip
    from jobs.studies.run import run_study

    saved_env, saved_cwd = {k: os.environ.get(k) for k in env}, os.getcwd()
    sys.stdout.flush(), sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            os.environ.update(env)
            os.chdir(cwd)
            with open(1, "w", buffering=1, closefd=False) as stdout, open(2, "w", buffering=1, closefd=False) as stderr:
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                    try:
                        code = run_study(list(args))
                    except SystemExit as e:
                        code = e.code if isinstance(e.code, int) else 1
        finally:
            os.chdir(saved_cwd)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0]), os.close(saved_fds[1])
        out.seek(0), err.seek(0)
        said = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return subprocess.CompletedProcess(["babelgrid", "run", *args], code, *said)


def lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """Stage title ('1 encode', 'one/1 encode') -> what the runner said of it."""
    said = {}
    for line in proc.stdout.splitlines():
        if line.startswith("[") and "]" in line:
            where, _, rest = line[1:].partition("] ")
            job, _, what = rest.partition(": ")
            combination, _, number = where.rpartition(" ")
            name = f"{combination}/{number.split('/')[0]}" if combination else number.split("/")[0]
            if not what.startswith("verify: "):  # babelgrid verify's report, line by line
                said.setdefault(f"{name} {job}", what)
    return said


def clips(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for lang in ("en", "de"):
        (root / lang).mkdir(parents=True)
        for i in range(3):
            x = 0.3 * np.sin(np.arange(int(SAMPLE_RATE * rng.uniform(0.4, 1.2))) * rng.uniform(0.05, 0.3))
            sf.write(root / lang / f"s{i}.wav", x.astype(np.float32), SAMPLE_RATE)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    return clips(tmp_path_factory.mktemp("study-clips") / "clips")


@pytest.fixture(scope="module")
def done(tiny_model_dir, data, tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
    """The study run to completion in a folder of its own: (folder, the --set arguments)."""
    folder = tmp_path_factory.mktemp("study-done")
    (folder / "study.yaml").write_text(STUDY)
    settings = ["--set", f"model={tiny_model_dir}", "--set", f"data={data}"]
    proc = babelgrid("study.yaml", *settings, cwd=folder, console=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, settings


def test_a_deleted_output_reruns_its_stage_alone(done):
    """A deleted pair of the similarity store reruns seqsim alone (retrieval read the same pairs); a deleted
    language of the layer store reruns encode, the stage that owns it, and nothing after it: the job writes the same
    keys again. Before, the first was 'complete ... skipped' and retrieval scored 4 of 6 directions. A chunk
    truncated in place keeps its name: --verify reads the checksums, repairs (marks it not done) and reruns."""
    folder, settings = done
    before = (folder / "run" / "similarity" / "retrieval.csv").read_text()
    shutil.rmtree(folder / "run" / "similarity" / "mean" / "de__en")
    proc = babelgrid("study.yaml", *settings, cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = lines(proc)
    assert said["2 seqsim"].startswith("runs (its output run/similarity missing: mean/de__en)"), said
    assert all("skipped" in said[s] for s in ("1 encode", "3 retrieval", "4 verify")), said
    assert (folder / "run" / "similarity" / "mean" / "de__en" / "ids.json").is_file()
    assert (folder / "run" / "similarity" / "retrieval.csv").read_text() == before
    shutil.rmtree(folder / "run" / "store" / "de")
    proc = babelgrid("study.yaml", *settings, cwd=folder)
    said = lines(proc)
    assert said["1 encode"].startswith("runs (its output run/store missing: de/lengths, de/states"), said
    assert all("skipped" in said[s] for s in ("2 seqsim", "3 retrieval", "4 verify")), said
    assert open_store(str(folder / "run" / "store")).languages() == ["de", "en"]
    chunk = folder / "run" / "similarity" / "seqsim" / "de__en" / "c.2.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated in place: its name is still listed
    assert all("skipped" in v for v in lines(babelgrid("study.yaml", *settings, "--dry-run", cwd=folder)).values())
    proc = babelgrid("study.yaml", *settings, "--verify", "--only", "seqsim", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = lines(proc)
    assert "seqsim/de__en/c.2.0.0" in proc.stdout and "DAMAGED: 1" in proc.stdout, proc.stdout
    assert said["2 seqsim"].startswith("runs (verify found damage in its output run/similarity)"), said


def snakemake_or_skip() -> pathlib.Path:
    snakemake = pathlib.Path(sys.executable).parent / "snakemake"
    if not snakemake.exists():  # the test extra installs it on Python >= 3.11; CI fails on this skip
        pytest.skip("snakemake is not installed (pip install -e '.[studies]')")
    return snakemake


def test_snakemake_finds_nothing_to_do_after_babelgrid_run_completes(done):
    """The Snakefile's idea of complete is `babelgrid run`'s: seqsim rerun to repair a deleted pair leaves retrieval
    complete (it read the same pairs), and Snakemake, which judges a rule by its record's time against its inputs',
    has nothing to do. Before, it reran retrieval (and, after an encode repair, two stages). Its own files
    (.snakemake/) go beside the records, not into the folder it was started in."""
    folder, settings = done
    shutil.rmtree(folder / "run" / "similarity" / "mean" / "de__en")
    proc = babelgrid("study.yaml", *settings, cwd=folder)
    assert "[2/4] seqsim: runs (its output run/similarity missing: mean/de__en)" in proc.stdout, proc.stdout
    assert "[3/4] retrieval: complete" in proc.stdout, proc.stdout  # a note on versions may come first
    emit = babelgrid("study.yaml", *settings, "--emit", "snakefile", cwd=folder)
    assert emit.returncode == 0, emit.stderr
    (folder / "Snakefile").write_text(emit.stdout)
    proc = subprocess.run([str(snakemake_or_skip()), "-n", "--snakefile", "Snakefile", "--cores", "1"], cwd=folder,
                          capture_output=True, text=True, timeout=patient(300))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (folder / ".snakemake").exists() and (folder / "run" / "runs" / ".snakemake").is_dir()
    (folder / "Snakefile").unlink()


def _rewrite(record: pathlib.Path, change) -> None:
    from engine.stores.records import json_bytes

    value = json.loads(record.read_text())
    change(value)
    record.write_bytes(json_bytes(value))


def test_a_changed_version_is_reported_and_reruns_only_with_rerun_code(done):
    """Each record holds babelgrid's version and commit, JAX's version and the model's identity. Another version
    is reported and the stage still skipped; --rerun code redoes it and what reads it. A damaged record is named."""
    folder, settings = done
    record = json.loads((folder / "run" / "runs" / "01-encode.json").read_text())
    assert set(record["versions"]) == {"babelgrid", "commit", "jax", "model"}
    assert record["versions"]["model"].startswith("folder "), record["versions"]
    saved = {p: p.read_bytes() for p in (folder / "run" / "runs").glob("*.json")}
    _rewrite(folder / "run" / "runs" / "01-encode.json", lambda r: r["versions"].update(jax="0.4.1"))
    said = lines(babelgrid("study.yaml", *settings, "--dry-run", cwd=folder))
    assert said["1 encode"].startswith("note: made with other versions (jax 0.4.1 -> "), said
    assert "`--rerun code` redoes it" in said["1 encode"]
    assert all("skipped" in said[s] for s in ("2 seqsim", "3 retrieval", "4 verify")), said
    said = lines(babelgrid("study.yaml", *settings, "--dry-run", "--rerun", "code", cwd=folder))
    assert "would run (--rerun code: jax 0.4.1 -> " in said["1 encode"], said
    assert said["4 verify"].startswith("would run (stage 1 (encode), whose output it reads"), said
    (folder / "run" / "runs" / "03-retrieval.json").write_text('{"job": "retrieval"')
    said = lines(babelgrid("study.yaml", *settings, "--dry-run", cwd=folder))
    assert said["3 retrieval"].startswith("its record cannot be read ("), said
    for path, value in saved.items():
        path.write_bytes(value)


def test_only_and_until_select_stages(done, tmp_path):
    folder, settings = done
    (folder / "run" / "similarity" / "retrieval.csv").unlink()
    (folder / "run" / "similarity" / "asymmetry.csv").unlink()
    proc = babelgrid("study.yaml", *settings, "--only", "retrieval", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = lines(proc)
    assert list(said) == ["3 retrieval"] and "missing: asymmetry.csv, retrieval.csv" in said["3 retrieval"], said
    assert (folder / "run" / "similarity" / "retrieval.csv").is_file()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "study.yaml").write_text(STUDY)
    said = lines(babelgrid("study.yaml", *settings, "--dry-run", "--until", "seqsim", cwd=fresh))
    assert list(said) == ["1 encode", "2 seqsim"], said
    bad = babelgrid("study.yaml", *settings, "--until", "allign", cwd=fresh)
    assert bad.returncode == 2 and "--until allign: no such stage; give a number or a job of: 1 (encode)" in bad.stderr


def test_a_change_reruns_what_reads_it_and_nothing_else(done):
    """seqsim's measures changed: seqsim and retrieval (which reads its output) run, encode and the verify stage
    (which reads only encode's) are skipped; --dry-run prints the graph and the reasons first."""
    folder, settings = done[0], [*done[1], "--set", "measure=mean"]
    dry = babelgrid("study.yaml", *settings, "--dry-run", cwd=folder)
    assert "  1 encode -> 2 seqsim, 4 verify\n  2 seqsim -> 3 retrieval" in dry.stdout, dry.stdout
    said = lines(dry)
    assert said["2 seqsim"].startswith("would run (flags changed: --measure)"), said
    assert said["3 retrieval"].startswith("would run (stage 2 (seqsim), whose output it reads, runs again)"), said
    assert "skipped" in said["1 encode"] and "skipped" in said["4 verify"], said
    proc = babelgrid("study.yaml", *settings, "--rerun", "changed", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = lines(proc)
    assert said["2 seqsim"].startswith("runs (flags changed: --measure)") and said["3 retrieval"].startswith("runs")
    assert "skipped" in said["1 encode"] and "skipped" in said["4 verify"], said
    assert len(list((folder / "run").glob("similarity.stale-*"))) == 1


@pytest.fixture(scope="module")
def matrix(tiny_model_dir, data, tmp_path_factory) -> tuple[pathlib.Path, list[str], subprocess.CompletedProcess]:
    """A matrix of two models (the tiny Whisper under two seeds) and a compare stage after it."""
    from tests.conftest import write_tiny_hf_folder

    folder = tmp_path_factory.mktemp("study-matrix")
    two = write_tiny_hf_folder(folder / "tiny-two", seed=7)
    (folder / "study.yaml").write_text(MATRIX.replace("one: unset", f"one: {tiny_model_dir}").replace(
        "two: unset", f"two: {two}"))  # fmt: skip
    settings = ["--set", f"data={data}"]
    proc = babelgrid("study.yaml", "--set", f"out={folder / 'babelgrid'}", *settings, cwd=folder, console=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, settings, proc


def test_a_matrix_runs_every_combination_and_a_stage_after_reads_them_all(matrix):
    folder, _, proc = matrix
    said = lines(proc)
    assert list(said) == ["one/1 encode", "two/1 encode", "2 compare"], said
    out = folder / "babelgrid"
    one, two = (open_store(str(out / name / "store")) for name in ("one", "two"))
    assert one.info.model_name != two.info.model_name
    import pandas as pd

    table = pd.read_csv(out / "compare" / "by_depth.csv")
    assert sorted(set(table["model"])) == ["one", "two"], table.head()
    records = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("*.json"))
    assert records == ["02-compare.json", "one/01-encode.json", "two/01-encode.json"]


def test_the_emitted_snakefile_runs_to_the_same_outputs_under_snakemake(matrix):
    folder, settings, _ = matrix
    out = folder / "snakemake"
    emit = babelgrid("study.yaml", "--set", f"out={out}", *settings, "--emit", "snakefile", cwd=folder)
    assert emit.returncode == 0, emit.stderr
    assert emit.stdout.count("\nrule stage_") == 3 and "--only one/1" in emit.stdout, emit.stdout
    (folder / "Snakefile").write_text(emit.stdout)
    snakemake = snakemake_or_skip()
    proc = subprocess.run([str(snakemake), "--snakefile", "Snakefile", "--cores", "1", "--quiet"], cwd=folder,
                          capture_output=True, text=True, timeout=patient(300))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = folder / "babelgrid"
    assert (out / "compare" / "by_depth.csv").read_text() == (ours / "compare" / "by_depth.csv").read_text()
    for name in ("one", "two"):
        a, b = open_store(str(ours / name / "store")), open_store(str(out / name / "store"))
        for lang in a.languages():
            for layer in a.info.layers:
                np.testing.assert_array_equal(a.language_layer(lang, layer)[0], b.language_layer(lang, layer)[0])
    again = babelgrid("study.yaml", "--set", f"out={out}", *settings, "--dry-run", cwd=folder)
    assert again.stdout.count("output and inputs unchanged: skipped") == 3, again.stdout
    # A flag of the study edited, the Snakefile not emitted again: Snakemake reruns that stage's rule, and only it.
    # Its rules carried no flags, and it found nothing to do, even with the Snakefile emitted again (newcomer probe).
    study = (folder / "study.yaml").read_text()
    (folder / "study.yaml").write_text(study.replace("permutations: 0", "permutations: 2"))
    dry = [str(snakemake), "-n", "--snakefile", "Snakefile", "--cores", "1"]
    proc = subprocess.run(dry, cwd=folder, capture_output=True, text=True, timeout=patient(300))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "rule stage_2_compare:" in said and "rule stage_one_1_encode" not in said, said
    assert "params have changed" in said.lower(), said
    (folder / "study.yaml").write_text(study.replace("permutations: 0", "permutations: [2"))  # no longer loads
    proc = subprocess.run(dry, cwd=folder, capture_output=True, text=True, timeout=patient(300))
    assert proc.returncode != 0 and "the study does not load" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (folder / "study.yaml").write_text(study)


def test_changed_data_reruns_encode_on_request(done, data):
    """A clip added after the study completed (the module's last test: it changes the clips): encode is not
    skipped, the job refuses its old store with its own message, which `babelgrid run` follows with the remedy
    (--rerun changed, whose moving aside test_a_change_reruns_what_reads_it_and_nothing_else runs)."""
    folder, settings = done[0], [*done[1], "--set", "measure=mean"]
    x = 0.3 * np.sin(np.arange(int(SAMPLE_RATE * 0.8)) * 0.2)
    for lang in ("en", "de"):
        sf.write(data / lang / "s9.wav", x.astype(np.float32), SAMPLE_RATE)
    said = lines(babelgrid("study.yaml", *settings, "--dry-run", cwd=folder))
    assert said["1 encode"].startswith("would run (inputs changed since it completed: --dataset=folder:"), said
    assert said["2 seqsim"].startswith("would run (stage 1 (encode), whose output it reads, runs again)"), said
    again = babelgrid("study.yaml", *settings, cwd=folder)
    assert again.returncode != 0 and "skipped" not in again.stdout, again.stdout
    assert "StoreMismatchError" in again.stderr and "--rerun changed" in again.stderr, again.stderr
    assert "it completed before, and inputs changed since it completed: --dataset=folder:" in again.stderr


def test_the_documented_studies_load(tmp_path):
    """BUILD.md's complete example and the bundled demo-matrix: every key a flag of its job, the matrix expanded,
    the shared encode stage once, the after-stages reading every combination."""
    from jobs.studies.graph import dependencies
    from jobs.studies.spec import load_study

    text = (REPO / "BUILD.md").read_text()
    example = text[text.index("# study.yaml: FLEURS") : text.index("```", text.index("# study.yaml: FLEURS"))]
    (tmp_path / "study.yaml").write_text(example)
    study = load_study(str(tmp_path / "study.yaml"))
    assert [s.name for s in study.stages][:3] == ["small/1", "medium/1", "small/2"] and len(study.stages) == 11
    compare = study.stages[-1]
    assert compare.flags["stores"] == "/data/runs/whisper/small/store,/data/runs/whisper/medium/store"
    assert {a.name for _, a in dependencies(study.stages)[compare.name]} >= {"small/1", "medium/1"}
    demo = load_study("demo-matrix")
    assert [s.name for s in demo.stages] == ["1", "raw/2", "centred/2", "raw/3", "centred/3", "4"]
    assert demo.stages[2].flags["remove_language"] == "mean" and demo.stages[1].flags["out"].endswith("raw/similarity")
