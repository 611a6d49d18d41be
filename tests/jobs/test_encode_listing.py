"""The encode job checks a dataset's parallel ids before it writes anything (issue 26: own data with no parallel ids
gave empty results that looked like success)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import soundfile

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


def encode(tmp_path, model, data, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    args = ["--model", str(model), "--dataset", f"folder:{data}", "--out", str(tmp_path / "store"), *extra]
    return subprocess.run(
        [sys.executable, "-m", "jobs.encode", "--progress=false", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(600),
    )  # fmt: skip


def clips(root: pathlib.Path, names: dict[str, list[str]]) -> pathlib.Path:
    for lang, stems in names.items():
        (root / lang).mkdir(parents=True)
        for i, stem in enumerate(stems):
            x = 0.3 * np.sin(np.arange(8000 + 800 * i) * (0.05 + 0.02 * i))
            soundfile.write(root / lang / f"{stem}.wav", x.astype(np.float32), 16000)
    return root


def test_no_shared_ids_stops_before_encoding_with_the_fix(tmp_path, tiny_model_dir):
    data = clips(tmp_path / "clips", {"fr": ["fleurs-fr-000", "fleurs-fr-001"], "pt": ["fleurs-pt-000"]})
    proc = encode(tmp_path, tiny_model_dir, data)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DatasetError" in proc.stderr and "same file name in every language folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()  # nothing written, the lease included
    allowed = encode(tmp_path, tiny_model_dir, data, "--allow_unpaired")
    assert allowed.returncode == 0, allowed.stderr
    assert "shared ids per language pair: fr-pt 0" in allowed.stdout


def test_shared_ids_are_printed_per_pair(tmp_path, tiny_model_dir):
    data = clips(tmp_path / "clips", {"en": ["s1", "s2"], "de": ["s1", "s2"], "sv": ["s2"]})
    proc = encode(tmp_path, tiny_model_dir, data)
    assert proc.returncode == 0, proc.stderr
    assert "shared ids per language pair: de-en 2, de-sv 1, en-sv 1" in proc.stdout


def test_a_flat_folder_takes_its_language_from_the_flag(tmp_path, tiny_model_dir):
    data = clips(tmp_path / "flat", {"": ["a", "b"]})
    refused = encode(tmp_path, tiny_model_dir, data)
    assert refused.returncode == 1 and "give its language (--lang en" in refused.stderr, refused.stderr
    proc = encode(tmp_path, tiny_model_dir, data, "--lang", "sv")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "store" / "sv").is_dir()
