"""Own data with no parallel ids (issue 26): retrieval has nothing to rank, says how ids are made, exits non-zero and
draws no blank figure."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import soundfile

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


def job(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=patient(600))  # fmt: skip


def test_no_shared_id_ends_retrieval_with_the_fix_and_no_figure(tmp_path, tiny_model_dir):
    for lang, stems in {"fr": ["fleurs-fr-000", "fleurs-fr-001"], "pt": ["fleurs-pt-000", "fleurs-pt-001"]}.items():
        (tmp_path / "clips" / lang).mkdir(parents=True)
        for i, stem in enumerate(stems):
            x = 0.3 * np.sin(np.arange(9000 + 700 * i) * (0.05 + 0.03 * i))
            soundfile.write(tmp_path / "clips" / lang / f"{stem}.wav", x.astype(np.float32), 16000)
    store, sim = str(tmp_path / "store"), tmp_path / "sim"
    enc = ["--model", str(tiny_model_dir), "--dataset", f"folder:{tmp_path / 'clips'}", "--out", store]
    assert job("encode", *enc, "--allow_unpaired", "--progress=false").returncode == 0
    seq = job("seqsim", "--store", store, "--out", str(sim), "--measure", "mean", "--layers", "1", "--progress=false")
    assert seq.returncode == 0, seq.stderr
    proc = job("retrieval", "--similarity", str(sim))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RetrievalError: no directed pair" in proc.stderr and "same file name in every language" in proc.stderr
    assert not (sim / "retrieval.csv").exists() and not (sim / "figures").exists()
