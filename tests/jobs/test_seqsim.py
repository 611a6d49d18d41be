"""The seqsim job end to end: a tiny layer store in, matrices checked against the NumPy references, resume.

The store holds 3 languages of 5 short synthetic clips (shared ids) from a tiny random Whisper; one clip of ``de``
is corrupt, so that utterance is not done and must come back as NaN rows/columns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.models.whisper.encoder import WhisperEncoder
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.pairs import resolve_pairs
from engine.stores.reader import open_store
from engine.stores.records import json_bytes, json_digest
from engine.stores.similarity import (
    AXES,
    SimilarityError,
    SimilarityMismatchError,
    check_name,
    open_similarity,
)
from kernels.dtw import reference_dtw_similarity_matrix
from kernels.pooling import (
    reference_center_frame_cosine_matrix,
    reference_duration_similarity_matrix,
    reference_mean_pooled_cosine_matrix,
)
from kernels.seqsim import reference_seqsim_matrix
from tests.jobs.multiprocess import run_processes

LANGS = ("de", "en", "es")
ALL_MEASURES = "seqsim,seqsim_a2b,seqsim_b2a,mean,centre,duration,dtw"
CORRUPT = ("de", "utt2")


@pytest.fixture(scope="module")
def layer_store(tiny_whisper, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("seqsim")
    rng = np.random.default_rng(0)
    for lang in LANGS:
        (root / "clips" / lang).mkdir(parents=True)
        for i in range(5):  # 0.2 to 0.6 s: 10 to 30 frames, so the float64 references stay quick
            t = np.arange(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / "clips" / lang / f"utt{i}.wav", x.astype(np.float32), SAMPLE_RATE)
    (root / "clips" / CORRUPT[0] / f"{CORRUPT[1]}.wav").write_bytes(b"RIFF" + bytes(200))
    out = root / "store"
    config = configure(EncodeConfig, out=str(out), dataset=f"folder:{root / 'clips'}", batch_size=4, progress=False)
    summary = run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert summary.done == 14 and summary.n_skipped == 1, summary.report()
    return out


@pytest.fixture(scope="module")
def seqsim(run_job):
    """The job in this process (its kernels compile once and monkeypatch reaches them); the store has one corrupt
    clip, so it is partial on purpose: --allow_partial."""
    return functools.partial(run_job, "seqsim", "--allow_partial", in_process=True)


@pytest.fixture(scope="module")
def sim(seqsim, layer_store, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("sim") / "sim"
    seqsim("--store", str(layer_store), "--out", str(out), "--measure", ALL_MEASURES)
    return out


def test_matrices_equal_the_references(layer_store, sim):
    store, reader = open_store(str(layer_store)), open_similarity(str(sim))
    assert reader.layers == store.info.layers == (0, 1, 2, 3)
    assert reader.measures() == ALL_MEASURES.split(",")
    assert reader.pairs("seqsim") == [("de", "en"), ("de", "es"), ("en", "es")]
    checked = 0
    for a, b in reader.pairs("seqsim"):
        for layer in reader.layers:
            A, len_A = store.language_layer(a, layer, dtype=np.float32)
            B, len_B = store.language_layer(b, layer, dtype=np.float32)
            ia, ib = np.flatnonzero(len_A > 0), np.flatnonzero(len_B > 0)
            args = (A[ia], len_A[ia], B[ib], len_B[ib])
            score, a2b, b2a = reference_seqsim_matrix(*args)
            want = {
                "seqsim": score,
                "seqsim_a2b": a2b,
                "seqsim_b2a": b2a,
                "mean": reference_mean_pooled_cosine_matrix(*args),
                "centre": reference_center_frame_cosine_matrix(*args),
                "duration": reference_duration_similarity_matrix(len_A[ia], len_B[ib]),
                "dtw": reference_dtw_similarity_matrix(*args),
            }
            for measure, expected in want.items():
                got, row_ids, col_ids = reader.matrix(measure, a, b, layer)
                assert got.dtype == np.float32 and got.shape == (len(len_A), len(len_B))
                assert row_ids == store.utterances_table(a).column("id").to_pylist()
                assert col_ids == store.utterances_table(b).column("id").to_pylist()
                # Not-done utterances are NaN rows / columns, everything else is computed.
                assert np.isnan(got[len_A <= 0]).all() and np.isnan(got[:, len_B <= 0]).all()
                np.testing.assert_allclose(
                    got[np.ix_(ia, ib)], expected, rtol=1e-5, atol=1e-6, err_msg=f"{measure} {a}__{b} {layer}"
                )
                checked += 1
            assert reader.done("seqsim", a, b) == [0, 1, 2, 3]
    assert checked == 3 * 4 * 7


def test_not_done_utterance_is_a_nan_row(layer_store, sim):
    store, reader = open_store(str(layer_store)), open_similarity(str(sim))
    u = store.lookup(*CORRUPT)[0]
    assert not store.done("de")[u]
    scores, row_ids, _ = reader.matrix("seqsim", "de", "en", 1)
    assert row_ids[u] == CORRUPT[1] and np.isnan(scores[u]).all()
    assert np.isfinite(np.delete(scores, u, axis=0)).all()
    scores, _, col_ids = reader.matrix("seqsim", "en", "de", 1)  # reversed: a NaN column
    assert col_ids[u] == CORRUPT[1] and np.isnan(scores[:, u]).all()


def test_reverse_pair_is_the_transpose(sim):
    reader = open_similarity(str(sim))
    assert ("es", "en") not in reader.pairs("seqsim")
    forward, rows, cols = reader.matrix("seqsim", "en", "es", 2)
    backward, rows_t, cols_t = reader.matrix("seqsim", "es", "en", 2)
    np.testing.assert_array_equal(backward, forward.T)
    assert (rows_t, cols_t) == (cols, rows)
    # Directional terms swap: es->en of (es, en) is en__es's b2a, transposed.
    np.testing.assert_array_equal(
        reader.matrix("seqsim_a2b", "es", "en", 2)[0], reader.matrix("seqsim_b2a", "en", "es", 2)[0].T
    )
    assert reader.done("seqsim", "es", "en") == list(reader.layers)
    assert reader.ids("seqsim", "es", "en")["row_ids"] == rows_t
    with pytest.raises(SimilarityError, match="no 'seqsim' matrix"):
        reader.matrix("seqsim", "en", "xx", 2)


def test_layout_on_disk(sim):
    manifest = json.loads((sim / "manifest.json").read_text())
    assert manifest["format"] == "babelgrid-similarity" and manifest["format_version"] == 4
    assert manifest["layers"] == [0, 1, 2, 3] and manifest["layer_store"].endswith("store")
    meta = json.loads((sim / "seqsim" / "de__en" / "zarr.json").read_text())
    assert meta["dimension_names"] == list(AXES) == ["layer", "utterance_a", "utterance_b"]
    assert meta["shape"] == [4, 5, 5] and meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 5, 5]
    ids = json.loads((sim / "seqsim" / "de__en" / "ids.json").read_text())
    assert set(ids) == {"row_ids", "col_ids", "row_recording", "col_recording", "digest"}
    assert ids["digest"] == json_digest({k: v for k, v in ids.items() if k != "digest"})  # sha256 of its content
    assert sorted(p.name for p in (sim / "duration" / "de__en" / "done").iterdir()) == [f"{i}.json" for i in range(4)]


def test_resume_computes_only_what_is_missing(layer_store, tmp_path):
    out = tmp_path / "sim"
    config = configure(
        SimilarityConfig,
        allow_partial=True,
        store=str(layer_store),
        out=str(out),
        measures=("seqsim", "duration"),
        progress=False,
    )
    first = run_similarity(config)
    assert first.pair_layers == 12 and first.matrices == 24 and first.seqsim_flops > 0
    reader = open_similarity(str(out))
    before = reader.matrix("seqsim", "de", "es", 2)[0]
    again = run_similarity(config)
    assert again.pair_layers == 0 and again.already_done == 12 and again.matrices == 0
    (out / "seqsim" / "de__es" / "done" / "2.json").unlink()
    assert reader.done("seqsim", "de", "es") == [0, 1, 3]
    third = run_similarity(config)
    assert third.pair_layers == 1 and third.matrices == 1 and third.already_done == 11
    np.testing.assert_array_equal(reader.matrix("seqsim", "de", "es", 2)[0], before)
    # A run for one more measure computes only that one.
    more = run_similarity(dataclasses.replace(config, measures=("seqsim", "mean"), layers=(1,)))
    assert more.pair_layers == 3 and more.matrices == 3


def test_other_layer_store_into_same_out_is_refused(layer_store, sim, tmp_path):
    other = tmp_path / "other-store"
    shutil.copytree(layer_store, other)
    with pytest.raises(SimilarityMismatchError, match="layer_store"):
        run_similarity(configure(SimilarityConfig, allow_partial=True, store=str(other), out=str(sim), progress=False))


def test_bad_names_are_refused(layer_store, tmp_path):
    for bad in ("../x", "a/b", "", ".hidden", "en__us", "a b"):
        with pytest.raises(SimilarityError, match="cannot name"):
            check_name("language", bad)
    with pytest.raises(SimilarityError, match="cannot name"):
        configure(
            SimilarityConfig,
            allow_partial=True,
            store=str(layer_store),
            out=str(tmp_path / "o"),
            measures=("../seqsim",),
        )
    with pytest.raises(SimilarityError, match="unknown measure"):
        configure(
            SimilarityConfig, allow_partial=True, store=str(layer_store), out=str(tmp_path / "o"), measures=("softdtw",)
        )
    with pytest.raises(SimilarityError, match="not in"):
        run_similarity(
            configure(
                SimilarityConfig,
                allow_partial=True,
                store=str(layer_store),
                out=str(tmp_path / "o"),
                pairs="en:fr",
                progress=False,
            )
        )
    one = configure(SimilarityConfig, store=str(layer_store), out=str(tmp_path / "o1"), langs=("en",), progress=False)
    with pytest.raises(SimilarityError, match=r"compares languages.*--langs \['en'\].*second language"):
        run_similarity(one)
    assert not (tmp_path / "o1").exists()  # refused before anything is written


def test_resolve_pairs():
    langs = ["es", "en", "de"]
    assert resolve_pairs("unordered", langs) == [("de", "en"), ("de", "es"), ("en", "es")]
    assert len(resolve_pairs("ordered", langs)) == 6
    assert resolve_pairs("en:*", langs) == [("en", "de"), ("en", "es")]
    assert resolve_pairs("*:en", langs) == [("de", "en"), ("es", "en")]
    assert resolve_pairs("en:de, es:de,en:de", langs) == [("en", "de"), ("es", "de")]
    for bad, match in (("en-de", "not 'a:b'"), ("en:en", "itself"), ("fr:*", "not in"), ("en:../x", "cannot name")):
        with pytest.raises(SimilarityError, match=match):
            resolve_pairs(bad, langs)
    with pytest.raises(SimilarityError, match=r"^'fr' is not in the store \(it has de, en, es\): pairs item 'en:fr'"):
        resolve_pairs("en:fr", ["en", "de"], available=langs)


def test_pairs_pattern_through_the_job(seqsim, layer_store, tmp_path):
    out = tmp_path / "sim"
    seqsim("--store", str(layer_store), "--out", str(out), "--pairs", "en:*", "--layers", "1,3", "--measure", "mean")
    reader = open_similarity(str(out))
    assert reader.measures() == ["mean"]
    assert reader.pairs("mean") == [("en", "de"), ("en", "es")]
    assert reader.done("mean", "de", "en") == [1, 3]  # served by en__de
    assert np.isnan(reader.matrix("mean", "en", "de", 2)[0]).all()  # layer 2 not asked for: not computed


def test_two_fake_devices_give_the_same_matrices(run_job, layer_store, sim, tmp_path):
    """The sharded kernel path (rows over 2 CPU devices, 5 rows: uneven) through the job in a subprocess."""
    out = tmp_path / "sim2"
    args = ["--store", str(layer_store), "--out", str(out), "--measure", "seqsim,seqsim_a2b", "--allow_partial"]
    proc = run_job("seqsim", *args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
    assert "computed 12 pair-layers" in proc.stdout
    one, two = open_similarity(str(sim)), open_similarity(str(out))
    for measure in ("seqsim", "seqsim_a2b"):
        for a, b in one.pairs(measure):
            for layer in one.layers:
                np.testing.assert_allclose(
                    two.matrix(measure, a, b, layer)[0], one.matrix(measure, a, b, layer)[0], rtol=1e-6, atol=1e-7
                )


def test_two_processes_share_the_grid(layer_store, sim, tmp_path):
    """jax.distributed with 2 local processes: each computes its share of (layer, pair) matrices into one store."""
    out = tmp_path / "sim-2proc"
    args = ["--store", str(layer_store), "--out", str(out), "--measure", ALL_MEASURES, "--progress=false"]
    outputs = run_processes("jobs.seqsim", [*args, "--allow_partial"])
    counts = [int(o.split("computed ", 1)[1].split()[0]) for o in outputs]
    assert sum(counts) == 12, outputs  # 3 pairs x 4 layers, claimed one at a time (engine.runtime.claims)
    one, two = open_similarity(str(sim)), open_similarity(str(out))
    for measure in one.measures():
        assert two.pairs(measure) == one.pairs(measure)
        for a, b in one.pairs(measure):
            assert two.done(measure, a, b) == one.done(measure, a, b)
            for layer in one.layers:
                np.testing.assert_array_equal(two.matrix(measure, a, b, layer)[0], one.matrix(measure, a, b, layer)[0])


def test_a_partly_encoded_store_is_refused_unless_allowed(layer_store, tmp_path, capsys):
    """The fixture's store has one corrupt German clip, never done: refused with the counts per language, unless
    allow_partial, which says what is missing and leaves it out."""
    config = configure(
        SimilarityConfig, store=str(layer_store), out=str(tmp_path / "sim"), measures=("duration",), progress=False
    )
    with pytest.raises(
        SimilarityError,
        match=r"not completely encoded \(utterances not done: de: 1 of 5; 1 of them skipped by the encode job .*"
        r"named in de/skipped.json\); a rerun of the encode job skips them again.*--allow_partial",
    ):
        run_similarity(config)
    assert not (tmp_path / "sim").exists(), "nothing is created before the refusal"
    run_similarity(dataclasses.replace(config, allow_partial=True))
    assert "utterances not done, left out of every matrix: de: 1 of 5" in capsys.readouterr().err


def test_ot_kernel_fallbacks_are_counted_in_the_done_marker(seqsim, layer_store, tmp_path, monkeypatch, capsys):
    """Pairs that kernels.ot finished in the log domain (OtResult.fallback) are counted in the done marker and the
    job's summary. A fallback is forced by flagging two pairs of the kernel's own result."""
    import engine.pipelines.seqsim.measures as similarity

    real = similarity.ot_similarity_matrix

    def flagged(*args, **kwargs):
        result = real(*args, **kwargs)
        fallback = np.zeros(result.score.shape, bool)
        fallback[0, :2] = True
        return result._replace(fallback=fallback)

    monkeypatch.setattr(similarity, "ot_similarity_matrix", flagged)
    out = tmp_path / "ot"
    seqsim("--store", str(layer_store), "--out", str(out), "--measure", "ot", "--layers", "1", "--pairs", "de:en")
    marker = json.loads((out / "ot" / "de__en" / "done" / "1.json").read_text())
    assert marker["fallback"] == 2 and marker["nonconverged"] == []
    out_text = capsys.readouterr().out
    assert "ot: 2 of 20 pairs left float32 range in kernel mode" in out_text, out_text


def test_ot_measure_through_the_job(seqsim, layer_store, tmp_path):
    """--measure ot with its flags: scores equal the float64 reference; a pair that cannot converge in the allowed
    iterations is NaN and listed in the done marker, never a score."""
    from kernels.ot_matrix import reference_ot_similarity_matrix
    from kernels.settings import OtConfig

    out = tmp_path / "ot"
    seqsim("--store", str(layer_store), "--out", str(out), "--measure", "ot", "--layers", "1", "--pairs", "de:en")
    store, reader = open_store(str(layer_store)), open_similarity(str(out))
    A, len_A = store.language_layer("de", 1, dtype=np.float32)
    B, len_B = store.language_layer("en", 1, dtype=np.float32)
    ia, ib = np.flatnonzero(len_A > 0), np.flatnonzero(len_B > 0)
    got, _, _ = reader.matrix("ot", "de", "en", 1)
    want = reference_ot_similarity_matrix(A[ia], len_A[ia], B[ib], len_B[ib], OtConfig())
    np.testing.assert_allclose(got[np.ix_(ia, ib)], want, atol=1e-4)
    marker = json.loads((out / "ot" / "de__en" / "done" / "1.json").read_text())
    assert marker["nonconverged"] == [] and marker["fallback"] == 0 and marker["ot"]["epsilon"] == 0.05

    # 10 iterations at a tiny epsilon: nothing converges. Other options are another store (a resume is refused:
    # tests/jobs/test_resume_settings.py).
    out = tmp_path / "ot-tiny-epsilon"
    seqsim(
        "--store",
        str(layer_store),
        "--out",
        str(out),
        "--measure",
        "ot",
        "--layers",
        "1",
        "--pairs",
        "de:en",
        "--ot_epsilon",
        "0.001",
        "--ot_iterations",
        "10",
    )
    got, _, _ = open_similarity(str(out)).matrix("ot", "de", "en", 1)
    marker = json.loads((out / "ot" / "de__en" / "done" / "1.json").read_text())
    flagged = {tuple(pair) for pair in marker["nonconverged"]}
    assert len(flagged) > len(ia) * len(ib) // 2  # (near-identical utterances may still converge)
    for i in ia:
        for j in ib:
            assert np.isnan(got[i, j]) == ((i, j) in flagged), (i, j)


def test_measure_registry_calls_each_kernel_once():
    """The three SeqSim measures come from one kernel call; the registry and the store name the same measures."""
    from engine.pipelines.seqsim import measures
    from engine.stores import similarity as store

    calls = measures.kernel_calls(["seqsim_b2a", "mean", "seqsim"])
    assert [(kernel.name, sorted(names)) for kernel, names in calls] == [
        ("seqsim", ["seqsim", "seqsim_b2a"]),
        ("mean", ["mean"]),
    ]
    assert tuple(measures.MEASURES) == store.MEASURES
    assert measures.NAN_MEASURES == {"ot"} and not measures.MEASURES["duration"].needs_states


@pytest.mark.parametrize("transform", ["mean", "lda:2"])
def test_remove_language_through_the_flags_equals_the_references(seqsim, layer_store, tmp_path, transform):
    """--remove_language: the stored transform of each layer equals NumPy's (the means; the LDA basis spans the
    float64 twin's directions), every matrix equals the reference measures on states transformed here in NumPy, and
    a resume with another transform or other languages is refused before anything is computed."""
    from kernels.subspace import reference_lda_basis

    out = tmp_path / "sim"
    seqsim("--store", str(layer_store), "--out", str(out), "--measure", "seqsim,mean,dtw", "--remove_language",
           transform)  # fmt: skip
    store, reader = open_store(str(layer_store)), open_similarity(str(out))
    assert json.loads((out / "manifest.json").read_text())["remove_language"] == transform
    for layer in reader.layers:
        frames, states = {}, {}
        for lang in LANGS:
            x, n = store.language_layer(lang, layer, dtype=np.float32)
            done = np.flatnonzero(n > 0)
            states[lang] = (x[done], n[done])
            frames[lang] = np.concatenate([x[u, : n[u]] for u in done]).astype(np.float64)
        with np.load(out / "language_transform" / f"layer-{layer}.npz", allow_pickle=False) as f:
            stored = {name: f[name] for name in f.files}
        assert tuple(stored["languages"]) == LANGS and list(stored["counts"]) == [len(frames[x]) for x in LANGS]
        np.testing.assert_allclose(stored["means"], [frames[x].mean(0) for x in LANGS], rtol=1e-9, atol=1e-9)
        if transform == "mean":
            moved = {x: s - stored["means"][i].astype(np.float32) for i, (x, (s, _)) in enumerate(states.items())}
        else:
            basis = stored["basis"]
            want, _ = np.linalg.qr(reference_lda_basis(frames, 2))
            angles = np.linalg.svd(basis.T @ want, compute_uv=False)
            assert basis.shape == (store.info.embed, 2) and np.allclose(angles, 1.0, atol=1e-9)
            moved = {x: s - (s @ basis) @ basis.T for x, (s, _) in states.items()}
        for a, b in reader.pairs("seqsim"):
            args = (moved[a].astype(np.float32), states[a][1], moved[b].astype(np.float32), states[b][1])
            want = {"seqsim": reference_seqsim_matrix(*args)[0], "mean": reference_mean_pooled_cosine_matrix(*args),
                    "dtw": reference_dtw_similarity_matrix(*args)}  # fmt: skip
            for measure, expected in want.items():
                got, _, _ = reader.matrix(measure, a, b, layer)
                got = got[~np.isnan(got).all(1)][:, ~np.isnan(got).all(0)]
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{measure} {a}__{b} {layer}")
    other = "mean" if transform != "mean" else "none"
    with pytest.raises(SimilarityMismatchError, match=f"remove_language: store has '{transform}', this run '{other}'"):
        run_similarity(configure(SimilarityConfig, allow_partial=True, store=str(layer_store), out=str(out),
                                 remove_language=other, progress=False))  # fmt: skip
    # Fitted over other languages: refused by the stored transform; lda:2 over 2 languages, before that (issue 61)
    refusal = (
        r"lda:2 needs K <= languages - 1 = 1" if transform == "lda:2" else r"was fitted as .* over \['de', 'en', 'es'\]"
    )
    with pytest.raises((SimilarityMismatchError, SimilarityError), match=refusal):
        run_similarity(configure(SimilarityConfig, allow_partial=True, store=str(layer_store), out=str(out),
                                 remove_language=transform, langs=("de", "en"), progress=False))  # fmt: skip


def test_remove_language_is_refused_when_malformed(layer_store, tmp_path):
    for bad in ("lda", "lda:0", "median", "lda:-1"):
        with pytest.raises(SimilarityError, match="remove_language is none, mean or lda:K"):
            configure(SimilarityConfig, store=str(layer_store), out=str(tmp_path / "x"), remove_language=bad)


def test_retrieval_against_a_baseline_store(seqsim, layer_store, sim, tmp_path):
    """retrieval --baseline: baseline_delta.csv holds, per measure and layer, this store's and the baseline's R@1
    (each equal to its own retrieval.csv's mean over directed pairs) and their difference; a store of another layer
    store is refused as a baseline. retrieval through its library call, in this process (its flags:
    test_retrieval.py; this process holds seqsim's)."""
    import csv

    from engine.pipelines.retrieval.config import RetrievalConfig, RetrievalError
    from engine.pipelines.retrieval.run import run_retrieval

    out = tmp_path / "sim-mean"
    seqsim("--store", str(layer_store), "--out", str(out), "--measure", "mean", "--remove_language", "mean")
    run_retrieval(configure(RetrievalConfig, similarity=str(out), out=str(tmp_path / "r"), baseline=str(sim),
                            measures=("mean",)))  # fmt: skip
    run_retrieval(configure(RetrievalConfig, similarity=str(sim), out=str(tmp_path / "base"), measures=("mean",)))

    def pooled_r1(folder):
        rows = [r for r in csv.DictReader(open(folder / "retrieval.csv")) if r["metric"] == "R@1"]
        layers = sorted({int(r["layer"]) for r in rows})
        return {la: np.mean([float(r["value"]) for r in rows if int(r["layer"]) == la]) for la in layers}

    delta = [r for r in csv.DictReader(open(tmp_path / "r" / "baseline_delta.csv")) if r["lang_a"] == "all"]
    own, base = pooled_r1(tmp_path / "r"), pooled_r1(tmp_path / "base")
    assert [int(r["layer"]) for r in delta] == sorted(own) and {r["transform"] for r in delta} == {"mean"}
    assert {r["baseline_transform"] for r in delta} == {"none"}
    for r in delta:
        layer = int(r["layer"])
        assert float(r["r1"]) == pytest.approx(own[layer]) and float(r["baseline_r1"]) == pytest.approx(base[layer])
        assert float(r["delta"]) == pytest.approx(own[layer] - base[layer])
    assert (tmp_path / "r" / "figures" / "baseline_by_layer.png").stat().st_size > 0
    other = tmp_path / "other-store"
    shutil.copytree(layer_store, other)
    elsewhere = tmp_path / "sim-other"
    seqsim("--store", str(other), "--out", str(elsewhere), "--measure", "mean")
    with pytest.raises(RetrievalError, match="computed from another layer_store"):
        run_retrieval(configure(RetrievalConfig, similarity=str(out), out=str(tmp_path / "x"), baseline=str(elsewhere)))


def test_a_baseline_may_differ_in_the_transform_or_the_precision_not_both():
    """An fp8 store against its dtype twin is the fp8 delta, labelled so; a baseline that also differs in the
    transform is refused: the change would mix the two effects."""
    from engine.pipelines.retrieval import delta
    from engine.pipelines.retrieval.config import RetrievalError

    base = {"layer_store": "s", "model_name": "m", "checkpoint_sha256": "c", "remove_language": "none",
            "seqsim_precision": "dtype", "seqsim_fp8_scale": None}  # fmt: skip
    fp8 = {**base, "seqsim_precision": "fp8", "seqsim_fp8_scale": 2.0}
    delta.check_baseline(fp8, base, "fp8", "base")
    delta.check_baseline({**base, "remove_language": "mean"}, base, "mean", "base")
    assert (delta.settings_label(fp8), delta.settings_label(base)) == ("none; seqsim fp8 x2.0", "none")
    with pytest.raises(RetrievalError, match="both the transform and SeqSim's precision"):
        delta.check_baseline({**fp8, "remove_language": "mean"}, base, "both", "base")


def test_seqsim_kernel_choices_through_the_job(seqsim, layer_store, sim, tmp_path, capsys):
    """--seqsim_kernel pallas (the fused kernel, interpret mode here) and blocks give the default's (packed)
    matrices up to the order of float32 sums; the choice is not recorded (it changes the last bits only, as the
    device does), so a resume with another kernel goes on and computes only what is missing."""
    out = tmp_path / "sim"
    common = ("--store", str(layer_store), "--out", str(out), "--langs", "de,en", "--measure", "seqsim,seqsim_b2a")
    seqsim(*common, "--layers", "1", "--seqsim_kernel", "pallas")
    capsys.readouterr()
    seqsim(*common, "--layers", "1,2", "--seqsim_kernel", "blocks")
    assert "computed 1 pair-layers" in capsys.readouterr().out
    assert "seqsim_kernel" not in json.loads((out / "manifest.json").read_text())
    default, chosen = open_similarity(str(sim)), open_similarity(str(out))
    for measure in ("seqsim", "seqsim_b2a"):
        for layer in (1, 2):
            got, want = chosen.matrix(measure, "de", "en", layer)[0], default.matrix(measure, "de", "en", layer)[0]
            assert np.isnan(got).sum() == np.isnan(want).sum() == 5  # the corrupt clip's row
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{measure} {layer}")


def test_fp8_through_the_job_equals_the_numpy_twin(seqsim, layer_store, sim, tmp_path, capsys):
    """--seqsim_precision fp8 (issue 80, item 3): the job's matrices are kernels.seqsim_fp8's NumPy twin on the
    store's states, within 1e-6: the e4m3 values and their products are exact in float32 on both sides (bit for bit
    the same numbers), only the order of the float32 sums over embed and frames differs (a few ulps of scores <= 1),
    the kernel test's tolerance. On CPU the job says it is emulated. The default's matrices are not fp8's."""
    from kernels.seqsim_fp8 import reference_seqsim_matrix_fp8

    out = tmp_path / "fp8"
    seqsim("--store", str(layer_store), "--out", str(out), "--langs", "de,en", "--layers", "1",
           "--measure", "seqsim,seqsim_a2b", "--seqsim_precision", "fp8")  # fmt: skip
    said = capsys.readouterr()
    err = said.err
    assert "seqsim_precision fp8 (scale tensor): EMULATED on cpu" in err and "no speed-up" in err, err
    assert "GFLOP/s (fp8 e4m3, scale tensor, emulated)" in said.out, said.out  # the summary names the precision
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seqsim_precision"], manifest["seqsim_fp8_scale"]) == ("fp8", "tensor")
    store, reader = open_store(str(layer_store)), open_similarity(str(out))
    A, len_A = store.language_layer("de", 1, dtype=np.float32)
    B, len_B = store.language_layer("en", 1, dtype=np.float32)
    ia, ib = np.flatnonzero(len_A > 0), np.flatnonzero(len_B > 0)
    score, a2b, _ = reference_seqsim_matrix_fp8(A[ia], len_A[ia], B[ib], len_B[ib], "tensor")
    for measure, want in (("seqsim", score), ("seqsim_a2b", a2b)):
        got = reader.matrix(measure, "de", "en", 1)[0]
        assert np.isnan(got).sum() == 5  # the corrupt clip's row
        np.testing.assert_allclose(got[np.ix_(ia, ib)], want, rtol=0, atol=1e-6, err_msg=measure)
    default = open_similarity(str(sim)).matrix("seqsim", "de", "en", 1)[0]
    assert np.nanmax(np.abs(default - reader.matrix("seqsim", "de", "en", 1)[0])) > 1e-5  # fp8 moved the scores


def test_fp8_is_recorded_and_a_resume_with_another_precision_is_refused(layer_store, sim, tmp_path):
    """fp8 changes the scores, so the manifest records it with its scale, and a resume (or a worker joining) with
    another precision or scale is refused before any work, naming both values; the default records "dtype" (and
    no scale), and a store written before the option reads as "dtype": a default resume of it goes on."""

    def run(out, **settings):
        defaults = {"langs": ("de", "en"), "layers": (1,), "measures": ("seqsim",), "allow_partial": True,
                    "progress": False}  # fmt: skip
        config = configure(SimilarityConfig, store=str(layer_store), out=str(out), **{**defaults, **settings})
        return run_similarity(config)

    out = tmp_path / "fp8"
    run(out, seqsim_precision="fp8", seqsim_fp8_scale="frame")
    with pytest.raises(SimilarityMismatchError, match=r"seqsim_precision: store has 'fp8', this run 'dtype'"):
        run(out, layers=(1, 2))
    with pytest.raises(SimilarityMismatchError, match=r"seqsim_fp8_scale: store has 'frame', this run 'tensor'"):
        run(out, layers=(1, 2), seqsim_precision="fp8")
    assert sorted(p.name for p in (out / "seqsim" / "de__en" / "done").glob("*.json")) == ["1.json"]

    manifest = json.loads((sim / "manifest.json").read_text())
    assert (manifest["seqsim_precision"], manifest["seqsim_fp8_scale"]) == ("dtype", None)  # the default: as before
    old = tmp_path / "before-the-option"
    run(old)
    path = old / "manifest.json"
    path.write_bytes(json_bytes({k: v for k, v in json.loads(path.read_text()).items()
                                 if k not in ("seqsim_precision", "seqsim_fp8_scale")}))  # fmt: skip
    with pytest.raises(SimilarityMismatchError, match=r"seqsim_precision: store has 'dtype', this run 'fp8'"):
        run(old, seqsim_precision="fp8")
    assert run(old, layers=(1, 2)).pair_layers == 1  # the default goes on: layer 2 only


def test_fp8_takes_its_own_kernel_only():
    """fp8 scores by its own packed bins: another --seqsim_kernel with it is refused when configured, and so is a
    scale other than the default without fp8 (it would be ignored, and not recorded)."""
    with pytest.raises(SimilarityError, match="seqsim_precision fp8 scores by its own packed bins"):
        configure(SimilarityConfig, store="s", out="o", seqsim_precision="fp8", seqsim_kernel="blocks")
    configure(SimilarityConfig, store="s", out="o", seqsim_precision="fp8", seqsim_kernel="packed")
    with pytest.raises(SimilarityError, match="applies with --seqsim_precision fp8 only"):
        configure(SimilarityConfig, store="s", out="o", seqsim_fp8_scale="frame")


def test_fp8_plan_prints_the_agreement_and_the_speed_it_assumes(layer_store, tmp_path, monkeypatch):
    """--plan with fp8 prints the agreement with bf16 measured in bench/RESULTS.md, that it is emulated here, and the
    device rate it assumes: 2x bf16 on the e4m3 tensor cores of an H100, none on an A100 (no e4m3: emulated). Here
    it times the fp8 kernel itself (the timing is replaced by a constant: this checks which kernel, not how fast)."""
    from engine.pipelines.seqsim import plan
    from engine.pipelines.seqsim.plan import plan_seqsim_run
    from engine.runtime.devices import get_device

    timed = []
    monkeypatch.setattr(plan, "calibrate_seqsim", lambda d, dtype, fp8_scale=None: timed.append(fp8_scale) or 1e9)

    config = configure(SimilarityConfig, store=str(layer_store), out=str(tmp_path / "s"), measures=("seqsim",),
                       layers=(1,), seqsim_precision="fp8")  # fmt: skip
    h100 = plan_seqsim_run(config, get_device("h100")).render()
    for needed in ("seqsim precision: fp8 e4m3, scale tensor", "the top-1 of 12 of 1,600 queries changed",
                   "here (cpu): fp8 EMULATED", "fp8 at 2x the bf16 peak (1978 TFLOP/s", "seqsim fp8 kernel at",
                   "as computed here (fp8,"):  # fmt: skip
        assert needed in h100, (needed, h100)
    a100 = plan_seqsim_run(config, get_device("a100")).render()
    assert "on NVIDIA A100 80GB: no e4m3 tensor cores: fp8 emulated" in a100, a100
    default = plan_seqsim_run(dataclasses.replace(config, seqsim_precision="dtype"), None).render()
    assert "fp8" not in default and "precision" not in default, default
    assert timed == ["tensor", "tensor", None]
    assert not (tmp_path / "s").exists()
