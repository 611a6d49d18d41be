"""The probes job: LID against scikit-learn's LogisticRegression and f1_score, same-different AP against
average_precision_score and the NumPy DTW / cosine twins, and the job end to end on a tiny planted layer store."""

from __future__ import annotations

import csv
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ShapeError
from engine.figures import png_title
from engine.pipelines.probes import cca, samediff
from engine.pipelines.probes.config import ProbesConfig, ProbesError
from engine.pipelines.probes.run import CCA_COLUMNS, LID_COLUMNS, SAMEDIFF_COLUMNS
from engine.pipelines.stages import lid
from engine.runtime.options import ConfigError, configure
from engine.stores.layers import LayerStore
from engine.stores.utterances import UtteranceRow
from kernels.cca import pwcca, reference_pwcca
from kernels.dtw import reference_dtw_distance
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "store_writer", REPO / "tests" / "engine" / "scripts" / "store_writer.py"
)
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)


def blobs(n=150, d=24, classes=4, seed=0, signal=1.0):
    """Features with a class signal, uneven scales and offsets (standardisation matters), labels, ids."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)) + signal * 2.0 * np.eye(classes, d)[y]
    x = (x * rng.uniform(0.3, 4.0, d) + rng.normal(0, 3, d)).astype(np.float32)
    return x, y.astype(np.int32), [f"s{i // 3}" for i in range(n)]


@pytest.mark.parametrize("l2", [1e-3, 1e-2, 1e-1, 1.0])
def test_logistic_regression_equals_sklearn(l2):
    """The same penalised problem (C = 1 / (l2 * n_train)) on the same standardised features. Tolerance 2e-3 on
    every probability: both stop at a gradient tolerance, ours in float32 (|grad| < 1e-5), and with weak
    regularisation the optimum is flat (measured: 5e-4 at l2 = 1e-3, 1e-5 at 0.1); predictions must agree."""
    from sklearn.linear_model import LogisticRegression

    x, y, _ = blobs()
    train = np.ones(len(y), np.float32)
    train[:30] = 0
    logp, iterations = lid.fit_predict(x, y, train, np.float32(l2), classes=4)
    keep = train > 0
    xs = (x - x[keep].mean(0)) / x[keep].std(0)
    ref = LogisticRegression(C=1.0 / (l2 * keep.sum()), tol=1e-10, max_iter=10_000).fit(xs[keep], y[keep])
    expected = ref.predict_proba(xs)
    assert int(iterations) < lid.MAX_ITER
    np.testing.assert_allclose(np.exp(np.asarray(logp)), expected, atol=2e-3)
    np.testing.assert_array_equal(np.asarray(logp).argmax(1), expected.argmax(1))


def test_lid_transfer_equals_sklearn_per_fold():
    """``lid_transfer``: each outer fold's probe, fitted on the unchanged features only (standardised by that training
    set), predicts its test fold in the unchanged and in the changed features; scikit-learn's ``LogisticRegression``
    fitted the same way predicts the same labels. One l2 in the grid, so the choice is fixed."""
    from sklearn.linear_model import LogisticRegression

    x, y, groups = blobs()
    rng = np.random.default_rng(4)
    changed = (x + rng.normal(0, 2.0, x.shape) * (y[:, None] == 1)).astype(np.float32)  # class 1 blurred
    l2 = 1e-2
    before, (after,) = lid.lid_transfer(x, y, groups, [changed], l2_grid=(l2,), seed=3)
    fold = lid.group_folds(groups, 5, 3)
    want_before, want_after = np.empty_like(y), np.empty_like(y)
    for k in range(5):
        keep = fold != k
        mean, std = x[keep].mean(0), x[keep].std(0)
        ref = LogisticRegression(C=1.0 / (l2 * keep.sum()), tol=1e-10, max_iter=10_000)
        ref.fit((x[keep] - mean) / std, y[keep])
        want_before[~keep] = ref.predict((x[~keep] - mean) / std)
        want_after[~keep] = ref.predict((changed[~keep] - mean) / std)
    assert np.mean(before == want_before) >= 0.99 and np.mean(after == want_after) >= 0.99
    assert np.mean(after[y == 1] == 1) < np.mean(before[y == 1] == 1)  # the blur is seen, in class 1
    same, (unchanged,) = lid.lid_transfer(x, y, groups, [x], l2_grid=(l2,), seed=3)
    np.testing.assert_array_equal(same, unchanged)
    with pytest.raises(ShapeError, match="changed array"):
        lid.lid_transfer(x, y, groups, [x[:-1]])


def test_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    y_pred[y_pred == 3] = 2  # a class never predicted
    assert lid.macro_f1(y_true, y_pred, 5) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=range(5), zero_division=0), abs=1e-12
    )


def test_folds_keep_ids_together_and_balance():
    groups = [f"s{i % 17}" for i in range(100)]
    fold = lid.group_folds(groups, 5, seed=3)
    for g in set(groups):
        assert len({int(f) for f, h in zip(fold, groups, strict=True) if h == g}) == 1
    per_fold = [len({g for f, g in zip(fold, groups, strict=True) if f == k}) for k in range(5)]
    assert max(per_fold) - min(per_fold) <= 1
    # two ids cannot be fixed by lowering --folds, whose least is 3 (a probe's series was told to)
    with pytest.raises(lid.LidError, match=r"2 distinct utterance ids cannot fill 3 folds: add utterances"):
        lid.group_folds(["a", "b"], 3)
    with pytest.raises(lid.LidError, match="cannot fill 5 folds: lower --folds or add data"):
        lid.group_folds(["a", "b", "c"], 5)


def test_lid_layer_finds_signal_and_not_noise():
    x, y, ids = blobs(n=120, signal=2.0)
    strong = lid.lid_layer(3, x, y, ids)
    assert strong.accuracy > 0.9 and strong.n == 120 and len(strong.l2) == lid.FOLDS
    assert strong.chance == pytest.approx(np.bincount(y).max() / len(y))
    noise = lid.lid_layer(0, blobs(n=120, signal=0.0, seed=2)[0], y, ids)
    assert noise.accuracy < 0.5  # chance is about 0.25


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_equals_sklearn(ties):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    same = rng.random(400) < 0.1
    scores = rng.standard_normal(400) + same
    if ties:
        scores = np.round(scores, 1)  # runs of equal scores: sklearn takes them as one threshold
    assert samediff.average_precision(scores, same) == pytest.approx(average_precision_score(same, scores), abs=1e-12)
    assert np.isnan(samediff.average_precision(scores, np.zeros(400, bool)))


def words_table(rows):
    cols = ("utterance", "id", "word", "start", "end")
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


def test_tokens_frames_filters_and_other_store():
    ids, lengths = ["a", "b", "c"], np.array([100, 40, -1])
    rows = [
        (0, "a", " The,", 0.10, 0.31),  # frames 5..15 (ceil(15.5) = 16)
        (0, "a", " a", 0.4, 0.6),  # short word
        (1, "b", " house", 0.70, 0.85),  # frames 35..42, cut at the utterance's 40 frames: 35..39
        (1, "b", " cat", 0.795, 0.80),  # one frame: short span
        (2, "c", " dog", 0.0, 0.5),  # utterance not encoded
        # the align job's float32 times: 1.06 s reads 52.99999 frames, frame 53 as interp places it (was 52)
        (0, "a", " float", float(np.float32(1.06)), float(np.float32(1.2))),
    ]
    tokens, dropped = samediff.select_tokens("en", words_table(rows), ids, lengths, [None] * 3, 50.0, min_frames=2)
    assert tokens.types == ("the", "float", "house")
    assert tokens.first.tolist() == [5, 53, 35] and tokens.length.tolist() == [11, 7, 5]
    assert dropped == {"short_word": 1, "short_span": 1, "not_encoded": 1}
    with pytest.raises(samediff.SameDiffError, match="another store"):
        samediff.select_tokens("en", words_table([(1, "zz", "the", 0.0, 0.1)]), ids, lengths, [None] * 3, 50.0)


def test_pairs_cross_speakers_when_known():
    def tokens(speakers):
        n = len(speakers)
        z = np.zeros(n, np.int32)
        return samediff.Tokens("en", z, z, z + 3, ("x",) * n, tuple(speakers))

    mask, speakers = samediff.pair_mask(tokens(["", "", ""]))
    assert speakers == 1 and mask.sum() == 3
    mask, speakers = samediff.pair_mask(tokens(["p", "q", "p", "q"]))
    assert speakers == 2 and mask.sum() == 4 and not mask[0, 2] and mask[0, 1]


def test_samediff_layer_equals_numpy_twins():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    types = ("alpha", "beta", "alpha", "gamma", "beta", "alpha", "delta")
    lengths = np.array([4, 6, 5, 3, 7, 6, 4], np.int32)
    protos = {t: rng.standard_normal((8, 16)) for t in set(types)}
    frames = np.full((len(types), 8, 16), np.nan, np.float32)  # poisoned padding
    for i, (t, n) in enumerate(zip(types, lengths, strict=True)):
        frames[i, :n] = protos[t][:n] + 0.8 * rng.standard_normal((n, 16))
    z = np.zeros(len(types), np.int32)
    tokens = samediff.Tokens("en", z, z, lengths, types, ("",) * len(types))
    scores = {s.measure: s for s in samediff.samediff_layer(2, tokens, frames, lengths)}
    i, j = np.triu_indices(len(types), 1)
    same = np.array(types)[i] == np.array(types)[j]
    pooled = np.array([frames[k, :n].mean(0) for k, n in enumerate(lengths)])
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = (unit @ unit.T)[i, j]
    dtw = np.array(
        [-reference_dtw_distance(frames[a, : lengths[a]], frames[b, : lengths[b]]) for a, b in zip(i, j, strict=True)]
    )
    # Scores from float32 kernels against float64 twins: an AP changes only if two pairs swap order; none are
    # within 1e-4 here, so the APs must agree to rounding.
    assert scores["cosine"].ap == pytest.approx(average_precision_score(same, cosine), abs=1e-9)
    assert scores["dtw"].ap == pytest.approx(average_precision_score(same, dtw), abs=1e-9)
    assert scores["dtw"].n_pairs == 21 and scores["dtw"].n_same == 4 and scores["dtw"].chance == pytest.approx(4 / 21)


def test_heldout_pwcca_on_its_own_data_is_pwcca():
    """Tested on the examples it was fitted on, without ridge, the held-out score is the kernel's PWCCA and its
    float64 NumPy twin's (tolerance 1e-4: float32 SVDs of well-conditioned 300 x 12 and 300 x 5 views)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 12))
    y = x[:, :5] @ rng.standard_normal((5, 5)) + rng.standard_normal((300, 5))
    score = cca.heldout_pwcca(x, y, x, y, epsilon=0.0)
    assert score == pytest.approx(float(pwcca(x.astype(np.float32), y.astype(np.float32))), abs=1e-4)
    assert score == pytest.approx(reference_pwcca(x, y), abs=1e-4)


def test_heldout_pwcca_generalises_signal_not_noise():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 20))
    y = x[:, :3] + 0.3 * rng.standard_normal((400, 3))
    groups = [f"s{i // 2}" for i in range(400)]
    score = cca.split_score(1, "t", x, y, groups)
    assert score.pwcca > 0.8 and abs(score.chance) < 0.25 and score.n_train + score.n_test == 400
    assert score.dims == 3


class FakeEncoder:
    def covers(self, lang):
        return lang != "xx"

    def encode(self, texts):
        return np.array([[len(t), 1.0] for t in texts], np.float32)


def test_targets_spread_phones_uniformly_and_count_words():
    def tokens(lang, types, lengths):
        n = len(types)
        return samediff.Tokens(lang, np.arange(n, dtype=np.int32), np.zeros(n, np.int32),
                               np.array(lengths, np.int32), tuple(types), ("",) * n)  # fmt: skip

    def phonemize(lang, words):
        if lang == "xx":
            raise cca.LanguageError("no voice")
        return [tuple(w) for w in words]  # one phone per letter

    listed = [tokens("en", ["abc", "abc", "de", "abc", "abc"], [6, 3, 5, 2, 4]), tokens("xx", ["abc"], [3])]
    ids = {"en": ["s0", "s1", "s2", "s3", "s4"], "xx": ["s0"]}
    targets = cca.build_targets(listed, ids, phonemize, FakeEncoder())
    assert targets.phones == ("a", "b", "c", "d", "e")
    labels = [targets.phones[i] for i in targets.phone_labels]
    # frame j of L gets phone floor(j P / L): abc over 6 frames aabbcc, over 3 abc, over 2 ab, over 4 aabc; de over
    # 5 frames dddee
    assert "".join(labels) == "aabbcc" + "abc" + "dddee" + "ab" + "aabc"
    assert targets.phone_groups[:6] == ("s0",) * 6 and targets.left_out["phone"] == {"xx": 1}
    assert targets.word_tokens.tolist() == [0, 1, 3, 4] and targets.left_out["word"] == {"en": 1, "xx": 1}
    assert targets.semantic_tokens.tolist() == [0, 1, 2, 3, 4] and targets.left_out["semantic"] == {"xx": 1}


def test_config_names_the_missing_words():
    with pytest.raises(ProbesError, match="--words"):
        configure(ProbesConfig, store="s", out="o", probes=("lid", "samediff"))
    with pytest.raises(ConfigError, match="probes: 'pitch' is not one of lid, samediff, cca"):
        configure(ProbesConfig, store="s", out="o", probes=("lid", "pitch"))
    assert configure(ProbesConfig, store="s", out="o").chosen == ("lid",)


LANGS = ("de", "en", "es")  # espeak-ng voices and USE languages: the cca targets exist
N_SENTENCES = 15
VOCAB = ("apple", "river", "stone", "cloud")


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """3 languages x 15 sentences; each language adds its own direction to every frame of layers 2 and 3 (none at 0);
    each sentence holds two words of VOCAB, each word type a fixed frame pattern, in layer 3 only."""
    root = tmp_path_factory.mktemp("probes")
    store = LayerStore.create_or_open(f"file://{root}/store", writer.INFO, creation={"dataset": "planted-words"})
    rng = np.random.default_rng(0)
    d, layers = writer.DIMS.n_audio_state, writer.INFO.layers
    lang_dir = {lang: rng.standard_normal(d) * 2 for lang in LANGS}
    word_pattern = {w: rng.standard_normal((10, d)) * 3 for w in VOCAB}
    words = {}
    for lang in LANGS:
        n = [40 + (5 * s) % 20 for s in range(N_SENTENCES)]
        rows = [UtteranceRow(id=f"s{s}", lang=lang, path=f"/{lang}/{s}.wav", duration_s=n[s] / 50, n_frames=n[s],
                             n_windows=1) for s in range(N_SENTENCES)]  # fmt: skip
        arrays = store.language(lang, rows)
        words[lang] = []
        for s in range(N_SENTENCES):
            x = rng.standard_normal((len(layers), n[s], d)).astype(np.float32)
            for k, layer in enumerate(layers):
                x[k] += lang_dir[lang] * (layer >= 2)
            for start, w in ((5, VOCAB[s % 4]), (25, VOCAB[(s * 3 + 1) % 4])):
                x[layers.index(3), start : start + 10] += word_pattern[w]
                words[lang].append((s, f"s{s}", f" {w.title()},", start / 50, (start + 10) / 50))
            arrays.write_utterance(s, x)
        arrays.flush()
        table = pa.table(
            {
                **{k: v for k, v in words_table(words[lang]).items()},
                "recording": [0] * len(words[lang]),
                "word_index": list(range(len(words[lang]))),
                "probability": [1.0] * len(words[lang]),
            }
        )
        (root / "words" / lang).mkdir(parents=True)
        pq.write_table(table, root / "words" / lang / "words.parquet")
    return root


def test_job_end_to_end(planted_store, tmp_path):
    out = tmp_path / "probes"
    argv = ["--store", str(planted_store / "store"), "--words", str(planted_store / "words"), "--out", str(out)]
    argv += ["--folds", "3"]  # with --words: every probe
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.probes", *argv], cwd=REPO, capture_output=True, text=True, timeout=patient(600)
    )
    assert proc.returncode == 0, proc.stderr
    with open(out / "lid.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LID_COLUMNS
    by_layer = {int(r["layer"]): r for r in rows}
    assert sorted(by_layer) == list(writer.INFO.layers)
    assert all(int(r["n"]) == 45 and float(r["chance"]) == pytest.approx(1 / 3) for r in rows)
    assert float(by_layer[0]["accuracy"]) < 0.7 and float(by_layer[3]["accuracy"]) > 0.95
    with open(out / "samediff.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SAMEDIFF_COLUMNS
    at = {(r["lang"], int(r["layer"]), r["measure"]): r for r in rows}
    assert len(at) == len(LANGS) * len(writer.INFO.layers) * 2
    for lang in LANGS:
        for measure in ("cosine", "dtw"):
            assert float(at[lang, 3, measure]["ap"]) > 0.95  # the planted word patterns
            assert float(at[lang, 0, measure]["ap"]) < 0.6
            assert int(at[lang, 3, measure]["n_tokens"]) == 30
    with open(out / "cca.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CCA_COLUMNS
    at = {(r["target"], int(r["layer"])): r for r in rows}
    assert sorted({t for t, _ in at}) == ["phone", "semantic", "word"]
    # word identity is planted in layer 3 only: 4 types x 3 languages, every token a target
    assert float(at["word", 3]["pwcca"]) > 0.5 > float(at["word", 0]["pwcca"])
    assert int(at["word", 3]["n_train"]) + int(at["word", 3]["n_test"]) == 90 and int(at["word", 3]["dims"]) == 12
    for name in ("lid_by_layer.png", "samediff_by_layer.png", "cca_by_layer.png"):
        title = png_title((out / "figures" / name).read_bytes())  # model, dataset, n: the store's, not its path
        assert f"{writer.INFO.model_name}; dataset planted-words; 3 languages" in title, (name, title)


def test_plan_reads_no_states_and_writes_nothing(planted_store, tmp_path):
    out = tmp_path / "planned"
    argv = ["--store", str(planted_store / "store"), "--words", str(planted_store / "words"), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.probes", *argv, "--plan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patient(600),
    )
    assert proc.returncode == 0, proc.stderr
    assert "plan: probes" in proc.stdout and "utterances: 45" in proc.stdout
    for stage in ("read states", "lid fits", "samediff dtw", "cca fits"):
        assert stage in proc.stdout
    assert "word tokens: 90" in proc.stdout
    assert not out.exists()


def test_a_rerun_holds_the_lease_and_the_settings_of_its_folder(planted_store, tmp_path, monkeypatch):
    """probes takes the writer lease and records its settings before any work, as the other jobs: a second run into
    the folder, a rerun with other settings (which left old CSVs beside new ones) and an output that cannot be
    written are refused before a probe is fitted."""
    from engine.pipelines.probes.run import run_probes
    from engine.runtime.lease import StoreBusyError, WriterLease
    from engine.stores.kv import StoreError, open_kvstore

    out = tmp_path / "probes"
    config = configure(ProbesConfig, store=str(planted_store / "store"), out=str(out), probes=("lid",), folds=3)
    run_probes(config)
    assert {p.name for p in out.iterdir()} >= {"lid.csv", "manifest.json"}

    def refused(*args, **kwargs):
        raise AssertionError("a probe was fitted before the run was refused")

    monkeypatch.setattr(lid, "lid_layer", refused)
    other = configure(ProbesConfig, store=str(planted_store / "store"), out=str(out), probes=("lid",), folds=4)
    with pytest.raises(ProbesError, match=r"other settings: folds: store has 3, this run 4"):
        run_probes(other)
    with WriterLease(open_kvstore(str(out))[1], str(out), "probes"):
        with pytest.raises(StoreBusyError, match="being written by another run: probes"):
            run_probes(config)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="writer lease"):
        run_probes(configure(ProbesConfig, store=str(planted_store / "store"), out=str(tmp_path / "file" / "p"),
                             probes=("lid",), folds=3))  # fmt: skip


def test_plan_counts_dtw_cells_at_each_languages_longest_word(planted_store, monkeypatch):
    """dtw_similarity_matrix pads every token of a language to its longest word, so the plan counts tokens^2 x
    longest^2 cells per language; from the mean length it undercounted the demo's DTW 5x (issue 50)."""
    from engine.pipelines.probes import plan

    def tokens(config, store, lang, ids, lengths):  # 3 tokens of 4, 4 and 12 frames (longest 12, mean 6.7)
        length = np.array([4, 4, 12], np.int32)
        zeros = np.zeros(3, np.int32)
        return samediff.Tokens(lang, zeros, zeros, length, ("a", "a", "b"), ("", "", "")), {}

    monkeypatch.setattr(plan, "word_tokens", tokens)
    config = configure(ProbesConfig, store=str(planted_store / "store"), out="o", words="w", probes=("samediff",))
    stage = {s.name: s for s in plan.plan_probes_run(config).stages}["samediff dtw"]
    d, layers = writer.DIMS.n_audio_state, len(writer.INFO.layers)
    assert stage.flops == 2.0 * d * len(LANGS) * 3**2 * 12**2 * layers


def test_cca_targets_left_out_are_said():
    """The word target vanished from cca.csv without a row or a word where too few word types had tokens enough."""
    empty = np.zeros(0, np.int64)
    targets = cca.Targets(empty, empty.astype(np.int32), ("a", "b"), (), empty, empty.astype(np.int32),
                          np.arange(4), np.zeros((4, 3), np.float32), (), {})  # fmt: skip
    assert cca.unmeasured(targets) == ["word (fewer than 2 word types with enough tokens to hold some out)"]
