"""The sae job end to end on a tiny-Whisper store (3 languages of noisy tones, 8 utterances each, ids shared), each
number recomputed from the exported files and the store by NumPy twins:

- the exported weights, applied to the stored states by the NumPy formula (``kernels.sae.reference_encode``, float64),
  give the FVU, L0 and per-language firing rates the job reports (tolerance: float32 against float64 sums over a few
  hundred frames, 1e-4 relative; a top-k choice between near-tied activations may differ, so rates to 2 frames);
- LAPE equals the entropy of the reported rates over languages, as ``stages.lape.reference_lape`` computes it;
- R@1 on stored and reconstructed states equals SeqSim's float64 twin and the retrieval loop twin;
- early exit (``--model``): the stored column's hypotheses are the decode job's at that layer (``--ln_post on``), the
  reconstructed column's are the model's decoder on the layer with its valid frames replaced by the SAE's
  reconstruction (recomputed here with the model's own encoder, ``ln_post`` and greedy search), and WER/CER are
  jiwer's on those strings after Whisper's normaliser;
- a run killed after a checkpoint and resumed writes the files of an uninterrupted run, byte for byte.
The kernel's parity with dictionary-learning is tests/kernels/test_sae.py's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.pipelines.sae.config import MIN_STEPS, SaeConfig, SaeError
from engine.pipelines.sae.export import encode as exported_encode
from engine.pipelines.sae.export import open_sae
from engine.pipelines.sae.run import run_sae
from engine.pipelines.stages import lape as lape_lib
from engine.runtime.options import ConfigError, configure
from engine.stores.reader import open_store
from kernels.metrics import reference_retrieval_metrics
from kernels.seqsim import reference_seqsim_matrix

LAYERS = (1, 3)
SETTINGS = dict(layers=LAYERS, epochs=2, batch_size=64, expansion=2, k=4, warmup=2, eval_utterances=6,
                activations=2, checkpoint_every=3, progress=False)  # fmt: skip
EXIT = dict(decode_utterances=3, max_new_tokens=6, decode_batch=4)  # the early exit, with --model
FLAGS = ["--layers", "1,3", "--epochs", "2", "--batch_size", "64", "--expansion", "2", "--k", "4", "--warmup", "2",
         "--eval_utterances", "6", "--activations", "2", "--checkpoint_every", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def job(worker_store, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "out"
    config = configure(SaeConfig, store=str(worker_store), out=str(out), model=str(tiny_model_dir), **SETTINGS, **EXIT)
    return out, run_sae(config)


def _metrics(out) -> dict[int, dict]:
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    return {int(r["layer"]): {k: float("nan" if v == "NA" else v) for k, v in r.items()} for r in rows}


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


def test_early_exit_from_stored_and_reconstructed_layers(job, worker_store, tiny_model_dir, tiny_whisper, tmp_path):
    import jiwer

    from engine.data.audio import load_audio
    from engine.models.whisper.decoding import DecodingOptions
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.hypotheses import read_hypotheses
    from engine.pipelines.decode.run import run_decode
    from engine.pipelines.sae.evaluate import apply
    from engine.text.metrics import normalizer_for

    out, summary = job
    store = open_store(str(worker_store))
    n, size = EXIT["decode_utterances"], EXIT["decode_batch"]
    # The decode job's early exit from the same layers (--ln_post on), for the stored column
    decoded = tmp_path / "decode"
    run_decode(configure(DecodeConfig, store=str(worker_store), model=str(tiny_model_dir), out=str(decoded),
                         layers=LAYERS, ln_post="on", max_new_tokens=EXIT["max_new_tokens"],
                         progress=False))  # fmt: skip
    theirs = read_hypotheses(str(decoded)).to_pandas()
    exits = csv.DictReader(io.StringIO((out / "early_exit.csv").read_text()))
    exits = {(int(r["layer"]), r["language"]): r for r in exits}
    metrics = _metrics(out)
    top = tiny_whisper.dims.n_audio_layer + 1
    columns = (("hypothesis", ""), ("hypothesis_reconstructed", "_reconstructed"))
    for layer in LAYERS:
        weights, cfg = open_sae(out / f"layer-{layer}")
        table = pq.read_table(out / f"layer-{layer}" / "early_exit.parquet").to_pandas()
        frames, ids = _frames(store, layer)
        pooled = {column: ([], []) for column, _ in columns}
        for lang in store.languages:
            mine = table[table.language == lang]
            assert mine["id"].tolist() == ids[lang][:n]
            job_rows = theirs[(theirs.language == lang) & (theirs.layer == layer)].set_index("id")
            assert mine["hypothesis"].tolist() == [job_rows.loc[i, "hypothesis"] for i in ids[lang][:n]]
            # The reconstruction standing in: the model's own layer (ln_post off), its valid frames replaced by the
            # exported SAE's reconstruction of the stored frames, then ln_post below the top; the job's batch shape
            rows = store.arrays(lang).rows
            mels = [tiny_whisper.features(load_audio(rows[u].path))[0][0] for u in range(n)]
            batch = np.stack(mels + [mels[0]] * (size - n))
            options = DecodingOptions(encoder_layer=layer, apply_ln_post=False)
            raw = np.array(tiny_whisper.audio_features(batch, options), np.float32)
            for r in range(n):
                raw[r, : len(frames[lang][r])] = apply(weights, 1.0, cfg["k"], frames[lang][r])[0]
            memory = raw if layer == top else tiny_whisper.model.encoder.ln_post(raw)
            options = DecodingOptions(language=lang, max_new_tokens=EXIT["max_new_tokens"])
            texts = tiny_whisper.transcribe(None, options, xa=memory).texts[:n]
            assert mine["hypothesis_reconstructed"].tolist() == [t.strip() for t in texts], (layer, lang)
            # WER and CER: jiwer on the normalised strings (CER without spaces, as the decode job scores it)
            norm = normalizer_for(lang)
            refs = [norm(t) for t in mine["reference"]]
            for column, suffix in columns:
                hyps = [norm(t) for t in mine[column]]
                assert float(exits[layer, lang][f"wer{suffix}"]) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
                cer = jiwer.cer(["".join(t.split()) for t in refs], ["".join(t.split()) for t in hyps])
                assert float(exits[layer, lang][f"cer{suffix}"]) == pytest.approx(cer, abs=1e-12)
                pooled[column][0].extend(refs)
                pooled[column][1].extend(hyps)
        for column, suffix in columns:
            expected = jiwer.wer(*pooled[column])
            assert metrics[layer][f"wer{suffix}"] == pytest.approx(expected, abs=1e-12)
            assert float(exits[layer, "all"][f"wer{suffix}"]) == pytest.approx(expected, abs=1e-12)
    assert "early exit WER" in summary.report()


def test_without_a_decoder_the_early_exit_is_named_not_scored(worker_store, tmp_path):
    out = tmp_path / "no-model"
    summary = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **{**SETTINGS, "layers": (3,)}))
    assert "early-exit WER/CER: not scored (give --model" in summary.report()
    assert np.isnan(_metrics(out)[3]["wer"]) and not (out / "early_exit.csv").exists()
    row = next(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))  # NA, as outputs.md says: not `nan`
    assert [row[c] for c in ("wer", "wer_reconstructed", "cer", "cer_reconstructed")] == ["NA"] * 4, row


def test_model_given_later_scores_the_early_exit_without_training_again(job, worker_store, tiny_model_dir, tmp_path):
    """sae.md's second command: ``--model`` on a folder trained without it was refused ("model: store has None").
    It now scores the early exit from the exported SAE, the trained layer's files untouched, and gives the numbers a
    run with ``--model`` from the start gives."""
    with_model, _ = job
    out = tmp_path / "later"
    settings = {**SETTINGS, **EXIT, "layers": (3,)}
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **settings))
    trained = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"
               and ("checkpoints" in p.parts or "parts" in p.parts or p.parent.name == "layer-3")}  # fmt: skip
    assert any("checkpoints" in p.parts for p in trained) and out / "parts" / "layer-3.npz" in trained
    summary = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), model=str(tiny_model_dir),
                                **settings))  # fmt: skip
    assert summary.trained == 0 and "early exit scored now for layers [3]" in summary.report(), summary.report()
    for path, data in trained.items():
        assert path.read_bytes() == data, path
    ours = (out / "early_exit.csv").read_text().splitlines()
    theirs = [r for r in (with_model / "early_exit.csv").read_text().splitlines() if r.startswith(("layer,", "3,"))]
    assert ours == theirs
    name = "layer-3/early_exit.parquet"
    assert (out / name).read_bytes() == (with_model / name).read_bytes()
    assert _metrics(out)[3]["wer"] == _metrics(with_model)[3]["wer"]
    rerun = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **settings))  # without it again
    assert "early exit WER" in rerun.report() and (out / "early_exit.csv").read_text().splitlines() == ours


def test_a_kill_after_a_checkpoint_resumes_to_the_same_files(job, worker_store, tiny_model_dir, tmp_path, run_job):
    out, _ = job
    resumed = tmp_path / "resumed"
    exits = [f"--{name}={value}" for name, value in EXIT.items()]
    args = ["--store", str(worker_store), "--out", str(resumed), "--model", str(tiny_model_dir), *FLAGS, *exits]
    killed = run_job("sae", *args, expect=None, env={"BABELGRID_FAULT_KILL": "after_checkpoint:2"})
    assert killed.returncode != 0
    assert (resumed / "layer-1" / "checkpoints").is_dir() and not (resumed / "metrics.csv").exists()
    # The resume in this process (the same settings as the flags; its compiled step is the fixture's)
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(resumed), model=str(tiny_model_dir), **SETTINGS,
                      **EXIT))  # fmt: skip
    for name in (
        "metrics.csv",
        "selective_features.csv",
        "features.parquet",
        "layer-1/sae_weights.safetensors",
        "layer-3/sae_weights.safetensors",
        "parts/layer-1.npz",  # the loss history before the kill too (issue 82 F9: it read NaN, and final_loss)
        "parts/layer-3.npz",
        "activations/layer-1/en.safetensors",
        "early_exit.csv",
        "layer-1/early_exit.parquet",
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
    assert not (tmp_path / "c" / "manifest.json").exists()  # before the record: the corrected rerun goes on (F10)
    for bad in ({"seed": -1}, {"auxk_alpha": float("nan")}, {"lr": float("inf")}):
        with pytest.raises(ConfigError, match="seed must be >= 0|finite number"):
            configure(SaeConfig, store=str(worker_store), out=str(tmp_path / "d"), **bad)


def test_features_line_up_with_the_neurons_jobs_units(job, worker_clips, worker_store, tiny_model_dir, tmp_path):
    """The alignment's every number from units.parquet and features.parquet by a NumPy loop: LAPE over the shared
    languages (``stages.lape.reference_lape``), the sae job's bar, the shares, and scipy's Spearman over the cells."""
    from scipy import stats

    from engine.pipelines.neurons.config import NeuronsConfig
    from engine.pipelines.neurons.run import run_neurons
    from engine.pipelines.sae.evaluate import SELECTIVE

    out, _ = job
    neurons = tmp_path / "neurons"
    run_neurons(configure(NeuronsConfig, model=str(tiny_model_dir), dataset=f"folder:{worker_clips}",
                          out=str(neurons), progress=False))  # fmt: skip
    # Every layer is done: the rerun with --neurons only writes the outputs again (neurons is not a pinned setting)
    summary = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), model=str(tiny_model_dir),
                                neurons=str(neurons), **SETTINGS, **EXIT))  # fmt: skip
    assert summary.trained == 0 and "neurons alignment" in summary.report()
    cells = list(csv.DictReader(io.StringIO((out / "neurons_alignment.csv").read_text())))
    aligned = json.loads((out / "neurons_alignment.json").read_text())
    units = pq.read_table(neurons / "units.parquet").to_pandas()
    features = pq.read_table(out / "features.parquet").to_pandas()
    langs = aligned["languages"]
    assert langs == list(open_store(str(worker_store)).languages) and aligned["layers"] == [1]  # blocks: 1..2
    expected = []
    for layer in aligned["layers"]:
        theirs = units[units.layer == layer].sort_values("unit")
        mine = features[features.layer == layer].pivot(index="language", columns="feature", values="rate")
        for kind, rates in (("sae", mine.loc[langs].to_numpy()), ("units", np.stack(
                [theirs[f"rate_{lang}"].to_numpy() for lang in langs]))):  # fmt: skip
            h, _, _ = lape_lib.reference_lape(rates[:, None, :] * 1e6, np.full(len(langs), 1e6))
            h = h[0] / np.log(len(langs))
            live = np.isfinite(h)
            for i, lang in enumerate(langs):
                chosen = live & (h < SELECTIVE) & (rates[i] == rates.max(axis=0))
                row = next(c for c in cells if int(c["layer"]) == layer and c["language"] == lang)
                assert (
                    int(row[f"{kind}_selective"]) == chosen.sum()
                    and int(row[kind if kind == "units" else "sae_features"]) == live.sum()
                )
                assert float(row[f"{kind}_share"]) == pytest.approx(chosen.sum() / max(live.sum(), 1), abs=1e-12)
            owned = [sum(lang in str(x).split(",") for x in theirs[theirs.selected]["languages"]) for lang in langs]
            assert [int(next(c for c in cells if int(c["layer"]) == layer and c["language"] == lang)["units_selected"])
                    for lang in langs] == owned  # fmt: skip
        expected += [(float(c["sae_share"]), float(c["units_share"])) for c in cells if int(c["layer"]) == layer]
    a, b = np.array(expected).T
    if np.ptp(a) > 0 and np.ptp(b) > 0 and len(a) >= 3:
        assert aligned["spearman_rho"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    else:
        assert aligned["spearman_rho"] is None
    assert (out / "figures" / "sae_neurons.png").stat().st_size > 0
    # A neurons folder sharing no layer with the run (layer 3 is ln_post: no block) is refused before any training
    refused = tmp_path / "refused"
    with pytest.raises(SaeError, match="none of the SAE's"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(refused), neurons=str(neurons),
                          **{**SETTINGS, "layers": (3,)}))  # fmt: skip
    assert not (refused / "layer-3").exists()


def _part(out, layer) -> dict:
    return dict(np.load(out / "parts" / f"layer-{layer}.npz"))


def test_steps_trains_exactly_that_many_and_flags_an_undertrained_sae(worker_store, tmp_path, capsys):
    """--steps wins over --epochs and runs on past an epoch's end (8 batches of 64 here): the loss history, metrics,
    cfg.json and the folder's settings all hold that count. Five steps leave the loss falling: the summary says so and
    what to give. Every stage has its own bar, each run to its total (issue 87: the bar sat at 100% while the
    evaluation ran for minutes)."""
    out = tmp_path / "steps"
    settings = {**SETTINGS, "layers": (1,), "epochs": 1, "steps": 11, "progress": True}
    summary = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **settings))
    part = _part(out, 1)
    assert len(part["losses"]) == 11 and np.isfinite(part["losses"]).all() and int(part["steps"]) == 11
    assert _metrics(out)[1]["steps"] == 11
    _, cfg = open_sae(out / "layer-1")
    assert cfg["steps"] == 11 and cfg["epochs"] == pytest.approx(11 / 8)
    recorded = json.loads((out / "manifest.json").read_text())
    assert recorded["steps"] == 11 and recorded["epochs"] is None
    report = summary.report()
    assert "layer 1: undertrained" in report and "give --steps 22" in report, report
    bars = capsys.readouterr().err
    for stage, total in (("train", 11), ("evaluate", 24 + 4)):
        assert re.search(rf"sae layer 1 \(1/1\): {stage}: 100%\S* +{total}/{total}", bars), (stage, bars[-2000:])


def test_the_default_trains_at_least_the_floor_and_the_folder_pins_the_count(worker_store, tmp_path, monkeypatch):
    """Without --steps or --epochs: 10 epochs, raised to MIN_STEPS when the store is small (the demo's 10 epochs were
    60 steps). The folder records the count trained, so a resume giving the same count as --steps goes on and one of
    another count (from --steps or --epochs) is refused before anything is trained."""
    from engine.pipelines.sae import config as config_lib

    small = configure(SaeConfig, store=str(worker_store), out=str(tmp_path / "x"))
    assert config_lib.total_steps(small, 8) == config_lib.MIN_STEPS >= 1000
    assert config_lib.total_steps(small, 1000) == 10_000  # a large store: its 10 epochs
    monkeypatch.setattr(config_lib, "MIN_STEPS", 90)  # a floor this test trains in a second (8 batches an epoch)
    settings = {**SETTINGS, "layers": (1,), "epochs": None}
    out = tmp_path / "default"
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **settings))
    assert len(_part(out, 1)["losses"]) == 90 == _metrics(out)[1]["steps"]  # 10 epochs would be 80 steps
    again = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **{**settings, "steps": 90}))
    assert again.trained == 0
    # the shuffling buffer (--memory_budget) sets the batches: a resume with another trained other weights
    with pytest.raises(SaeError, match=r"buffer_frames: store has \d+, this run \d+"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), memory_budget="1MiB",
                          **{**settings, "steps": 90}))  # fmt: skip
    for other in ({"steps": 89}, {"epochs": 3}):
        with pytest.raises(SaeError, match="other settings: steps"):
            run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **{**settings, **other}))


def test_a_folder_trained_before_steps_were_recorded_resumes_by_its_epochs(worker_store, tmp_path):
    """A folder of before 64c0ec2 recorded ``epochs`` and no ``steps``: read as the steps its epochs were (8 batches
    an epoch here), so the same --epochs goes on without training, and another count is refused naming the steps."""
    import json

    from engine.stores.records import json_bytes

    settings = {**SETTINGS, "layers": (1,), "epochs": None}
    out = tmp_path / "old"
    run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **{**settings, "steps": 16}))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["steps"]
    del manifest["inputs"]["buffer_frames"]  # nor the buffer: not compared then
    (out / "manifest.json").write_bytes(json_bytes({**manifest, "epochs": 2}))  # as the older version wrote it
    again = run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), memory_budget="1MiB",
                              **{**settings, "epochs": 2}))  # fmt: skip
    assert again.trained == 0
    with pytest.raises(SaeError, match="other settings: steps"):
        run_sae(configure(SaeConfig, store=str(worker_store), out=str(out), **{**settings, "epochs": 3}))


def test_a_rerun_on_a_store_that_changed_is_refused_not_given_the_old_layers(job, worker_store, tmp_path):
    """A probe ran sae on a store whose encode had been killed, resumed the encode, and ran sae again: exit 0 with
    the partial store's numbers byte for byte. The folder records the store's utterances done; a folder written
    before it recorded them is read as before."""
    import json
    import shutil

    from engine.stores.records import json_bytes

    out = tmp_path / "sae"
    shutil.copytree(job[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    partial = {**manifest["inputs"]["utterances_done"], "de": manifest["inputs"]["utterances_done"]["de"] - 2}
    (out / "manifest.json").write_bytes(json_bytes({**manifest, "inputs": {**manifest["inputs"],
                                                                           "utterances_done": partial}}))  # fmt: skip
    config = configure(SaeConfig, store=str(worker_store), out=str(out), **SETTINGS, **EXIT)
    with pytest.raises(SaeError, match=r"computed from other inputs than this run's: utterances_done\.de: store has "):
        run_sae(config)
    del manifest["inputs"]
    (out / "manifest.json").write_bytes(json_bytes(manifest))
    assert run_sae(config).trained == 0


def test_plan_prints_steps_frames_and_time_and_writes_nothing(worker_store, tmp_path, run_job):
    out = tmp_path / "planned"
    result = run_job("sae", "--store", str(worker_store), "--out", str(out), "--layers", "1,3", "--batch_size", "64",
                     "--expansion", "2", "--k", "4", "--plan")  # fmt: skip
    text = result.stdout
    assert "plan: sae" in text and "frames: 533 a layer (24 utterances in 3 languages)" in text, text
    floor = f"steps: {MIN_STEPS:,} a layer (the default's floor: 10 epochs would be 80)"
    assert floor in text, text
    assert re.search(r"^  train .* s$", text, re.M) and re.search(r"^  evaluate ", text, re.M), text
    assert not out.exists()


def test_r1_over_one_candidate_is_not_reported():
    """A store of one utterance per language gave r1 = r1_reconstructed = 1.0 (one candidate is found whatever
    the states): NaN, written NA."""
    from engine.pipelines.sae.evaluate import _mean_r1

    rng = np.random.default_rng(0)
    one = {lang: [rng.standard_normal((5, 8)).astype(np.float32)] for lang in ("de", "en")}
    assert np.isnan(_mean_r1(one, {"de": ["s0"], "en": ["s0"]}))
    two = {lang: [rng.standard_normal((5, 8)).astype(np.float32) for _ in range(2)] for lang in ("de", "en")}
    assert np.isfinite(_mean_r1(two, {"de": ["s0", "s1"], "en": ["s0", "s1"]}))
