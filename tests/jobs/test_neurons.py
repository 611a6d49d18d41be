"""The neurons job end to end, and LAPE against its loop twin.

The job runs the tiny random Whisper (and a small random wav2vec2) over real FLEURS clips of two "languages" (the
translation pairs of tests/jobs/test_families.py); every count it writes is recomputed here by running the model's
``ffn_active`` on each utterance alone (an independent batching: one window per call, no padding rows), and the
ranking by the NumPy loop ``reference_lape``. Counts: equal but for activations at 0 within float32 rounding, whose
sign another batching's summation order may flip (at most ``FLIPS`` counts a language; measured 0 here). The ranking
is checked on the job's own counts: rates and LAPE to 1e-12.
"""

from __future__ import annotations

import csv
import io
import json

import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.data.audio import load_audio
from engine.models.whisper.features import features_for_audio
from engine.pipelines.neurons.config import NeuronsConfig, NeuronsError
from engine.pipelines.neurons.run import run_neurons
from engine.pipelines.stages import lape
from engine.runtime.options import configure
from tests.jobs.test_families import LANGS, family_clips

FLIPS = 2  # counts a language may differ by between two batchings (module docstring)


def test_lape_equals_its_loop_twin():
    rng = np.random.default_rng(0)
    frames = rng.integers(50, 500, 5)
    counts = (rng.uniform(0, 1, (5, 3, 40)) ** 3 * frames[:, None, None]).astype(np.int64)
    counts[:, 1, 7] = 0  # never active: no LAPE
    counts[2, 2, 3] = frames[2]  # fires for one language only
    counts[[0, 1, 3, 4], 2, 3] = 0
    got = lape.lape(list("abcde"), counts, frames, 0.9, 0.05)
    h, tau, selected = lape.reference_lape(counts, frames, 0.9, 0.05)
    np.testing.assert_allclose(got.entropy, h, rtol=1e-12, equal_nan=True)
    assert got.threshold == pytest.approx(tau) and np.array_equal(got.selected, selected)
    assert np.isnan(got.entropy[1, 7]) and got.entropy[2, 3] == 0.0 and got.selected[2, 3]
    assert got.belongs[2, 2, 3] and not got.belongs[[0, 1, 3, 4], 2, 3].any()
    assert selected.sum() == int(0.05 * 3 * 40)
    with pytest.raises(ValueError, match="at least one valid frame"):
        lape.rates(counts, np.zeros(5))


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("neuron-clips")
    return family_clips(fleurs_dir, root)


def test_counts_and_ranking_recomputed(clips, tiny_model_dir, tiny_whisper, tmp_path):
    out = tmp_path / "out"
    config = configure(NeuronsConfig, out=str(out), model=str(tiny_model_dir), dataset=f"folder:{clips}",
                       batch_size=3, rate_quantile=0.9, lape_share=0.05, top=4)  # fmt: skip
    summary = run_neurons(config)
    assert summary.counted == 2 and summary.languages == 2
    counts, frames = [], []
    for lang in sorted(LANGS):
        with np.load(out / "counts" / f"{lang}.npz", allow_pickle=False) as f:
            got = {name: f[name] for name in f.files}
        want, n = 0, 0
        for path in sorted((clips / lang).glob("*.ogg")):
            mel, valid = features_for_audio(load_audio(path), tiny_whisper.dims.n_mels)
            want = want + np.asarray(tiny_whisper.model.encoder.ffn_active(jnp.asarray(mel), jnp.asarray(valid)))
            n += int(valid.sum())
        assert np.abs(got["counts"] - want).sum() <= FLIPS and int(got["frames"]) == n, lang
        assert int(got["utterances"]) == 2 and int(got["skipped"]) == 0
        counts.append(got["counts"])
        frames.append(n)
    h, tau, selected = lape.reference_lape(np.stack(counts), np.array(frames), 0.9, 0.05)
    units = pq.read_table(out / "units.parquet").to_pandas()
    assert len(units) == h.size and list(units.layer.unique()) == list(range(1, h.shape[0] + 1))
    np.testing.assert_allclose(units.lape.to_numpy(float), h.ravel(), rtol=1e-12, equal_nan=True)
    assert np.array_equal(units.selected.to_numpy(bool), selected.ravel())
    for i, lang in enumerate(sorted(LANGS)):
        np.testing.assert_allclose(units[f"rate_{lang}"], (counts[i] / frames[i]).ravel(), rtol=1e-12)
    rows = list(csv.DictReader(io.StringIO((out / "selective_units.csv").read_text())))
    for r in rows:  # every listed unit is selected and belongs to its language
        layer, unit = int(r["layer"]), int(r["unit"])
        assert selected[layer - 1, unit] and counts[sorted(LANGS).index(r["lang"])][layer - 1, unit] / frames[
            sorted(LANGS).index(r["lang"])] >= tau  # fmt: skip
    assert (out / "figures" / "selective_units.png").stat().st_size > 0
    again = run_neurons(config)  # the counts are read back, nothing is counted twice
    assert again.counted == 0 and again.selected == summary.selected
    # The ranking's settings rank the same counts again (issue 62: they were refused, the counts thrown away); the
    # counting's settings are still pinned
    ranked = run_neurons(configure(NeuronsConfig, out=str(out), model=str(tiny_model_dir), dataset=f"folder:{clips}",
                                   batch_size=3, rate_quantile=0.9, lape_share=0.1, top=5))  # fmt: skip
    assert ranked.counted == 0 and ranked.selected > summary.selected
    rows = list(csv.DictReader(io.StringIO((out / "selective_units.csv").read_text())))
    assert max(int(r["rank"]) for r in rows) <= 5
    assert "rate_quantile" not in json.loads((out / "manifest.json").read_text())
    with pytest.raises(NeuronsError, match="other settings: batch_size"):
        run_neurons(configure(NeuronsConfig, out=str(out), model=str(tiny_model_dir), dataset=f"folder:{clips}",
                              batch_size=4, rate_quantile=0.9, lape_share=0.05))  # fmt: skip


def test_refusals(tmp_path):
    for bad in (dict(rate_quantile=1.5), dict(lape_share=0.0), dict(top=0)):
        with pytest.raises(Exception, match="rate_quantile|lape_share|top"):
            configure(NeuronsConfig, out=str(tmp_path / "x"), **bad)
    with pytest.raises(NeuronsError, match="at least two"):
        run_neurons(configure(NeuronsConfig, out=str(tmp_path / "y"), langs=("en",)))


def test_a_family_without_counts_is_refused_in_one_line(clips, tmp_path):
    """A family whose encoder declares no feed-forward counts (``ffn_counts = None``: w2v-BERT here) is refused before
    the output folder is made, naming the families that have them."""
    from engine.models.random_folder import write_random_folder

    folder = write_random_folder("w2v-bert", tmp_path / "w2v-bert").folder
    out = tmp_path / "out"
    with pytest.raises(NeuronsError, match=r"^w2vbert models have no feed-forward counts yet \(Whisper and wav2vec2"):
        run_neurons(configure(NeuronsConfig, out=str(out), model=str(folder), dataset=f"folder:{clips}"))
    assert not out.exists()


def test_wav2vec2_counts_through_the_job(clips, tmp_path):
    """The wav2vec2 family through the job (its own batching of ragged waveforms): each language's counts equal the
    model's ``ffn_active`` on each utterance alone."""
    import transformers

    from engine.models.wav2vec2.loaded import load_wav2vec2
    from tests.jobs.test_families import CONV, SMALL

    folder = tmp_path / "w2v"
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**SMALL, **CONV)).save_pretrained(folder)
    out = tmp_path / "out"
    run_neurons(configure(NeuronsConfig, out=str(out), model=str(folder), dataset=f"folder:{clips}", batch_size=3))
    loaded = load_wav2vec2(folder)
    for lang in LANGS:
        want = 0
        for path in sorted((clips / lang).glob("*.ogg")):
            wave, lengths = loaded.features([load_audio(path)])
            want = want + loaded.ffn_active(wave, lengths)
        with np.load(out / "counts" / f"{lang}.npz", allow_pickle=False) as f:
            assert np.abs(f["counts"] - want).sum() <= FLIPS, lang
            assert f["counts"].shape == (SMALL["num_hidden_layers"], SMALL["intermediate_size"])


def test_a_corrupt_clip_is_skipped_counted_and_the_rest_counted(clips, tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "clips"
    shutil.copytree(clips, copy)
    (copy / LANGS[0] / "c.ogg").write_bytes(b"OggS" + bytes(100))  # not audio
    summary = run_neurons(configure(NeuronsConfig, out=str(tmp_path / "out"), model=str(tiny_model_dir),
                                    dataset=f"folder:{copy}", batch_size=2))  # fmt: skip
    assert summary.n_skipped == 1 and summary.utterances == 4
    with np.load(tmp_path / "out" / "counts" / f"{LANGS[0]}.npz", allow_pickle=False) as f:
        assert int(f["skipped"]) == 1 and int(f["utterances"]) == 2
    # A probe replaced clips under the same dataset and reran: the old counts were read back, exit 0. The folder
    # records the listing counted (names, sizes, times): another one is refused.
    shutil.copy(next((copy / LANGS[1]).glob("*.ogg")), copy / LANGS[1] / "added.ogg")
    with pytest.raises(NeuronsError, match=r"computed from other inputs than this run's: dataset: store has '"):
        run_neurons(configure(NeuronsConfig, out=str(tmp_path / "out"), model=str(tiny_model_dir),
                              dataset=f"folder:{copy}", batch_size=2))  # fmt: skip
