"""The compare job end to end on two small planted layer stores of "the same audio": one at 50 frames/s, one at 25
with its utterances in another order and one utterance not done. Every number is recomputed here in float64 NumPy
from the stores (pooling, frame pairing by brute force over times, retrieval by sorting), not by the code under
test. Tolerance 1e-4, the acceptance bound (float32 states, float32 kernels)."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.figures import png_title
from engine.pipelines.compare import depth, states
from engine.pipelines.compare.config import CompareConfig, CompareError
from engine.pipelines.compare.layers import ROW_COLUMNS
from engine.pipelines.compare.run import run_compare
from engine.runtime.options import ConfigError, configure
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow
from kernels.cka import reference_linear_cka
from kernels.metrics import reference_retrieval_metrics
from tests.conftest import TINY_DIMS
from tests.jobs.conftest import seal

LANGS = ("de", "en")
N = 12
LAYERS = (0, 1, 2)


def make_store(root, name, rate, order, skip=None, seed=0, width=64, longer=(), langs=LANGS):
    """Utterance s<i> of every language of ``langs``: a per-id latent (shared across languages and stores) mixed
    into every frame, plus per-store noise; stored in ``order``; ``skip`` = (lang, index) left not done; ``longer``:
    ids i whose clip is another, 2 s longer."""
    store = LayerStore.create_or_open(
        f"file://{root}",
        StoreInfo(name, "0" * 64, TINY_DIMS, LAYERS, "float32", frame_rate=rate),
        creation={"dataset": "planted-latents"},
    )
    latent = np.random.default_rng(99).standard_normal((N, 8))
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((len(LAYERS), 8, width))
    seconds = np.random.default_rng(7).uniform(0.4, 1.2, N)  # the same audio durations in both stores
    seconds[list(longer)] += 2.0
    for lang in langs:
        frames = [max(1, int(seconds[i] * rate)) for i in order]
        rows = [UtteranceRow(id=f"s{i}", lang=lang, path=f"/{lang}/{i}.wav", duration_s=float(seconds[i]),
                             n_frames=f, n_windows=1) for i, f in zip(order, frames, strict=True)]  # fmt: skip
        arrays = store.language(lang, rows)
        for u, (i, f) in enumerate(zip(order, frames, strict=True)):
            if skip == (lang, u):
                continue
            t = np.linspace(0, 1, f)[None, :, None]
            x = np.einsum("k,lkd->ld", latent[i], mix)[:, None, :] * (1 + t) + 20.0 * rng.standard_normal((3, f, width))
            arrays.write_utterance(u, x.astype(np.float32))
        arrays.flush()
    return str(root)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a = make_store(root / "a", "model-a", 50.0, list(range(N)))
    b = make_store(root / "b", "model-b", 25.0, list(reversed(range(N))), skip=("en", 2), seed=1)
    challenge = root / "challenge"
    challenge.mkdir()
    with open(challenge / "de__en.csv", "w") as f:
        f.write("id,kept,reason,evidence\n" + "".join(f"s{i},{int(i % 3 != 0)},,\n" for i in range(N)))
    seal(challenge / "de__en.csv")
    out = root / "out"
    config = configure(
        CompareConfig, stores=(a, b), out=str(out), challenge=str(challenge), frame_sample=10_000, knn_k=3
    )
    return a, b, out, run_compare(config)


def pooled_np(url, lang, layer):
    """{(id, recording): f64[embed]} of the done utterances, pooled here."""
    reader = open_store(url)
    x, lengths = reader.language_layer(lang, layer, dtype=np.float64)
    rows = reader.arrays(lang).rows
    return {(rows[u].id, rows[u].recording): x[u, : lengths[u]].mean(0) for u in range(len(rows)) if lengths[u] > 0}


def paired_pooled(row, url) -> tuple[np.ndarray, np.ndarray]:
    """The pooled states of a row's two layers over the ids both stores hold (its language, or all), in NumPy."""
    langs = LANGS if row["language"] == "all" else (row["language"],)
    xs, ys = [], []
    for lang in langs:
        pa_ = pooled_np(url[row["model_a"]], lang, row["layer_a"])
        pb_ = pooled_np(url[row["model_b"]], lang, row["layer_b"])
        shared = sorted(set(pa_) & set(pb_))
        xs += [pa_[k] for k in shared]
        ys += [pb_[k] for k in shared]
    return np.array(xs), np.array(ys)


def test_layer_similarity_recomputed_in_numpy(run):
    a, b, out, result = run
    table = pq.read_table(out / "layer_similarity.parquet")
    assert tuple(table.column_names) == ROW_COLUMNS
    rows = table.to_pylist()
    assert {r["measure"] for r in rows} == {"cka", "cka_unbiased", "svcca", "pwcca", "mknn"}
    assert {r["language"] for r in rows} == {*LANGS, "all"} and {r["level"] for r in rows} == {"utterance", "frame"}
    checked = 0
    for r in rows:
        if r["measure"] != "cka" or r["level"] != "utterance":
            continue
        xs, ys = paired_pooled(r, {"model-a": a, "model-b": b})
        assert r["n"] == len(xs)
        assert r["value"] == pytest.approx(reference_linear_cka(xs, ys), abs=1e-4)
        if r["model_a"] == r["model_b"] and r["layer_a"] == r["layer_b"]:
            assert r["value"] == pytest.approx(1.0, abs=1e-6)
        checked += 1
    assert checked == 3 * 3 * 3 * 3  # (a,a), (a,b), (b,b) x 3 x 3 layers x (de, en, all)
    en_ab = [r for r in rows if r["language"] == "en" and r["model_a"] == "model-a" and r["model_b"] == "model-b"]
    assert {r["n"] for r in en_ab if r["level"] == "utterance"} == {N - 1}  # the utterance not done in b


def test_frames_paired_by_time(run):
    a, b, out, result = run
    # b's frame j (25/s) has its centre in a's frame 2j + 1 (50/s); b's frame 3 would need a's frame 7: absent.
    assert [x.tolist() for x in states.frame_pairs(7, 4, 50.0, 25.0)] == [[1, 3, 5], [0, 1, 2]]
    for la, lb, ra, rb in [(7, 4, 50.0, 25.0), (4, 7, 25.0, 50.0), (10, 10, 50.0, 50.0), (9, 5, 50.0, 30.0)]:
        got = list(zip(*(x.tolist() for x in states.frame_pairs(la, lb, ra, rb)), strict=True))
        assert got == states.reference_frame_pairs(la, lb, ra, rb)
    rows = pq.read_table(out / "layer_similarity.parquet").to_pylist()
    row = next(r for r in rows if (r["model_a"], r["model_b"], r["layer_a"], r["layer_b"], r["language"],
               r["level"], r["measure"]) == ("model-a", "model-b", 2, 1, "de", "frame", "cka"))  # fmt: skip
    ra, rb = open_store(a), open_store(b)
    xa, na = ra.language_layer("de", 2, dtype=np.float64)
    xb, nb = rb.language_layer("de", 1, dtype=np.float64)
    ids_b = {row_.id: u for u, row_ in enumerate(rb.arrays("de").rows)}
    fa, fb = [], []
    for u, row_ in enumerate(ra.arrays("de").rows):
        v = ids_b[row_.id]
        for i, j in states.reference_frame_pairs(int(na[u]), int(nb[v]), 50.0, 25.0):
            fa.append(xa[u, i])
            fb.append(xb[v, j])
    assert row["n"] == len(fa)  # frame_sample exceeds the frames: every pair is used
    assert row["value"] == pytest.approx(reference_linear_cka(np.array(fa), np.array(fb)), abs=1e-4)


def test_retrieval_by_depth_and_challenge_table(run):
    a, b, out, result = run
    rows = list(csv.DictReader(open(out / "by_depth.csv")))
    assert tuple(rows[0]) == depth.DEPTH_COLUMNS
    pa_de, pa_en = pooled_np(a, "de", 1), pooled_np(a, "en", 1)

    def cosines(p, q):
        p, q = np.array(list(p.values())), np.array(list(q.values()))
        p, q = p / np.linalg.norm(p, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
        return p @ q.T

    ids_de, ids_en = [k[0] for k in pa_de], [k[0] for k in pa_en]
    want = reference_retrieval_metrics(cosines(pa_de, pa_en), ids_de, ids_en, ks=(1,))
    got = {
        r["metric"]: r
        for r in rows
        if (r["model"], r["layer"], r["lang_a"], r["lang_b"]) == ("model-a", "1", "de", "en")
    }
    assert float(got["R@1"]["value"]) == pytest.approx(want.recall[1]) and int(got["R@1"]["n"]) == N
    assert float(got["MRR"]["value"]) == pytest.approx(want.mrr) and float(got["R@1"]["depth"]) == pytest.approx(1 / 3)
    pooled = next(
        r for r in rows if (r["model"], r["layer"], r["lang_a"], r["metric"]) == ("model-a", "1", "all", "R@1")
    )
    pairs = [float(r["value"]) for r in rows if (r["model"], r["layer"], r["metric"]) == ("model-a", "1", "R@1")
             and r["lang_a"] != "all"]  # fmt: skip
    assert float(pooled["value"]) == pytest.approx(np.mean(pairs)) and len(pairs) == 2
    # The challenge table: the folder's de__en.csv serves both directions; kept ids = i % 3 != 0 (8 of 12).
    table = list(csv.DictReader(open(out / "challenge_table.csv")))
    assert tuple(table[0]) == depth.CHALLENGE_COLUMNS
    scores = cosines(pa_de, pa_en)
    kept_de = [i for i, k in enumerate(ids_de) if int(k[1:]) % 3]
    kept_en = [j for j, k in enumerate(ids_en) if int(k[1:]) % 3]
    sub = [
        reference_retrieval_metrics(scores[np.ix_(kept_de, kept_en)], [ids_de[i] for i in kept_de],
                                    [ids_en[j] for j in kept_en], ks=(1,)).recall[1],
        reference_retrieval_metrics(scores.T[np.ix_(kept_en, kept_de)], [ids_en[j] for j in kept_en],
                                    [ids_de[i] for i in kept_de], ks=(1,)).recall[1],
    ]  # fmt: skip
    full = [want.recall[1], reference_retrieval_metrics(scores.T, ids_en, ids_de, ks=(1,)).recall[1]]
    at = {r["set"]: r for r in table if (r["model"], r["layer"]) == ("model-a", "1")}
    assert float(at["challenge"]["value"]) == pytest.approx(np.mean(sub)) and int(at["challenge"]["n"]) == 16
    assert float(at["full"]["value"]) == pytest.approx(np.mean(full)) and int(at["full"]["n"]) == 24
    assert np.mean(full) < 1.0  # the planted noise leaves something to rank
    for name in ("by_depth.png", "layers_model-a__model-b_utterance.png", "layers_model-a__model-a_frame.png"):
        assert (out / "figures" / name).stat().st_size > 10_000
        title = png_title((out / "figures" / name).read_bytes())  # the models, the dataset once, n
        assert "model-a, model-b; dataset planted-latents; 2 languages; n = " in title, (name, title)
    assert "CKA of a layer with itself: min 1.0000" in result.report()


def test_refusals(run, tmp_path):
    a, b, _, _ = run
    with pytest.raises(CompareError, match="both named"):
        run_compare(configure(CompareConfig, stores=(a, b), out=str(tmp_path / "x"), names=("m", "m")))
    with pytest.raises(ConfigError, match="measures: 'rsa' is not one of"):
        configure(CompareConfig, stores=(a,), out=str(tmp_path), measures=("cka", "rsa"))
    with pytest.raises(CompareError, match="one entry per store"):
        configure(CompareConfig, stores=(a, b), out=str(tmp_path), retrieval=("x",))


def test_a_rerun_holds_the_lease_and_the_settings_of_its_folder(run, tmp_path, monkeypatch):
    """compare takes the writer lease and records its settings before any work, as the other jobs: two compares into
    one folder, a rerun with other settings and an output that cannot be written are refused before a number is
    computed (a read-only --out was found after the whole computation)."""
    from engine.pipelines.compare import run as compare_run
    from engine.runtime.lease import StoreBusyError, WriterLease
    from engine.stores.kv import StoreError, open_kvstore

    a, b, out, _ = run
    assert (out / "manifest.json").exists() and (out / "by_depth.csv.sha256").exists()

    def refused(*args, **kwargs):
        raise AssertionError("computed before the run was refused")

    monkeypatch.setattr(compare_run, "_retrieval", refused)
    config = configure(CompareConfig, stores=(a, b), out=str(out), challenge=str(pathlib.Path(a).parent / "challenge"),
                       frame_sample=10_000, knn_k=4)  # fmt: skip
    with pytest.raises(CompareError, match="other settings: knn_k: store has 3, this run 4"):
        run_compare(config)
    with WriterLease(open_kvstore(str(tmp_path / "busy"))[1], str(tmp_path / "busy"), "compare"):
        with pytest.raises(StoreBusyError, match="being written by another run: compare"):
            run_compare(configure(CompareConfig, stores=(a, b), out=str(tmp_path / "busy")))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="writer lease"):
        run_compare(configure(CompareConfig, stores=(a, b), out=str(tmp_path / "file" / "c")))


def test_utterances_of_one_id_must_be_the_same_audio(run, tmp_path):
    """Pairing by id alone took a replaced, longer clip for the same utterance: the tables' durations must agree."""
    a = run[0]
    c = make_store(tmp_path / "c", "model-c", 50.0, list(range(N)), longer=(3,))
    message = r"other audio under 1 ids of 'de': 's3' \(\d\.\d+ s vs \d\.\d+ s\).*--allow_mismatch"
    with pytest.raises(CompareError, match=message):
        run_compare(configure(CompareConfig, stores=(a, c), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # refused before anything was written
    pairing = states.pair_utterances(open_store(a), open_store(c), "de", allow_mismatch=True)
    assert len(pairing.keys) == N
    # Two shared utterances wrote CKA 1.000 for every layer pair (a probe's): two mean-pooled points span one line.
    # A language of two is measured pooled with the others (and at the frame level), not on its own.
    two = make_store(tmp_path / "two", "model-two", 50.0, [0, 1])
    run_compare(configure(CompareConfig, stores=(a, str(two)), out=str(tmp_path / "two-out"), levels=("utterance",)))
    table = pq.read_table(tmp_path / "two-out" / "layer_similarity.parquet").to_pandas()
    two_rows = table[(table["model_a"] == "model-two") | (table["model_b"] == "model-two")]
    assert set(two_rows["language"]) == {"all"} and (two_rows["n"] == 2 * len(LANGS)).all(), two_rows
    one = make_store(tmp_path / "one", "model-one", 50.0, [0])
    with pytest.raises(CompareError, match=r"share 1 done utterances of 'de' .*: 2 at least are needed"):
        states.pair_utterances(open_store(a), open_store(one), "de", allow_mismatch=False)


def test_job_plan_through_flags(run, run_job):
    a, b, _, _ = run
    proc = run_job("compare", f"--stores={a},{b}", "--out=/tmp/unused", "--plan", "--plan_device=h100", timeout=300)
    assert "plan: compare" in proc.stdout and "utterance cka" in proc.stdout and "peak memory" in proc.stdout


def test_plan_prices_cycle_knn_on_the_lists_of_mutual_knn():
    """cycle_knn searches no lists of its own when mknn is asked too (the lists are made once per set), so the plan
    prices them once; its null is as many list compares as mutual k-NN's."""
    from engine.pipelines.compare.plan import ModelShape, Rates, set_seconds

    shape, rates = ModelShape(4, 64), Rates(1e9, 1e-9, 1e-9, 1e-9)
    alone = set_seconds(shape, shape, 100, ("cycle_knn",), 10, 4096, 20, rates)
    both = set_seconds(shape, shape, 100, ("mknn", "cycle_knn"), 10, 4096, 20, rates)
    assert alone["cycle_knn"] == pytest.approx(both["mknn"]) and both["cycle_knn"] < both["mknn"] / 10
    assert alone["null cycle_knn"] == both["null cycle_knn"] == both["null mknn"] > 0


def test_rows_read_from_a_retrieval_folder(tmp_path):
    """The other source of retrieval: jobs.retrieval's CSVs, written here with its own column lists."""
    from engine.pipelines.retrieval.output import CSV_COLUMNS
    from engine.pipelines.retrieval.subset import SUBSET_COLUMNS

    with open(tmp_path / "retrieval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for a, b, value in (("de", "en", 0.5), ("en", "de", 0.25)):
            w.writerow([a, b, 4, "seqsim", "R@1", value, 0.1, 10, 0, 0, 0, 0])
            w.writerow([a, b, 4, "seqsim", "MRR", value + 0.1, 0.2, 10, 0, 0, 0, 0])
            w.writerow([a, b, 4, "mean", "R@1", 0.9, 0.1, 10, 0, 0, 0, 0])
        w.writerow(["de", "fr", 4, "seqsim", "R@1", "NA", "NA", 0, 10, 0, 0, 0])  # no shared ids: left out
    with open(tmp_path / "subset_comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUBSET_COLUMNS)
        for name in ("full", "challenge", "size_matched"):
            w.writerow(["de", "en", 4, "seqsim", name, "R@1", 0.5, 0.4, 0.6, 0.1, 6, 1])
    seal(tmp_path / "retrieval.csv"), seal(tmp_path / "subset_comparison.csv")
    rows, challenge = depth.read_rows("m", 4, str(tmp_path), "seqsim")
    assert sorted((r[3], r[6], r[7]) for r in rows) == [("de", "MRR", 0.6), ("de", "R@1", 0.5), ("en", "MRR", 0.35),
                                                        ("en", "R@1", 0.25)]  # fmt: skip
    assert all(r[2] == pytest.approx(0.8) and r[9] == 10 for r in rows)  # layer 4 of L = 4: depth 4 / 5
    pooled = {r[6]: r for r in depth.pooled_rows(rows)}
    assert pooled["R@1"][7] == pytest.approx(0.375) and pooled["R@1"][9] == 20
    assert sorted(r[5] for r in challenge) == ["challenge", "full"]
    with pytest.raises(CompareError, match="no measure 'dtw'"):
        depth.read_rows("m", 4, str(tmp_path), "dtw")
    with pytest.raises(CompareError, match="no retrieval.csv"):
        depth.read_rows("m", 4, str(tmp_path / "missing"), "seqsim")


def test_cknna_on_request_recomputed_from_the_dense_formula(run, tmp_path):
    """--measures cknna (platonic-rep's CKNNA, not a default measure): every utterance-level value equals the dense
    float64 formula (kernels.cknna.reference_cknna) on the pooled states recomputed here; knn_k < 2 is refused."""
    from kernels.cknna import reference_cknna

    a, b, _, _ = run
    config = configure(
        CompareConfig, stores=(a, b), out=str(tmp_path / "out"), measures=("cknna",), levels=("utterance",), knn_k=3
    )
    run_compare(config)
    rows = pq.read_table(tmp_path / "out" / "layer_similarity.parquet").to_pylist()
    assert {r["measure"] for r in rows} == {"cknna"} and len(rows) == 3 * 3 * 3 * 3
    for r in rows:
        xs, ys = paired_pooled(r, {"model-a": a, "model-b": b})
        assert r["value"] == pytest.approx(reference_cknna(xs, ys, 3), abs=1e-4), r
    with pytest.raises(CompareError, match="cknna needs knn_k >= 2"):
        configure(CompareConfig, stores=(a,), out=str(tmp_path / "x"), measures=("cknna",), knn_k=1)


def test_permutation_null_recomputed_by_loops(run, tmp_path):
    """--null_permutations: every utterance-level row's value, null_mean, null_q95, p_value and value_less_null equal
    the float64 twin of its measure applied to (a, b[p]) for the job's seeded permutations, in a plain loop; the frame
    level has no null unless asked; the heatmap says which cells are not above the null. cycle_knn (on request) is
    directed: its row is cycle_knn(model a's layer, model b's layer), and a store with itself has a full, not
    symmetric, grid."""
    from engine.pipelines.compare.null import permutations, reference_null
    from kernels.cca import reference_svcca
    from kernels.knn import reference_cycle_knn, reference_mutual_knn

    a, b, _, _ = run
    out = tmp_path / "out"
    measures = ("cka", "cka_unbiased", "svcca", "mknn", "cycle_knn")
    config = configure(CompareConfig, stores=(a, b), out=str(out), measures=measures, knn_k=3, null_permutations=9,
                       frame_sample=64)  # fmt: skip
    run_compare(config)
    rows = pq.read_table(out / "layer_similarity.parquet").to_pylist()
    twins = {
        "cka": reference_linear_cka,
        "cka_unbiased": lambda x, y: reference_linear_cka(x, y, unbiased=True),
        "svcca": reference_svcca,
        "mknn": lambda x, y: reference_mutual_knn(x, y, 3),
        "cycle_knn": lambda x, y: reference_cycle_knn(x, y, 3),  # out through b's layer, back through a's
    }
    checked = 0
    for r in rows:
        if r["level"] == "frame":
            assert r["p_value"] is None and r["null_mean"] is None  # on request only (--null_levels)
            continue
        if r["value"] is None:
            assert r["p_value"] is None  # not measured: no null either
            continue
        xs, ys = paired_pooled(r, {"model-a": a, "model-b": b})
        if r["measure"] in ("mknn", "cycle_knn"):  # (the CKA values are test_layer_similarity's)
            assert r["value"] == pytest.approx(twins[r["measure"]](xs, ys), abs=1e-6), r
        null = reference_null(twins[r["measure"]], xs, ys, permutations(0, "utterance", r["language"], len(xs), 9))
        assert r["null_mean"] == pytest.approx(null.mean(), abs=1e-4), r
        assert r["null_q95"] == pytest.approx(np.quantile(null, 0.95), abs=1e-4), r
        assert r["value_less_null"] == pytest.approx(r["value"] - r["null_mean"], abs=1e-9)
        # ties (mutual k-NN counts) may fall either way of float32 rounding: the p-value lies between the two counts
        low, high = ((1 + np.sum(null >= r["value"] + s)) / 10 for s in (1e-5, -1e-5))
        assert low - 1e-9 <= r["p_value"] <= high + 1e-9, r
        checked += 1
    assert checked >= 4 * 3 * 3 * 3 * 3  # cka, cka_unbiased, mknn, cycle_knn at least: model pairs, layer pairs, sets
    cycle = {(r["model_a"], r["model_b"], r["layer_a"], r["layer_b"], r["language"]): r["value"] for r in rows
             if r["measure"] == "cycle_knn" and r["level"] == "utterance"}  # fmt: skip
    assert len(cycle) == 3 * 3 * 3 * 3
    assert any(v != cycle[m, m, j, i, lang] for (m, b_, i, j, lang), v in cycle.items() if m == b_)  # directed
    related = [r for r in rows if r["measure"] == "cka" and r["level"] == "utterance" and r["language"] == "all"
               and r["model_a"] != r["model_b"]]  # fmt: skip
    assert all(r["p_value"] == pytest.approx(1 / 10) for r in related)  # the planted latents: above every shuffle
    assert "not above the permutation null" in png_title(
        (out / "figures/layers_model-a__model-a_utterance.png").read_bytes()
    )


def test_null_through_the_flags_and_read_back(run, run_job, tmp_path):
    """The null's options through jobs.compare's flags: the frame level on request gets its columns, the record of
    the run keeps the settings, and --null_permutations 0 writes none."""
    import json

    a, b, _, _ = run
    out = tmp_path / "flags"
    args = [f"--stores={a},{b}", f"--out={out}", "--null_permutations=9", "--null_levels=utterance,frame",
            "--frame_sample=40", "--measures=cka", "--frame_measures=cka"]  # fmt: skip
    env = {"BABELGRID_STATUS_SECONDS": "0.001"}  # a status line at (nearly) every step
    done = run_job("compare", *args, env=env, timeout=300)
    status = [line for line in done.stderr.splitlines() if line.startswith("compare: ") and "planned s" in line]
    # the batch log's progress (issue 62): every stage named as it runs, with the plan's ETA, ending at 100%
    assert any("ETA" in line for line in status), done.stderr[-2000:]
    for step in ("reading", "utterance, cka", "utterance, null cka", "frame, null cka", ", all, "):
        assert any(step in line for line in status), (step, status)
    assert "(100.0%)" in status[-1], status[-1]
    rows = pq.read_table(out / "layer_similarity.parquet").to_pylist()
    frame = [r for r in rows if r["level"] == "frame" and r["value"] is not None]
    assert frame and all(r["p_value"] is not None and r["p_value"] >= 1 / 10 - 1e-12 for r in frame)
    recorded = json.dumps(json.loads((out / "manifest.json").read_text()))
    assert '"null_permutations": 9' in recorded and "null_levels" in recorded  # a rerun with others is refused
    none = configure(CompareConfig, stores=(a,), out=str(tmp_path / "none"), null_permutations=0, measures=("cka",),
                     levels=("utterance",))  # fmt: skip
    run_compare(none)
    rows = pq.read_table(tmp_path / "none" / "layer_similarity.parquet").to_pylist()
    assert rows and all(r["null_mean"] is None and r["p_value"] is None for r in rows)


def test_cka_null_beyond_the_gram_route_recomputes_the_same(monkeypatch):
    """Past GRAM_MAX examples the CKA null recomputes the measure per permutation (the feature route): the same
    null as the Gram route's, to float32 rounding (1e-5)."""
    from engine.pipelines.compare import layers, null
    from engine.pipelines.compare.layers import MeasureOptions, View

    rng = np.random.default_rng(3)
    z = rng.standard_normal((40, 4))
    a = View("a", (0, 1), tuple((z @ rng.standard_normal((4, d)) + rng.standard_normal((40, d))).astype(np.float32)
                               for d in (6, 9)))  # fmt: skip
    b = View("b", (0,), ((z @ rng.standard_normal((4, 7))).astype(np.float32),))
    perms = null.permutations(0, "utterance", "x", 40, 5)
    grams = {}
    for measure in ("cka", "cka_unbiased"):
        value = layers.measure_grid(measure, a, b, MeasureOptions(), grams)
        gram_route = null.null_grid(measure, a, b, MeasureOptions(), grams, perms, value)
        monkeypatch.setattr(null, "GRAM_MAX", 10)
        shared = {}
        recomputed = null.null_grid(measure, a, b, MeasureOptions(), shared, perms, value)
        monkeypatch.setattr(null, "GRAM_MAX", layers.GRAM_MAX)
        assert "cka_null" not in shared  # the recomputing route, not the Grams
        np.testing.assert_allclose(recomputed, gram_route, atol=1e-5)


def test_languages_that_share_no_id_are_named_not_left_out_silently(caplog):
    """A probe's store of de and en clips under other names (--allow_unpaired) gave a header-only by_depth.csv and
    no word. Retrieval by depth has nothing to measure there, and says so."""
    rng = np.random.default_rng(0)
    ids = {"de": ["a", "b"], "en": ["c", "d"], "fr": ["a", "b"]}

    def pooled(lang, layer):
        return rng.standard_normal((2, 4)).astype(np.float32), ids[lang]

    rows, _ = depth.computed_rows("m", 3, [1], ["de", "en", "fr"], pooled)
    assert {(r[3], r[4]) for r in rows} == {("de", "fr"), ("fr", "de")}
    (said,) = [r.getMessage() for r in caplog.records if "no utterance id shared" in r.getMessage()]
    assert said.startswith("m: no utterance id shared by de-en, en-fr: retrieval by depth"), said
