"""The neurons job's intervention (``--intervene``): switching a language's selected units off, end to end.

Three "languages" of real FLEURS clips (de, en, es: 5 clips each, ids 0..4 shared by position, so that pooled
retrieval has partners to find; 5 ids are the fewest the language-ID probe's 5 folds take). Each file the job
writes is recomputed here independently:

- the pooled states of every condition, by the model's ``scaled_sums`` on each utterance alone (one call per
  utterance, no padding rows: another batching than the job's), to 1e-5 of the layer's largest value (float32 sums in
  another order);
- the units switched off, from ``units.parquet``: exactly the units selected for the language; the random control as
  many per layer, none of them selected;
- R@1 with the retrieval kernels' loop twin (``kernels.metrics.reference_retrieval_metrics``) per ordered pair;
- language ID before the change with the probes job's ``lid_layer`` (whose probe is checked against scikit-learn in
  tests/jobs/test_probes.py): the two groups' accuracies weighted by their sizes are its accuracy.
"""

from __future__ import annotations

import csv
import functools
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.data.audio import load_audio
from engine.models.whisper.features import features_for_audio
from engine.pipelines.neurons.config import NeuronsConfig, NeuronsError
from engine.pipelines.neurons.run import run_neurons
from engine.pipelines.stages.lid import lid_layer
from engine.runtime.options import configure
from kernels.metrics import reference_retrieval_metrics

LANGS = ("de", "en", "es")
PER_LANG = 5
POOLED_ATOL = 1e-5  # of the layer's largest pooled value


@pytest.fixture(scope="module")
def three_langs(fleurs_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("intervene-clips")
    for lang in LANGS:
        (root / lang).mkdir()
        for i in range(PER_LANG):
            for ext in ("ogg", "txt"):
                (root / lang / f"s{i}.{ext}").symlink_to(fleurs_dir / f"fleurs-{lang}-{i:03d}.{ext}")
    return root


def _config(out, model_dir, clips, **kw):
    kw.setdefault("random_draws", 2)
    return configure(NeuronsConfig, out=str(out), model=str(model_dir), dataset=f"folder:{clips}", batch_size=3,
                     rate_quantile=0.9, lape_share=0.05, **kw)  # fmt: skip


@functools.cache
def _features(path, n_mels):
    """(mel, valid) of one clip, computed once: every condition's recomputation reads the same clips."""
    return features_for_audio(load_audio(path), n_mels)


def _pooled_alone(tiny_whisper, clips, lang_ids, scale):
    """f32[layer, utterance, embed]: each utterance alone through ``scaled_sums``, its windows summed."""
    rows = []
    for lang, uid in lang_ids:
        mel, valid = _features(clips / lang / f"{uid}.ogg", tiny_whisper.dims.n_mels)
        sums = tiny_whisper.scaled_sums(mel, valid, scale).sum(axis=1)
        rows.append(sums / valid.sum())
    return np.stack(rows, axis=1)


def test_intervention_recomputed(three_langs, tiny_model_dir, tiny_whisper, tmp_path):
    out = tmp_path / "out"
    summary = run_neurons(_config(out, tiny_model_dir, three_langs, intervene=("all",)))
    rows = list(csv.DictReader(io.StringIO((out / "intervention.csv").read_text())))
    targets = sorted({r["lang"] for r in rows})
    assert targets and set(targets) <= set(LANGS)
    units = pq.read_table(out / "units.parquet").to_pandas()
    n_layers = int(units.layer.max())
    n_units = int(units.unit.max()) + 1
    lang_ids = [(lang, f"s{i}") for lang in LANGS for i in range(PER_LANG)]
    label = np.repeat(np.arange(len(LANGS)), PER_LANG)
    ids = [uid for _, uid in lang_ids]

    def stored(name):
        with np.load(out / "intervention" / "pooled" / f"{name}.npz", allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    none = stored("none")
    assert none["present"].all()
    want = _pooled_alone(tiny_whisper, three_langs, lang_ids, np.ones((n_layers, n_units), np.float32))
    np.testing.assert_allclose(none["pooled"], want, rtol=0, atol=POOLED_ATOL * np.abs(want).max())
    selected = units.selected.to_numpy(bool).reshape(n_layers, n_units)
    # language ID before the change, per layer: the same for every target language, so fitted once (3 s of probes)
    lids = [lid_layer(layer, none["pooled"][layer], label, ids, seed=0) for layer in range(none["pooled"].shape[0])]
    for lang in targets:
        owns = np.array([lang in s.split(",") for s in units.languages]).reshape(n_layers, n_units)
        off, control, other = stored(f"off-{lang}"), stored(f"random1-{lang}"), stored(f"random2-{lang}")
        assert np.array_equal(off["scale"] == 0, owns)
        for draw in (control, other):
            assert np.array_equal((draw["scale"] == 0).sum(axis=1), owns.sum(axis=1))
            assert not (selected & (draw["scale"] == 0)).any()
        assert not np.array_equal(control["scale"], other["scale"])  # two draws, two sets of units
        want_off = _pooled_alone(tiny_whisper, three_langs, lang_ids, off["scale"])
        np.testing.assert_allclose(off["pooled"], want_off, rtol=0, atol=POOLED_ATOL * np.abs(want_off).max())
        assert np.abs(off["pooled"] - none["pooled"]).max() > 0  # something was switched off
        for layer in range(none["pooled"].shape[0]):
            self_rows = {r["group"]: r for r in rows if r["lang"] == lang and r["control"] == "selected"
                         and int(r["layer"]) == layer}  # fmt: skip
            assert int(self_rows["self"]["units_off"]) == owns.sum()
            for which, pooled in (("r1_before", none["pooled"]), ("r1_after", off["pooled"])):
                got = (float(self_rows["self"][which]), float(self_rows["others"][which]))
                assert got == pytest.approx(_r1_groups(pooled[layer], label, ids, LANGS.index(lang)), abs=1e-12)
            lid = lids[layer]
            n_self = int(self_rows["self"]["utterances"])
            weighted = (n_self * float(self_rows["self"]["lid_before"])
                        + (len(ids) - n_self) * float(self_rows["others"]["lid_before"])) / len(ids)  # fmt: skip
            assert weighted == pytest.approx(lid.accuracy, abs=1e-12)
    assert (out / "figures" / "intervention.png").stat().st_size > 0
    assert any("intervention" in line for line in summary.report().splitlines())
    _check_test_against_the_draws(out, rows, summary.report())

    # a rerun reads every condition back and writes the same table
    before = (out / "intervention.csv").read_bytes()
    (out / "intervention.csv").unlink()
    run_neurons(_config(out, tiny_model_dir, three_langs, intervene=("all",)))
    assert (out / "intervention.csv").read_bytes() == before
    # another --seed (the random control's units) redoes the intervention and keeps the counts (issue 62: such a
    # setting was refused, which threw the counts away); the settings record says what the passes were made with.
    # One target language here (4 passes, not 1 + 3 per target): the passes of the other settings are all dropped
    counts = {p.name: p.read_bytes() for p in (out / "counts").iterdir()}
    again = run_neurons(_config(out, tiny_model_dir, three_langs, intervene=(targets[0],), seed=1))
    assert again.counted == 0 and {p.name: p.read_bytes() for p in (out / "counts").iterdir()} == counts
    assert json.loads((out / "intervention" / "settings.json").read_text())["seed"] == 1
    assert (out / "intervention.csv").read_bytes() != before
    assert "intervene_utterances" not in json.loads((out / "manifest.json").read_text())


def _check_test_against_the_draws(out, rows, report):
    """intervention_test.csv recomputed from intervention.csv: per language and metric, the largest fall over the
    layers of the selected units' own group against each random draw's, p = (1 + #{draw falls as far}) / (draws + 1);
    the report gives the verdict."""
    tests = list(csv.DictReader(io.StringIO((out / "intervention_test.csv").read_text())))
    column = {"language_id": "lid_change", "r1": "r1_change"}
    assert {(t["lang"], t["metric"]) for t in tests} == {(r["lang"], m) for r in rows for m in column}
    for t in tests:

        def fall(control, draw, t=t):
            return min(float(r[column[t["metric"]]]) for r in rows if r["lang"] == t["lang"] and r["group"] == "self"
                       and r["control"] == control and int(r["draw"]) == draw)  # fmt: skip

        selected, null = fall("selected", 0), np.array([fall("random", k) for k in (1, 2)])
        assert float(t["selected_change"]) == pytest.approx(selected, abs=1e-12)
        assert int(t["draws"]) == 2 and float(t["null_min"]) == pytest.approx(null.min(), abs=1e-12)
        assert float(t["p_value"]) == pytest.approx((1 + np.sum(null <= selected + 1e-12)) / 3)
    assert "draws of as many random units" in report and "p = " in report


def _r1_groups(pooled, label, ids, lang):
    """(mean R@1 over ordered pairs with ``lang``, over pairs without), each pair by the metrics' loop twin."""
    x = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    mine, others = [], []
    for a in range(len(LANGS)):
        for b in range(len(LANGS)):
            if a == b:
                continue
            rows, cols = np.flatnonzero(label == a), np.flatnonzero(label == b)
            got = reference_retrieval_metrics(x[rows] @ x[cols].T, [ids[i] for i in rows], [ids[i] for i in cols])
            (mine if lang in (a, b) else others).append(got.recall[1])
    return float(np.mean(mine)), float(np.mean(others))


def test_intervention_refusals(three_langs, tiny_model_dir, run_job, tmp_path):
    with pytest.raises(NeuronsError, match="not counted here"):
        run_neurons(_config(tmp_path / "a", tiny_model_dir, three_langs, intervene=("xx",)))
    # the flags reach the job: a language of no dataset is refused before any counting, by name
    bad = run_job("neurons", "--model", str(tiny_model_dir), "--dataset", f"folder:{three_langs}", "--out",
                  str(tmp_path / "b"), "--intervene", "de,xx", "--intervene_utterances", "3", expect=None)  # fmt: skip
    assert bad.returncode != 0 and "['xx']" in bad.stdout + bad.stderr and not (tmp_path / "b" / "counts").exists()


def test_plan_prices_the_counts_and_every_pass(three_langs, tiny_model_dir, run_job, tmp_path):
    """--plan (issue 62: the first ETA came from the run): the counting pass over the 15 clips, and the intervention's
    1 unchanged + 2 languages x (selected + 3 draws) passes over its evaluation set, before anything is written."""
    out = tmp_path / "plan"
    done = run_job("neurons", "--model", str(tiny_model_dir), "--dataset", f"folder:{three_langs}", "--out", str(out),
                   "--intervene", "de,en", "--intervene_utterances", "4", "--random_draws", "3", "--plan")  # fmt: skip
    text = done.stdout
    assert "plan: neurons" in text and "utterances: 15" in text, text
    assert "12 utterances (4 per language at most) encoded 9 times" in text, text
    for stage in ("count: forward", "intervene: forward", "total"):
        assert stage in text, text
    assert not out.exists()
