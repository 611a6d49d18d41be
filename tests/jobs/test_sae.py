"""The sae job end to end on a tiny-Whisper store (3 languages of noisy tones, 8 utterances each, ids shared), each
number recomputed from the exported files and the store by NumPy twins:

- the exported weights, applied to the stored states by the NumPy formula (``kernels.sae.reference_encode``, float64),
  give the FVU, L0 and per-language firing rates the job reports (tolerance: float32 against float64 sums over a few
  hundred frames, 1e-4 relative; a top-k choice between near-tied activations may differ, so rates to 2 frames);
- LAPE equals the entropy of the reported rates over languages, as ``neurons.lape.reference_lape`` computes it;
- R@1 on stored and reconstructed states equals SeqSim's float64 twin and the retrieval loop twin;
- a run killed after a checkpoint and resumed writes the files of an uninterrupted run, byte for byte.
The kernel's parity with dictionary-learning is tests/kernels/test_sae.py's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.pipelines.neurons import lape as lape_lib
from engine.pipelines.sae.config import SaeConfig, SaeError
from engine.pipelines.sae.export import encode as exported_encode
from engine.pipelines.sae.export import open_sae
from engine.pipelines.sae.run import run_sae
from engine.runtime.options import configure
from engine.stores.reader import open_store
from kernels.metrics import reference_retrieval_metrics
from kernels.seqsim import reference_seqsim_matrix

LAYERS = (1, 3)
SETTINGS = dict(layers=LAYERS, epochs=2, batch_size=64, expansion=2, k=4, warmup=2, eval_utterances=6,
                activations=2, checkpoint_every=3, progress=False)  # fmt: skip
FLAGS = ["--layers", "1,3", "--epochs", "2", "--batch_size", "64", "--expansion", "2", "--k", "4", "--warmup", "2",
         "--eval_utterances", "6", "--activations", "2", "--checkpoint_every", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def job(worker_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "out"
    return out, run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **SETTINGS))


def _metrics(out) -> dict[int, dict]:
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    return {int(r["layer"]): {k: float(v) for k, v in r.items()} for r in rows}


def _frames(store, layer):
    """language -> [f32[valid, embed] per done utterance, in store order], and language -> ids."""
    out, ids = {}, {}
    for lang in store.languages:
        lengths = store.lengths(lang)
        done = np.flatnonzero(lengths > 0)
        states, _ = store.language_layer(lang, layer, done, np.float32)
        out[lang] = [states[i, : lengths[u]] for i, u in enumerate(done)]
        table = store.utterances_table(lang).column("id").to_pylist()
        ids[lang] = [str(table[u]) for u in done]
    return out, ids


def test_exported_weights_give_the_reported_numbers(job, worker_store):
    out, summary = job
    store = open_store(str(worker_store))
    metrics = _metrics(out)
    features = pq.read_table(out / "features.parquet").to_pandas()
    for layer in LAYERS:
        weights, cfg = open_sae(out / f"layer-{layer}")
        assert weights["W_enc"].shape == (64, 128) and cfg["layer"] == layer and cfg["k"] == 4
        frames, _ = _frames(store, layer)
        x = np.concatenate([f for lang in store.languages for f in frames[lang]]).astype(np.float64)
        z = exported_encode(weights, cfg, x)
        x_hat = z @ weights["W_dec"].astype(np.float64) + weights["b_dec"]
        fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
        assert metrics[layer]["fvu"] == pytest.approx(fvu, rel=1e-4)
        assert metrics[layer]["l0"] == pytest.approx(np.mean((z > 0).sum(axis=1)), rel=1e-3)
        own = features[features.layer == layer]
        start = 0
        for lang in store.languages:
            n = sum(len(f) for f in frames[lang])
            rates = (z[start : start + n] > 0).mean(axis=0)
            start += n
            reported = own[own.language == lang].sort_values("feature")["rate"].to_numpy()
            assert np.abs(reported - rates).max() <= 2 / n + 1e-12, (layer, lang)
        # LAPE: the entropy over languages of the reported rates (neurons' twin), NaN for features that never fire
        table = own.pivot(index="language", columns="feature", values="rate").loc[list(store.languages)].to_numpy()
        entropy, _, _ = lape_lib.reference_lape(table[:, None, :] * 1000, np.full(len(table), 1000))
        lape = own[own.language == store.languages[0]].sort_values("feature")["lape"].to_numpy()
        np.testing.assert_allclose(lape, entropy[0], rtol=1e-9, equal_nan=True)
    assert summary.trained == len(LAYERS) and "layer" in summary.report()


def _mean_r1(utterances, ids):
    values = []
    for a, b in itertools.combinations(utterances, 2):
        pad = {}
        for lang in (a, b):
            lengths = np.array([len(f) for f in utterances[lang]])
            padded = np.zeros((len(lengths), lengths.max(), utterances[lang][0].shape[1]))
            for i, f in enumerate(utterances[lang]):
                padded[i, : len(f)] = f
            pad[lang] = (padded, lengths)
        scores = reference_seqsim_matrix(*pad[a], *pad[b])[0]
        values += [reference_retrieval_metrics(scores, ids[a], ids[b], ks=(1,)).recall[1],
                   reference_retrieval_metrics(scores.T, ids[b], ids[a], ks=(1,)).recall[1]]  # fmt: skip
    return float(np.mean(values))


def test_retrieval_on_stored_and_reconstructed_states(job, worker_store):
    out, _ = job
    store = open_store(str(worker_store))
    layer = LAYERS[-1]
    weights, cfg = open_sae(out / f"layer-{layer}")
    frames, ids = _frames(store, layer)
    first = {lang: frames[lang][:6] for lang in frames}
    first_ids = {lang: ids[lang][:6] for lang in ids}
    rebuilt = {lang: [exported_encode(weights, cfg, f) @ weights["W_dec"] + weights["b_dec"] for f in first[lang]]
               for lang in first}  # fmt: skip
    metrics = _metrics(out)[layer]
    assert metrics["r1"] == pytest.approx(_mean_r1(first, first_ids), abs=1e-6)
    assert metrics["r1_reconstructed"] == pytest.approx(_mean_r1(rebuilt, first_ids), abs=1e-6)
    assert 0 <= metrics["lid"] <= 1 and 0 <= metrics["lid_reconstructed"] <= 1


def test_sparse_activations_are_the_exported_features(job, worker_store):
    out, _ = job
    from safetensors import safe_open
    from safetensors.numpy import load_file

    store = open_store(str(worker_store))
    layer = LAYERS[0]
    weights, cfg = open_sae(out / f"layer-{layer}")
    frames, ids = _frames(store, layer)
    path = out / "activations" / f"layer-{layer}" / "de.safetensors"
    kept = load_file(path)
    with safe_open(path, "np") as f:
        assert json.loads(f.metadata()["ids"]) == ids["de"][:2]
    z = exported_encode(weights, cfg, np.concatenate(frames["de"][:2]))
    assert kept["lengths"].tolist() == [len(f) for f in frames["de"][:2]]
    dense = np.zeros_like(z)
    rows = np.arange(len(z))[:, None]
    np.put_along_axis(dense, np.maximum(kept["indices"], 0), np.where(kept["indices"] >= 0, kept["values"], 0), 1)
    np.testing.assert_allclose(dense[rows, np.arange(z.shape[1])], z, atol=1e-4)


def test_a_kill_after_a_checkpoint_resumes_to_the_same_files(job, worker_store, tmp_path, run_job):
    out, _ = job
    resumed = tmp_path / "resumed"
    args = ["--store", str(worker_store), "--out", str(resumed), *FLAGS]
    killed = run_job("sae", *args, expect=None, env={"BABELGRID_FAULT_KILL": "after_checkpoint:2"})
    assert killed.returncode != 0
    assert (resumed / "layer-1" / "checkpoints").is_dir() and not (resumed / "metrics.csv").exists()
    # The resume in this process (the same settings as the flags; its compiled step is the fixture's)
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(resumed), **SETTINGS))
    for name in (
        "metrics.csv",
        "selective_features.csv",
        "features.parquet",
        "layer-1/sae_weights.safetensors",
        "layer-3/sae_weights.safetensors",
        "parts/layer-3.npz",
        "activations/layer-1/en.safetensors",
    ):
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name


def test_refusals(worker_store, tmp_path):
    with pytest.raises(SaeError, match="local folder"):
        configure(SaeConfig, store=str(worker_store), out="s3://bucket/sae")
    with pytest.raises(SaeError, match="two or more languages"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(tmp_path / "a"), langs=("de",)))
    with pytest.raises(SaeError, match="no layer"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(tmp_path / "b"), layers=(9,)))
    with pytest.raises(SaeError, match="do not fill one batch"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(tmp_path / "c"), layers=(1,),
                          batch_size=100000, progress=False))  # fmt: skip
