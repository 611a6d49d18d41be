"""seqsim --dimensions (``engine.pipelines.seqsim.transform``) on tests/jobs/test_outliers.py's planted store, whose
layer 3 has one massive dimension: the stored statistics equal NumPy's over every frame of the run's languages, every
matrix equals the reference measures on states transformed here in NumPy, the manifest records the setting and a
resume with another is refused, and retrieval --baseline writes the R@1 change against the untransformed grid."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.stores.similarity import SimilarityError, SimilarityMismatchError, open_similarity
from kernels.pooling import reference_mean_pooled_cosine_matrix
from kernels.seqsim import reference_seqsim_matrix
from tests.jobs.test_outliers import BIG, LANGS, planted  # noqa: F401  (the planted layer store)

MEASURES = ("seqsim", "mean")


def similarity(store, out, **settings):
    return run_similarity(configure(SimilarityConfig, store=str(store), out=str(out), measures=MEASURES,
                                    allow_partial=True, progress=False, **settings))  # fmt: skip


def _states(store, layer):
    """lang -> (done states f32[u, frames, d], their lengths)."""
    out = {}
    for lang in LANGS:
        x, n = store.language_layer(lang, layer, dtype=np.float32)
        done = np.flatnonzero(n > 0)
        out[lang] = (x[done], n[done])
    return out


def _frames(states):
    return np.concatenate([x[u, :n].astype(np.float64) for x, ns in states.values() for u, n in enumerate(ns)])


def _check_matrices(reader, states, moved, layer):
    for a, b in reader.pairs("seqsim"):
        args = (moved[a], states[a][1], moved[b], states[b][1])
        for measure, want in (("seqsim", reference_seqsim_matrix(*args)[0]),
                              ("mean", reference_mean_pooled_cosine_matrix(*args))):  # fmt: skip
            got, _, _ = reader.matrix(measure, a, b, layer)
            got = got[~np.isnan(got).all(1)][:, ~np.isnan(got).all(0)]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{measure} {a}__{b} {layer}")


@pytest.mark.parametrize("setting", ["standardise", "drop:2", "mean+standardise"])
def test_dimensions_equal_numpy_transforms(planted, tmp_path, setting):  # noqa: F811
    remove, dims = setting.split("+") if "+" in setting else ("none", setting)
    out = tmp_path / "sim"
    summary = similarity(planted, out, dimensions=dims, remove_language=remove)
    assert f"dimensions {dims}" in summary.report()
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["dimensions"], manifest["remove_language"]) == (dims, remove)
    store, reader = open_store(str(planted)), open_similarity(str(out))
    for layer in reader.layers:
        states = _states(store, layer)
        if remove == "mean":  # --remove_language first: each language's mean frame subtracted
            states = {x: (s - _frames({x: (s, n)}).mean(0).astype(np.float32), n) for x, (s, n) in states.items()}
            for s, n in states.values():
                s[np.arange(s.shape[1])[None, :] >= n[:, None]] = 0  # padding as read (it is never scored)
        frames = _frames(states)
        with np.load(out / "dimension_transform" / f"layer-{layer}.npz", allow_pickle=False) as f:
            stored = {name: f[name] for name in f.files}
        assert tuple(stored["languages"]) == LANGS and stored["counts"].sum() == len(frames)
        np.testing.assert_allclose(stored["mean"], frames.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stored["scale"], frames.std(0), rtol=1e-9)
        np.testing.assert_allclose(stored["magnitude"], np.abs(frames).mean(0), rtol=1e-9)
        if dims == "standardise":
            mean, scale = frames.mean(0).astype(np.float32), frames.std(0).astype(np.float32)
            moved = {x: (s - mean) / scale for x, (s, _) in states.items()}
        else:
            top = np.argsort(-np.abs(frames).mean(0))[:2]
            assert sorted(stored["dimensions"].tolist()) == sorted(top.tolist())
            if layer == 3:
                assert BIG in stored["dimensions"]
            moved = {}
            for x, (s, _) in states.items():
                moved[x] = s.copy()
                moved[x][..., top] = 0
        _check_matrices(reader, states, moved, layer)


def test_a_resume_with_other_dimensions_is_refused_and_malformed_ones_at_once(planted, tmp_path):  # noqa: F811
    out = tmp_path / "sim"
    similarity(planted, out, dimensions="standardise", layers=(3,))
    with pytest.raises(SimilarityMismatchError, match="dimensions: store has 'standardise', this run 'none'"):
        similarity(planted, out, layers=(3,))
    with pytest.raises(SimilarityMismatchError, match=r"was fitted as standardise over \['de', 'en', 'es'\]"):
        similarity(planted, out, dimensions="standardise", layers=(3,), langs=("de", "en"))
    for bad in ("drop", "drop:0", "zscore", "drop:-1"):
        with pytest.raises(SimilarityError, match="dimensions is none, standardise or drop:K"):
            configure(SimilarityConfig, store=str(planted), out=str(tmp_path / "x"), dimensions=bad)
    with pytest.raises(SimilarityError, match="drop:32 would leave none of the store's 32 dimensions"):
        similarity(planted, tmp_path / "y", dimensions="drop:32")
    assert not (tmp_path / "y").exists()
    assert configure(SimilarityConfig, store="s", out="o", dimensions=" drop:3 ").dimensions == "drop:3"


def test_retrieval_baseline_gives_the_r1_change_of_the_dimensions(planted, tmp_path):  # noqa: F811
    """--dimensions drop:1 against the same grid untransformed: baseline_delta.csv's R@1 per layer is each store's
    own retrieval.csv mean, named by both transforms."""
    base, dropped = tmp_path / "base", tmp_path / "drop"
    similarity(planted, base)
    similarity(planted, dropped, dimensions="drop:1")
    run_retrieval(configure(RetrievalConfig, similarity=str(base), out=str(tmp_path / "rb")))
    run_retrieval(configure(RetrievalConfig, similarity=str(dropped), out=str(tmp_path / "r"), baseline=str(base)))

    def pooled_r1(folder, measure):
        rows = [r for r in csv.DictReader(open(folder / "retrieval.csv")) if r["metric"] == "R@1"
                and r["measure"] == measure]  # fmt: skip
        return {la: np.mean([float(r["value"]) for r in rows if int(r["layer"]) == la]) for la in (0, 2, 3)}

    delta = [r for r in csv.DictReader(open(tmp_path / "r" / "baseline_delta.csv")) if r["lang_a"] == "all"]
    assert {(r["transform"], r["baseline_transform"]) for r in delta} == {("none; dimensions drop:1", "none")}
    for r in delta:
        own, other = pooled_r1(tmp_path / "r", r["measure"]), pooled_r1(tmp_path / "rb", r["measure"])
        layer = int(r["layer"])
        assert float(r["r1"]) == pytest.approx(own[layer]) and float(r["baseline_r1"]) == pytest.approx(other[layer])
        assert float(r["delta"]) == pytest.approx(own[layer] - other[layer])


def test_verify_knows_the_stored_transforms(planted, tmp_path):  # noqa: F811
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify

    out = tmp_path / "sim"
    similarity(planted, out, dimensions="drop:1", layers=(3,))
    report = run_verify(configure(VerifyConfig, location=str(out), progress=False))
    assert report.exit_code == 0 and "not ours" not in " ".join(report.notes), report.report()
    (out / "dimension_transform" / "layer-3.npz.sha256").unlink()  # its digest lost: named as damage, not left alone
    report = run_verify(configure(VerifyConfig, location=str(out), progress=False))
    assert [d.key for d in report.damage] == ["dimension_transform/layer-3.npz.sha256"], report.report()


def test_the_plan_prices_the_fit(planted, tmp_path):  # noqa: F811
    from engine.pipelines.seqsim.plan import plan_seqsim_run

    config = configure(SimilarityConfig, store=str(planted), out=str(tmp_path / "sim"), measures=("mean",),
                       dimensions="drop:3", allow_partial=True)  # fmt: skip
    text = plan_seqsim_run(config, None).render()
    assert "dimensions drop:3 (fit, apply)" in text, text
    assert not (tmp_path / "sim").exists()
