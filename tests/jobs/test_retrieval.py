"""The retrieval job end to end on a tiny similarity store written with ``engine.stores.similarity``.

Every CSV value is checked against ``kernels.metrics.reference_retrieval_metrics`` on the matrices the test planted
(both directions, not-encoded utterances removed by index, not by the code under test); ``asymmetry.csv`` against
per-query hits found by a plain loop over the same matrices and ``scipy.stats.binomtest`` on the discordant counts.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats

from engine.figures import png_title
from engine.pipelines.retrieval import asymmetry
from engine.pipelines.retrieval.config import RetrievalConfig, RetrievalError
from engine.pipelines.retrieval.output import BY_LAYER_NAME, CSV_COLUMNS, HEATMAP_NAME
from engine.pipelines.retrieval.run import resolve_out, run_retrieval
from engine.pipelines.stages.retrieval import DirectedScore, drop_not_encoded, drop_unranked
from engine.runtime.options import configure
from engine.stores.similarity import SimilarityStore, done_marker, new_manifest
from kernels.metrics import reference_retrieval_metrics, retrieval_metrics
from kernels.metrics import unmeasured as no_metrics
from tests.jobs.conftest import seal

LAYERS = (0, 1, 2, 3)
SIGNAL = {0: 0.0, 1: 0.7, 2: 3.0, 3: 1.5}  # score bonus of a correct partner: layer 2 retrieves best
KS = (1, 5, 10)
# FLEURS-like ids: repeated sentence ids (several recordings), ids without partner (x*), one of them per language.
IDS = {
    "de": ["s0", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "xd"],
    "en": ["s0", "s1", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "xe"],
    "fr": ["s1", "s2", "s3", "s4", "s5", "s6", "s8", "s9", "xf"],
}
NOT_ENCODED = {"de": [3], "en": [0, 7], "fr": []}  # utterance indices left out of the done markers
STORED = {"seqsim": [("de", "en"), ("de", "fr"), ("en", "fr")], "mean": [("de", "en")]}
NOT_DONE = {("seqsim", "de", "fr"): [3]}  # layer left without its done marker


def planted(measure: str, a: str, b: str, seed: int) -> np.ndarray:
    """f32[layer, N_a, N_b]: noise plus SIGNAL[layer] where ids match. Rows and columns of not-encoded utterances
    hold a score that would win every ranking, not NaN: only the done marker may tell retrieval to leave them out."""
    rng = np.random.default_rng(seed)
    match = np.equal.outer(np.array(IDS[a]), np.array(IDS[b]))
    scores = np.stack([rng.standard_normal(match.shape) + SIGNAL[layer] * match for layer in LAYERS])
    scores = scores.astype(np.float32)
    scores[:, NOT_ENCODED[a], :] = 100.0
    scores[:, :, NOT_ENCODED[b]] = 100.0
    return scores


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    """(store path, {(measure, a, b): f32[layer, N_a, N_b]} as planted)."""
    root = tmp_path_factory.mktemp("sim")
    manifest = new_manifest(layer_store=str(root / "layers"), model_name="tiny", checkpoint_sha256="0" * 64,
                            layers=LAYERS)  # fmt: skip
    store = SimilarityStore.create_or_open(str(root), manifest)
    matrices = {}
    for seed, (measure, pairs) in enumerate(STORED.items()):
        for i, (a, b) in enumerate(pairs):
            scores = planted(measure, a, b, seed=10 * seed + i)
            ids = {"row_ids": IDS[a], "col_ids": IDS[b], "row_recording": list(range(len(IDS[a]))),
                   "col_recording": list(range(len(IDS[b])))}  # fmt: skip
            array = store.create_pair(measure, a, b, ids)
            # The marker records which utterances were scored, as the seqsim job writes it.
            marker = done_marker(*(np.setdiff1d(np.arange(len(IDS[x])), NOT_ENCODED[x]) for x in (a, b)))
            for position, layer in enumerate(LAYERS):
                if layer not in NOT_DONE.get((measure, a, b), []):
                    store.write_layer(array, measure, a, b, layer, scores[position], marker)
            matrices[measure, a, b] = scores
    return root, matrices


def direction(matrices, measure, query, searched, layer):
    """(f32[n, m], row ids, col ids) of one direction, not-encoded utterances removed by their planted indices."""
    if (measure, query, searched) in matrices:
        scores = matrices[measure, query, searched][LAYERS.index(layer)]
    else:
        scores = matrices[measure, searched, query][LAYERS.index(layer)].T
    rows = [i for i in range(len(IDS[query])) if i not in NOT_ENCODED[query]]
    cols = [j for j in range(len(IDS[searched])) if j not in NOT_ENCODED[searched]]
    return scores[np.ix_(rows, cols)], [IDS[query][i] for i in rows], [IDS[searched][j] for j in cols]


def expected(matrices, measure, query, searched, layer):
    """Reference metrics of one direction, not-encoded utterances removed by their planted indices."""
    return reference_retrieval_metrics(*direction(matrices, measure, query, searched, layer), ks=KS)


def loop_firsts(scores, row_ids, col_ids) -> dict:
    """Query id -> (its rows whose partner ranks first, its rows with a partner), by a plain loop: a row hits when no
    column of another id scores above its best partner (the optimistic tie rule)."""
    firsts = {}
    for i, row_id in enumerate(row_ids):
        partners = [scores[i, j] for j, c in enumerate(col_ids) if c == row_id]
        if partners:
            hit = all(scores[i, j] <= max(partners) for j, c in enumerate(col_ids) if c != row_id)
            hits, n = firsts.get(row_id, (0, 0))
            firsts[row_id] = (hits + hit, n + 1)
    return firsts


def loop_asymmetry(a2b: dict, b2a: dict):
    """(r1_a2b, r1_b2a, ids, a2b_only, b2a_only) over the ids both directions scored (an id's hit: the fraction of its
    rows that hit); None when they share none."""
    shared = sorted(set(a2b) & set(b2a))
    if not shared:
        return None
    ab = [a2b[i][0] / a2b[i][1] for i in shared]
    ba = [b2a[i][0] / b2a[i][1] for i in shared]
    discordant = [(x > y, x < y) for x, y in zip(ab, ba, strict=True)]
    return np.mean(ab), np.mean(ba), len(shared), sum(d[0] for d in discordant), sum(d[1] for d in discordant)


def assert_asymmetry(path, want: dict):
    """asymmetry.csv at ``path`` against ``want``: (measure, a, b, layer) -> ``loop_asymmetry``'s tuple or None."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == asymmetry.ASYMMETRY_COLUMNS
        rows = {(r["measure"], r["lang_a"], r["lang_b"], int(r["layer"])): r for r in reader}
    assert rows.keys() == want.keys()
    for key, w in want.items():
        row = rows[key]
        if w is None:  # no id scored both ways: not measured, never 0
            assert row["n_queries"] == "0", row
            assert {row[c] for c in ("r1_a2b", "r1_b2a", "asymmetry", "a2b_only", "b2a_only", "p_value")} == {"NA"}
            continue
        r1_ab, r1_ba, n, a2b_only, b2a_only = w
        np.testing.assert_allclose([float(row[c]) for c in ("r1_a2b", "r1_b2a", "asymmetry")],
                                   [r1_ab, r1_ba, r1_ab - r1_ba], atol=1e-12, err_msg=f"{row}")  # fmt: skip
        assert (int(row["n_queries"]), int(row["a2b_only"]), int(row["b2a_only"])) == (n, a2b_only, b2a_only), row
        if a2b_only + b2a_only:
            assert float(row["p_value"]) == stats.binomtest(a2b_only, a2b_only + b2a_only, 0.5).pvalue, row
        else:
            assert row["p_value"] == "NA", row


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def test_csv_matches_reference_both_directions(sim_store, tmp_path):
    root, matrices = sim_store
    # seqsim de:fr layer 3 is not done: a seqsim run that stopped. Scored as it was, the table's means and the figure
    # layer rested on other pairs at each layer, and the CSV lacked its rows, without a word (analyst probe).
    with pytest.raises(
        RetrievalError,
        match=r"^2 of \d+ \(measure, directed pair, layer\) of .* are not computed yet "
        r"\(seqsim de->fr layer 3, seqsim fr->de layer 3\).*--allow_partial",
    ):
        run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), ks=KS))
    assert not (tmp_path / "retrieval.csv").exists()
    result = run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), ks=KS,
                                     allow_partial=True))  # fmt: skip
    rows = read_csv(tmp_path / "retrieval.csv")
    done = [
        (measure, q, s, layer)
        for measure, pairs in STORED.items()
        for a, b in pairs
        for q, s in ((a, b), (b, a))
        for layer in LAYERS
        if layer not in NOT_DONE.get((measure, a, b), [])
    ]
    assert len(rows) == len(done) * (len(KS) + 1)
    assert sorted(result.missing) == [("seqsim", "de", "fr", 3), ("seqsim", "fr", "de", 3)]
    by_key = {(r["measure"], r["lang_a"], r["lang_b"], int(r["layer"]), r["metric"]): r for r in rows}
    for measure, q, s, layer in done:
        ref = expected(matrices, measure, q, s, layer)
        for metric, value, random in [(f"R@{k}", ref.recall[k], ref.random_recall[k]) for k in KS] + [
            ("MRR", ref.mrr, ref.random_mrr)
        ]:
            row = by_key[measure, q, s, layer, metric]
            np.testing.assert_allclose(float(row["value"]), value, atol=1e-6, err_msg=f"{row}")
            np.testing.assert_allclose(float(row["random"]), random, atol=1e-6, err_msg=f"{row}")
            assert int(row["queries"]) == ref.queries and int(row["excluded"]) == ref.excluded, row
            assert int(row["dropped_a"]) == len(NOT_ENCODED[q]) and int(row["dropped_b"]) == len(NOT_ENCODED[s]), row
    # The planted signal is strongest at layer 2, so the heatmap uses it; layer 0 is at chance.
    assert result.figure_layer == 2
    assert result.mean_over_pairs("seqsim")[2][0] > 0.9
    # Asymmetry: per stored pair and done layer, the loop's hits of both directions on their shared ids. en s1 is
    # recorded twice (a fraction of hits); the planted noise leaves discordant ids at some layers and none at others.
    want = {
        (measure, a, b, layer): loop_asymmetry(
            *(loop_firsts(*direction(matrices, measure, q, s, layer)) for q, s in ((a, b), (b, a)))
        )
        for measure, pairs in STORED.items()
        for a, b in pairs
        for layer in LAYERS
        if layer not in NOT_DONE.get((measure, a, b), [])
    }
    assert_asymmetry(tmp_path / "asymmetry.csv", want)
    discordant = [w[3] + w[4] for w in want.values()]
    assert 0 in discordant and max(discordant) >= 3  # both the NA p-value and binomtest's are checked


def test_layers_seqsim_was_not_asked_for_are_not_called_missing(tmp_path):
    """seqsim --layers 2,3 leaves the arrays' other layers empty for good; retrieval warned that they were "not in the
    similarity store yet" (a newcomer probe's). Only a layer some pair has done and another lacks is missing."""
    manifest = new_manifest(layer_store=str(tmp_path / "layers"), model_name="tiny", checkpoint_sha256="0" * 64,
                            layers=LAYERS)  # fmt: skip
    store = SimilarityStore.create_or_open(str(tmp_path / "sim"), manifest)
    ids = {"row_ids": IDS["de"], "col_ids": IDS["en"], "row_recording": list(range(len(IDS["de"]))),
           "col_recording": list(range(len(IDS["en"])))}  # fmt: skip
    array = store.create_pair("mean", "de", "en", ids)
    marker = done_marker(*(np.setdiff1d(np.arange(len(IDS[x])), NOT_ENCODED[x]) for x in ("de", "en")))
    for layer in (2, 3):
        store.write_layer(array, "mean", "de", "en", layer, planted("mean", "de", "en", 0)[layer], marker)
    result = run_retrieval(configure(RetrievalConfig, similarity=str(tmp_path / "sim"), out=str(tmp_path / "r"),
                                     ks=KS))  # fmt: skip
    assert result.missing == () or list(result.missing) == [], result.missing
    assert {int(r["layer"]) for r in read_csv(tmp_path / "r" / "retrieval.csv")} == {2, 3}


def test_excluded_and_dropped_counts(sim_store, tmp_path):
    root, _ = sim_store
    result = run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), measures=("mean",),
                                     layers=(1,)))  # fmt: skip
    # 10 and 9 candidates are searched: R@10 is 1 by construction there, and the summary says so
    assert "R@10: 2 scores searched no more candidates than k, so they are 1 by construction" in result.report()
    rows = {(r["lang_a"], r["metric"]): r for r in read_csv(tmp_path / "retrieval.csv")}
    de_en, en_de = rows["de", "R@1"], rows["en", "R@1"]
    # de -> en: 10 rows, de #3 (s2) not encoded; of the 9 left, s0 s0 s6 lost their partner (en #0 s0 and #7 s6
    # not encoded) and xd never had one.
    assert (de_en["queries"], de_en["excluded"], de_en["dropped_a"], de_en["dropped_b"]) == ("5", "4", "1", "2")
    # en -> de: 12 rows, en #0 and #7 not encoded; of the 10 left, s2 lost its partner, s8 s9 xe never had one.
    assert (en_de["queries"], en_de["excluded"], en_de["dropped_a"], en_de["dropped_b"]) == ("6", "4", "2", "1")


def test_figures_are_pngs(sim_store, tmp_path):
    root, _ = sim_store
    result = run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), figure_layer=1,
                                     allow_partial=True))  # fmt: skip
    assert result.figure_layer == 1
    names = {BY_LAYER_NAME: " queries each", HEATMAP_NAME: " queries each",
             "retrieval_asymmetry.png": "n = 5-7 ids scored both ways per pair"}  # fmt: skip
    assert sorted(result.figure_paths) == sorted(str(tmp_path / "figures" / n) for n in names)
    for name, rests_on in names.items():
        data = (tmp_path / "figures" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name
        assert rests_on in png_title(data) and "dataset " in png_title(data), name
    report = result.report()
    assert "* " in report and "seqsim" in report
    assert f"asymmetry: no pair's two directions differ in R@1 at p < 0.05 (11 tested, sign test): {tmp_path}" in report


def test_drop_not_encoded():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    scores[1] = np.nan
    scores[:, 2] = np.nan
    kept, rows, cols, dropped_rows, dropped_cols = drop_not_encoded(scores, list("abc"), list("wxyz"))
    assert (rows, cols, dropped_rows, dropped_cols) == (["a", "c"], ["w", "x", "z"], 1, 1)
    np.testing.assert_array_equal(kept, [[0, 1, 3], [8, 9, 11]])
    # The masks a done marker records decide, not the NaN: a scored row of NaN is damage, not a missing utterance.
    scored = (np.array([True, False, True]), np.array([True, True, False, True]))
    assert drop_not_encoded(scores, list("abc"), list("wxyz"), scored)[1:] == (["a", "c"], ["w", "x", "z"], 1, 1)
    with pytest.raises(RetrievalError, match="damaged"):
        drop_not_encoded(scores, list("abc"), list("wxyz"), (np.ones(3, bool), np.ones(4, bool)))
    scores[0, 0] = np.nan  # a NaN inside an encoded row and column: a damaged store, not a missing utterance
    with pytest.raises(RetrievalError, match="damaged"):
        drop_not_encoded(scores, list("abc"), list("wxyz"))


def test_bad_requests_name_the_fix(sim_store, tmp_path):
    root, _ = sim_store
    with pytest.raises(RetrievalError, match=r"no measure \['cosine'\]"):
        run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), measures=("cosine",)))
    with pytest.raises(RetrievalError, match="figure layer 7"):
        run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path), figure_layer=7))
    with pytest.raises(RetrievalError, match="output folder"):
        resolve_out("gs://bucket/sim", None)
    assert resolve_out("/data/sim", None) == "/data/sim"


def test_job_through_flags(run_job, sim_store, tmp_path):
    root, matrices = sim_store
    out = tmp_path / "out"
    argv = ["--similarity", str(root), "--out", str(out), "--measure", "seqsim", "--layers", "1-2"]
    argv += ["--langs", "de,en", "--ks", "1,5"]
    proc = run_job("retrieval", *argv)
    assert "seqsim" in proc.stdout and str(out / "figures" / HEATMAP_NAME) in proc.stdout
    rows = read_csv(out / "retrieval.csv")
    assert {(r["lang_a"], r["lang_b"]) for r in rows} == {("de", "en"), ("en", "de")}
    assert {int(r["layer"]) for r in rows} == {1, 2} and {r["metric"] for r in rows} == {"R@1", "R@5", "MRR"}
    r = next(r for r in rows if (r["lang_a"], r["layer"], r["metric"]) == ("en", "2", "R@1"))
    np.testing.assert_allclose(float(r["value"]), expected(matrices, "seqsim", "en", "de", 2).recall[1], atol=1e-6)
    bad = run_job("retrieval", "--similarity", str(root), "--ks", "0", expect=None)
    assert bad.returncode != 0 and "--ks must be positive" in bad.stderr


def test_pairs_without_shared_ids_are_not_measured_not_zero(tmp_path):
    """A pair whose languages share no utterance id has nothing to measure: NA in the CSV, named in the report,
    left out of the means and the figures, never R@1 = 0."""
    root = tmp_path / "sim"
    manifest = new_manifest(layer_store=str(tmp_path / "layers"), model_name="tiny", checkpoint_sha256="0" * 64,
                            layers=(0, 1))  # fmt: skip
    store = SimilarityStore.create_or_open(str(root), manifest)
    rng = np.random.default_rng(0)
    ids = {"a": ["s1", "s2", "s3"], "b": ["s3", "s1", "s2"], "c": ["t1", "t2"]}
    for a, b in (("a", "b"), ("a", "c")):
        pair = {"row_ids": ids[a], "col_ids": ids[b], "row_recording": [0] * len(ids[a]),
                "col_recording": [0] * len(ids[b])}  # fmt: skip
        array = store.create_pair("seqsim", a, b, pair)
        for layer in (0, 1):
            scores = rng.standard_normal((len(ids[a]), len(ids[b]))).astype(np.float32)
            store.write_layer(array, "seqsim", a, b, layer, scores, done_marker(range(len(ids[a])), range(len(ids[b]))))
    result = run_retrieval(configure(RetrievalConfig, similarity=str(root), out=str(tmp_path / "out")))
    rows = list(csv.DictReader(open(result.csv_path)))
    unmeasured = [r for r in rows if {r["lang_a"], r["lang_b"]} == {"a", "c"}]
    assert unmeasured and all(r["value"] == "NA" and r["random"] == "NA" and r["queries"] == "0" for r in unmeasured)
    assert all(r["value"] != "NA" for r in rows if {r["lang_a"], r["lang_b"]} == {"a", "b"})
    report = result.report()
    assert "seqsim (2 directed pairs measured)" in report
    assert "not measured (no shared ids; NA in the CSV): seqsim a->c, seqsim c->a" in report
    # Three queries per pair: printed next to the scores, and flagged.
    assert "|       6        5" in report  # queries and excluded per layer: a<->b 3 + 3 measured, a->c 3 + c->a 2 not
    assert "WARNING: 4 scores rest on fewer than 20 queries (the fewest: 3, seqsim a->b)" in report
    measured = [s.metrics.recall[1] for s in result.scores if {s.lang_a, s.lang_b} == {"a", "b"} and s.layer == 0]
    assert result.mean_over_pairs("seqsim")[0][0] == pytest.approx(np.mean(measured))
    # asymmetry.csv: a-b on its 3 shared ids; a-c shares none, so NA with n_queries 0, never an asymmetry of 0.
    asym = list(csv.DictReader(open(tmp_path / "out" / asymmetry.ASYMMETRY_CSV)))
    assert [(r["lang_a"], r["lang_b"], r["layer"], r["n_queries"]) for r in asym] == [
        ("a", "b", "0", "3"), ("a", "b", "1", "3"), ("a", "c", "0", "0"), ("a", "c", "1", "0")
    ]  # fmt: skip
    assert all(r[c] == "NA" for r in asym[2:] for c in ("r1_a2b", "r1_b2a", "asymmetry", "a2b_only", "p_value"))
    assert all(r["asymmetry"] != "NA" for r in asym[:2])


def test_asymmetry_sign_test_report_and_figure_on_planted_hits():
    """Per-id hits planted on DirectedScores (no store): the sign test on the discordant ids, an id recorded twice,
    ids scored one way only left out, the report's largest significant asymmetry, and the figure drawn."""
    ids = [f"s{i}" for i in range(12)]

    def score(a, b, layer, firsts):
        return DirectedScore(a, b, layer, "seqsim", no_metrics((1,), excluded=0), 0, 0, 0, firsts)

    planted = {
        # layer 1: 10 ids hit a -> b only, 2 both ways; "x" is a query of de -> en only
        1: ({i: (1, 1) for i in ids} | {"x": (1, 1)}, {i: (int(k >= 10), 1) for k, i in enumerate(ids)}),
        # layer 2: 6 ids hit b -> a only; s0 was recorded twice in en, one of its recordings hits: s0 is b -> a ahead
        2: ({i: (int(k >= 7), 1) for k, i in enumerate(ids)}, {i: (1, 2 if i == "s0" else 1) for i in ids}),
        3: ({}, {i: (1, 1) for i in ids}),  # every de query unranked: nothing shared
    }
    scores = [score("de", "en", layer, firsts[0]) for layer, firsts in planted.items()]
    scores += [score("en", "de", layer, firsts[1]) for layer, firsts in planted.items()]
    rows = asymmetry.asymmetry_rows(scores)
    assert [(r.lang_a, r.lang_b, r.layer) for r in rows] == [("de", "en", 1), ("de", "en", 2), ("de", "en", 3)]
    one, two, three = rows
    assert (one.n_queries, one.a2b_only, one.b2a_only) == (12, 10, 0)
    assert one.r1_a2b == 1.0 and one.r1_b2a == pytest.approx(2 / 12) and one.asymmetry == pytest.approx(10 / 12)
    assert one.p_value == stats.binomtest(10, 10, 0.5).pvalue < 0.01
    assert (two.a2b_only, two.b2a_only) == (0, 7)  # s0..s6 missed a -> b; s0 hit b -> a once in two
    assert two.r1_b2a == pytest.approx(11.5 / 12) and two.p_value == stats.binomtest(0, 7, 0.5).pvalue < 0.05
    assert three.n_queries == 0 and np.isnan(three.asymmetry) and three.a2b_only is None
    report = asymmetry.asymmetry_report(rows, "/out/")
    assert report == (
        "asymmetry: largest at p < 0.05 (2 of 2 tested, sign test, uncorrected): seqsim layer 1, R@1 de->en 1.000 "
        f"against en->de 0.167 (+0.833; 10 against 0 discordant of 12 ids, p = {one.p_value:.2g}): /out/asymmetry.csv"
    )
    writes = asymmetry.asymmetry_writes(rows, "tiny")
    assert writes[asymmetry.ASYMMETRY_CSV].decode().splitlines()[3].endswith(",3,seqsim,NA,NA,NA,0,NA,NA,NA")
    png = writes[asymmetry.ASYMMETRY_FIGURE]
    assert png.startswith(b"\x89PNG") and "n = 12 ids scored both ways per pair" in png_title(png)


# Non-converged ot pairs: NaN at scored (de row, en column) per layer. De #3 and en #0 are not encoded, so the NaN
# planted there is never read. Layer 2 has a NaN in every encoded de row, so de -> en has no ranked query there.
OT_NAN = {1: [(1, 2), (1, 5), (4, 3), (3, 4), (5, 0)], 2: [(i, 1) for i in range(10)]}
OT_KEPT = {"s1", "s2", "s3", "s4", "s5", "s6"}  # challenge-set ids for the --subset run


@pytest.fixture(scope="module")
def ot_store(tmp_path_factory):
    """(store path, f32[layer, N_de, N_en] with NaN planted) of measure ot for (de, en), plus a mean pair (de, fr)
    whose matrix holds one NaN among scored utterances (a damaged store), and a challenge folder for (de, en)."""
    root = tmp_path_factory.mktemp("ot")
    manifest = new_manifest(layer_store=str(root / "layers"), model_name="tiny", checkpoint_sha256="0" * 64,
                            layers=LAYERS)  # fmt: skip
    store = SimilarityStore.create_or_open(str(root / "sim"), manifest)
    scores = planted("ot", "de", "en", seed=7)
    for layer, cells in OT_NAN.items():
        for i, j in cells:
            scores[LAYERS.index(layer), i, j] = np.nan
    for measure, (a, b), matrices in (
        ("ot", ("de", "en"), scores),
        ("mean", ("de", "fr"), planted("mean", "de", "fr", 8)),
    ):
        ids = {"row_ids": IDS[a], "col_ids": IDS[b], "row_recording": list(range(len(IDS[a]))),
               "col_recording": list(range(len(IDS[b])))}  # fmt: skip
        array = store.create_pair(measure, a, b, ids)
        marker = done_marker(*(np.setdiff1d(np.arange(len(IDS[x])), NOT_ENCODED[x]) for x in (a, b)))
        if measure == "mean":
            matrices[LAYERS.index(1), 0, 0] = np.nan
        for position, layer in enumerate(LAYERS):
            store.write_layer(array, measure, a, b, layer, matrices[position], marker)
    challenge = root / "challenge"
    challenge.mkdir()
    ids = sorted(set(IDS["de"]) | set(IDS["en"]))
    (challenge / "de__en.csv").write_text("id,kept\n" + "".join(f"{i},{int(i in OT_KEPT)}\n" for i in ids))
    seal(challenge / "de__en.csv")
    return root, scores


def ot_expected(scores, query, layer, kept_ids=None):
    """(retrieval_metrics of the ranked queries, unranked count) of one direction of the planted ot matrix: rows and
    columns of not-encoded utterances and the queries holding a planted NaN removed by index."""
    matrix, row_ids, col_ids, unranked = ot_direction(scores, query, layer, kept_ids)
    if not row_ids:
        return None, unranked
    return retrieval_metrics(matrix, row_ids, col_ids, ks=KS), unranked


def ot_direction(scores, query, layer, kept_ids=None):
    """(f32[n, m], row ids, col ids, unranked count) of one direction of the planted ot matrix, as ``ot_expected``
    scores it."""
    matrix = scores[LAYERS.index(layer)]
    matrix = matrix if query == "de" else matrix.T
    searched = "en" if query == "de" else "de"
    cols = [j for j in range(len(IDS[searched])) if j not in NOT_ENCODED[searched]]
    nan = {i if query == "de" else j for i, j in OT_NAN.get(layer, [])
           if i not in NOT_ENCODED["de"] and j not in NOT_ENCODED["en"]}  # fmt: skip
    rows = [i for i in range(len(IDS[query])) if i not in NOT_ENCODED[query] and i not in nan]
    if kept_ids is not None:  # the challenge set: kept ids among those scored on both sides
        encoded = ({IDS[x][i] for i in range(len(IDS[x])) if i not in NOT_ENCODED[x]} for x in ("de", "en"))
        kept_ids = kept_ids & set.intersection(*encoded)
        rows = [i for i in rows if IDS[query][i] in kept_ids]
        cols = [j for j in cols if IDS[searched][j] in kept_ids]
    row_ids, col_ids = [IDS[query][i] for i in rows], [IDS[searched][j] for j in cols]
    return matrix[np.ix_(rows, cols)], row_ids, col_ids, len(nan)


@pytest.mark.parametrize("subset", [False, True])
def test_ot_nonconverged_queries_are_unranked_not_fatal(ot_store, tmp_path, caplog, subset):
    root, scores = ot_store
    config = configure(RetrievalConfig, similarity=str(root / "sim"), out=str(tmp_path), ks=KS, measures=("ot",),
                       subset=str(root / "challenge") if subset else None)  # fmt: skip
    with caplog.at_level("WARNING", logger="engine.pipelines.retrieval.run"):
        result = run_retrieval(config)
    rows = read_csv(tmp_path / "retrieval.csv")
    by_key = {(r["lang_a"], int(r["layer"]), r["metric"]): r for r in rows}
    assert len(rows) == 2 * len(LAYERS) * (len(KS) + 1)
    unranked = {}
    for query in ("de", "en"):
        for layer in LAYERS:
            ref, n_nan = ot_expected(scores, query, layer, OT_KEPT if subset else None)
            unranked[query, layer] = n_nan
            for metric in [f"R@{k}" for k in KS] + ["MRR"]:
                row = by_key[query, layer, metric]
                assert int(row["unranked"]) == n_nan and int(row["dropped_a"]) == len(NOT_ENCODED[query]), row
                if ref is None:  # every query unranked: not measured, never 0
                    assert (row["value"], row["random"], row["queries"], row["excluded"]) == ("NA", "NA", "0", "0")
                    continue
                value = ref.mrr if metric == "MRR" else ref.recall[int(metric[2:])]
                np.testing.assert_allclose(float(row["value"]), value, atol=1e-6, err_msg=f"{row}")
                assert int(row["queries"]) == ref.queries and int(row["excluded"]) == ref.excluded, row
                if not subset:  # every query utterance counted once
                    counts = [int(row[c]) for c in ("queries", "excluded", "unranked", "dropped_a")]
                    assert sum(counts) == len(IDS[query]), row
    # de rows 1 and 4 at layer 1; en columns 2, 3, 5 there; every de row and en column 1 at layer 2.
    assert unranked == {("de", 0): 0, ("de", 1): 2, ("de", 2): 9, ("de", 3): 0,
                        ("en", 0): 0, ("en", 1): 3, ("en", 2): 1, ("en", 3): 0}  # fmt: skip
    warning = "ot: 15 in 4 (directed pair, layer)"
    assert any(warning in r.getMessage() and "--ot_iterations" in r.getMessage() for r in caplog.records)
    report = result.report()
    assert warning in report and "every query unranked, so NA in the CSV: ot de->en layer 2" in report
    assert "no shared ids" not in report  # an all-unranked layer is not a pair without shared ids
    # asymmetry.csv on the ids ranked both ways (of the challenge set, with --subset); layer 2: none, so NA, not 0.
    kept = OT_KEPT if subset else None
    want = {
        ("ot", "de", "en", layer): loop_asymmetry(
            *(loop_firsts(*ot_direction(scores, query, layer, kept)[:3]) for query in ("de", "en"))
        )
        for layer in LAYERS
    }
    assert want["ot", "de", "en", 2] is None and want["ot", "de", "en", 1][2] < want["ot", "de", "en", 0][2]
    assert_asymmetry(tmp_path / asymmetry.ASYMMETRY_CSV, want)


def test_nan_in_a_measure_that_cannot_fail_to_converge_is_a_damaged_store(ot_store, tmp_path):
    root, _ = ot_store
    with pytest.raises(RetrievalError, match="'mean' are NaN or inf .* damaged"):
        run_retrieval(configure(RetrievalConfig, similarity=str(root / "sim"), out=str(tmp_path), measures=("mean",)))
    scores = np.zeros((2, 3), np.float32)
    scores[0, 1] = np.inf  # ot writes NaN for what it could not measure, never inf
    with pytest.raises(RetrievalError, match="'ot' are inf"):
        drop_not_encoded(scores, list("ab"), list("xyz"), measure="ot")
    scores[0, 1] = np.nan
    kept, rows, unranked = drop_unranked(drop_not_encoded(scores, list("ab"), list("xyz"), measure="ot")[0], list("ab"))
    assert rows == ["b"] and unranked == 1 and kept.shape == (1, 3)


def test_r1_over_one_candidate_is_not_a_measurement():
    """The heads and neurons jobs' R@1 (``r1_of_similarity``): searching a language of one utterance finds it
    whatever the similarity, so the heads job's --utterances 1 wrote R@1 1.0 for every head (a probe's). NaN now."""
    from engine.pipelines.stages.retrieval import r1_of_similarity

    sims = np.random.default_rng(0).standard_normal((5, 5))
    label, ids = np.array([0, 0, 1, 1, 2]), np.array(["s0", "s1", "s0", "s1", "s0"])
    out = r1_of_similarity(sims, label, ids, 3)
    assert np.isnan(out[:, 2]).all() and np.isnan(np.diag(out)).all(), out  # language 2 has one utterance
    assert np.isfinite(out[0, 1]) and np.isfinite(out[2, 0]) and np.isfinite(out[2, 1]), out
