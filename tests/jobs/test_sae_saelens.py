"""The sae job's SAEs opened by SAELens (sae-lens 6.54.12, PyTorch), the tool analysts train and read SAEs with.

``sae_lens.SAE.load_from_disk`` on a ``layer-<L>/`` folder of a BatchTopK run (the job's default kind) gives SAELens's
``TopKSAE``, and applied to every stored frame of the layer it reproduces the FVU and L0 the job wrote in
``metrics.csv`` and the features of the exported formula (``engine.pipelines.sae.export.encode``). The job's own
numbers against NumPy twins are tests/jobs/test_sae.py's.

sae-lens is installed for tests with ``--no-deps`` (Makefile, setup-test): its import needs transformer-lens, and
that one wandb, whose wheel brings a 60 MB service binary and OpenTelemetry for logging training runs. Loading and
applying an SAE never logs, so a placeholder module stands in for wandb, and any use of it fails loudly.
"""

from __future__ import annotations

import csv
import importlib.machinery
import io
import json
import sys
import types

import numpy as np
import pytest

from engine.pipelines.sae.config import SaeConfig
from engine.pipelines.sae.export import encode as exported_encode
from engine.pipelines.sae.export import open_sae
from engine.pipelines.sae.run import run_sae
from engine.runtime.options import configure
from engine.stores.reader import open_store

LAYER = 2
SETTINGS = dict(layers=(LAYER,), epochs=2, batch_size=64, expansion=2, k=4, warmup=2, eval_utterances=2,
                activations=0, checkpoint_every=1000, progress=False)  # fmt: skip


def _saelens():
    """``sae_lens.SAE``, with a placeholder for wandb where wandb is not installed (module docstring)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        stub = types.ModuleType("wandb")
        stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

        def missing(name):
            raise AttributeError(f"wandb is a placeholder in babelgrid's tests (wandb.{name}); loading SAEs needs none")

        stub.__getattr__ = missing
        sys.modules["wandb"] = stub
    from sae_lens import SAE

    return SAE


@pytest.fixture(scope="module")
def job(worker_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae-saelens") / "out"
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **SETTINGS))
    return out


def _stored_frames(store, layer) -> np.ndarray:
    """f32[frames, embed]: every valid frame of ``layer``, language after language."""
    chunks = []
    for lang in store.languages:
        lengths = store.lengths(lang)
        done = np.flatnonzero(lengths > 0)
        states, _ = store.language_layer(lang, layer, done, np.float32)
        chunks += [states[i, : lengths[u]] for i, u in enumerate(done)]
    return np.concatenate(chunks)


def test_saelens_loads_the_sae_and_reproduces_fvu_and_l0(job, worker_store):
    import torch

    SAE = _saelens()
    folder = job / f"layer-{LAYER}"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["training_architecture"] == "batchtopk"
    sae = SAE.load_from_disk(str(folder))
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == 4 and (sae.cfg.d_in, sae.cfg.d_sae) == (64, 128)
    assert sae.cfg.metadata.hook_name == f"layer {LAYER}"

    x = _stored_frames(open_store(str(worker_store)), LAYER)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(z).numpy().astype(np.float64)
    z = z.numpy()
    weights, ours = open_sae(folder)
    np.testing.assert_allclose(z, exported_encode(weights, ours, x), atol=1e-4)  # the same features, float32
    x = x.astype(np.float64)
    fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
    rows = {int(r["layer"]): r for r in csv.DictReader(io.StringIO((job / "metrics.csv").read_text()))}
    assert float(rows[LAYER]["fvu"]) == pytest.approx(fvu, rel=1e-5)
    assert float(rows[LAYER]["l0"]) == np.mean((z > 0).sum(axis=1))
