"""The word probe on a tiny layer store with planted states (no model), checked against NumPy and scikit-learn;
near-homophone generation on the bundled false friends (espeak-ng)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from engine.figures import png_title
from engine.pipelines.probe import run as probe
from engine.pipelines.probe.config import ProbeConfig
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from engine.stores.utterances import UtteranceRow
from engine.text.phones import PhonesError
from tests.engine.scripts import store_writer as writer

WORDS = {"en": ["dog", "gift", "kind", "rat", "cat"], "de": ["Hund", "Geschenk", "freundlich", "Ratte", "Katze"]}
CONCEPTS = ["dog", "gift", "kind", "rat", "cat"]
FRAMES = {"en": [3, 5, 4, 6, 2], "de": [4, 2, 5, 3, 6]}
RELATIONS = [
    ("en", "dog", "de", "Hund", "synonym"),
    ("en", "gift", "de", "Geschenk", "synonym"),
    ("de", "Katze", "en", "cat", "synonym"),  # reversed order: read as en cat / de Katze
    ("en", "kind", "de", "Katze", "near_homophone"),
    ("en", "rat", "de", "Hund", "near_homophone"),
    ("en", "cat", "de", "freundlich", "unrelated"),
    ("en", "unicorn", "de", "Einhorn", "synonym"),  # absent from the store: two counted skips
    ("en", "dog", "fr", "chien", "synonym"),  # a language the store lacks: one counted skip
]
USED = RELATIONS[:-2]


@pytest.fixture(scope="module")
def word_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    store = LayerStore.create_or_open(f"file://{root}/store", writer.INFO, creation={"dataset": "planted-words"})
    rng = np.random.default_rng(0)
    states = {}
    shared = rng.standard_normal((len(CONCEPTS), writer.DIMS.n_audio_state))  # concept signal: retrieval works
    for lang in WORDS:
        listed = zip(CONCEPTS, WORDS[lang], FRAMES[lang], strict=True)
        rows = [UtteranceRow(id=c, lang=lang, path=f"/{lang}/{c}.wav", transcription=w, duration_s=0.1,
                             n_frames=n, n_windows=1) for c, w, n in listed]  # fmt: skip
        arrays = store.language(lang, rows)
        states[lang] = []
        for u, n in enumerate(FRAMES[lang]):
            x = rng.standard_normal((len(writer.INFO.layers), n, writer.DIMS.n_audio_state)).astype(np.float32)
            x += (np.arange(len(writer.INFO.layers))[:, None, None] * shared[u]).astype(np.float32)
            arrays.write_utterance(u, x)
            states[lang].append(x)
        arrays.flush()
    relations = root / "relations.csv"
    relations.write_bytes(probe.relations_csv_bytes(RELATIONS))
    return root, states, relations


def write_store(url, texts: dict[str, list[str]], created: dict, ids: str = "s{i}") -> None:
    """A planted store: ``texts[lang]`` as the transcriptions of its clips, ids ``ids.format(lang=lang, i=i)`` (s0,
    s1, ... in every language)."""
    store = LayerStore.create_or_open(url, writer.INFO, creation=created)
    rng = np.random.default_rng(1)
    for lang, lines in texts.items():
        rows = [UtteranceRow(id=ids.format(lang=lang, i=i), lang=lang, path=f"/{lang}/s{i}.wav", transcription=t,
                             duration_s=0.1, n_frames=3, n_windows=1) for i, t in enumerate(lines)]  # fmt: skip
        arrays = store.language(lang, rows)
        for u in range(len(rows)):
            arrays.write_utterance(u, rng.standard_normal((len(writer.INFO.layers), 3, writer.DIMS.n_audio_state)))
        arrays.flush()


SENTENCES = {
    "en": ["The train to Berlin leaves at seven.", "I would like a cup of tea, please.", "dog"],
    "de": ["Der Zug nach Berlin fährt um sieben.", "Ich hätte gern eine Tasse Tee.", "Hund"],
}


def test_a_sentence_store_is_refused_before_any_work(run_job, tmp_path):
    """A FLEURS-like store of sentences: one line naming what the probe needs and what the store is, nothing
    written (it once ran 10 min 51 s on such a store and wrote nothing)."""
    store, out = tmp_path / "sentences", tmp_path / "probe"
    write_store(f"file://{store}", SENTENCES, {"dataset": "fleurs", "split": "test"})
    with pytest.raises(probe.ProbeError) as refused:
        probe.run_probe(configure(ProbeConfig, store=str(store), out=str(out), progress=False))
    message = str(refused.value)
    assert "\n" not in message
    assert "probe needs a store of single-word clips (id = concept, transcription = the word" in message
    assert f"store {str(store)!r} (dataset fleurs (test)) holds sentences: 2 of 3 de transcriptions" in message
    assert not out.exists()
    proc = run_job("probe", "--store", str(store), "--out", str(out), expect=None)
    assert proc.returncode != 0 and "holds sentences" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_a_store_without_transcriptions_or_shared_ids_is_refused(tmp_path):
    """Clips named by file (no id shared across languages) and not transcribed: no word to find, no concept to pair
    (a word list recorded per concept, ids shared, runs: tests/jobs/test_probe_untranscribed.py)."""
    store = tmp_path / "bare"
    write_store(f"file://{store}", {"en": [None, None], "de": [None, ""]}, {"dataset": "folder:/x/clips"}, "{lang}-{i}")
    refused = r"\(dataset folder clips\) has no transcription in \['de', 'en'\] and no clip id shared by two of them"
    with pytest.raises(probe.ProbeError, match=refused):
        probe.run_probe(configure(ProbeConfig, store=str(store), out=str(tmp_path / "o"), progress=False))
    assert not (tmp_path / "o").exists()


def test_a_word_store_with_a_few_phrases_passes_the_check(tmp_path):
    store = tmp_path / "words"
    write_store(f"file://{store}", {"en": ["dog", "ice cream", "a cup of tea"]}, {"dataset": "words-demo"})
    probe.check_word_store(open_store(str(store)), ["en"], str(store))


def cos(u, v):
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_job_values_equal_numpy_and_sklearn(run_job, word_store, tmp_path):
    from sklearn.metrics import roc_auc_score

    root, states, relations = word_store
    out = tmp_path / "probe"
    argv = ["--store", str(root / "store"), "--out", str(out), "--relations", str(relations), "--seeds", "3"]
    proc = run_job("probe", *argv)
    assert "skipped 2 (word_not_in_store): de/Einhorn, en/unicorn" in proc.stdout  # in the store's pair order
    assert "skipped 1 (language_not_in_store): fr/dog/chien" in proc.stdout
    with open(out / probe.RELATIONS_CSV, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(USED)  # the relations used: the skipped rows are not
    with open(out / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == probe.PROBE_COLUMNS
    got = {(r["lang_a"], r["lang_b"], int(r["layer"]), r["measure"], r["pooling"], r["metric"]): r for r in rows}
    # the store's languages are sorted, so the pair is (de, en): de words are rows
    de, en = ({w: i for i, w in enumerate(WORDS[lang])} for lang in ("de", "en"))
    pairs = {rel: [(de[d], en[e]) for e, d in ((r[1], r[3]) if r[0] == "en" else (r[3], r[1]) for r in USED
                                               if r[4] == rel)] for rel in probe.RELATIONS}  # fmt: skip
    for position, layer in enumerate(writer.INFO.layers):
        mean = {lang: [x[position].mean(axis=0) for x in states[lang]] for lang in states}
        sims = np.array([[cos(a, b) for b in mean["en"]] for a in mean["de"]])
        for rel, idx in pairs.items():
            expect = np.mean([sims[i, j] for i, j in idx])
            row = got["de", "en", layer, "cosine", "mean", f"mean_sim_{rel}"]
            assert float(row["value"]) == pytest.approx(expect, abs=1e-5) and int(row["n"]) == len(idx)
        scores = [sims[i, j] for i, j in pairs["synonym"] + pairs["near_homophone"]]
        labels = [1] * len(pairs["synonym"]) + [0] * len(pairs["near_homophone"])
        assert float(got["de", "en", layer, "cosine", "mean", "auc"]["value"]) == pytest.approx(
            roc_auc_score(labels, scores)
        )
        # r@1 both ways: the same concept id is the only correct column (one word per concept here)
        for q, s, matrix in (("de", "en", sims), ("en", "de", sims.T)):
            r1 = np.mean(np.argmax(matrix, axis=1) == np.arange(len(CONCEPTS)))
            assert float(got[q, s, layer, "cosine", "mean", "r@1"]["value"]) == pytest.approx(r1)
        centre = {lang: [x[position][len(x[position]) // 2] for x in states[lang]] for lang in states}
        expect = np.mean([cos(centre["de"][i], centre["en"][j]) for i, j in pairs["synonym"]])
        value = float(got["de", "en", layer, "cosine", "centre", "mean_sim_synonym"]["value"])
        assert value == pytest.approx(expect, abs=1e-5)
    assert {r["measure"] for r in rows} == {"cosine", "seqsim"}
    assert all(float(r["low"]) <= float(r["high"]) for r in rows if r["low"] != "NA")
    title = png_title((out / probe.PROBE_FIGURE).read_bytes())  # model, dataset, n: the store's, not its path
    assert f"{writer.INFO.model_name}; dataset planted-words; " in title and " word pairs per relation" in title, title


def test_auc_equals_sklearn_on_ties():
    from sklearn.metrics import roc_auc_score

    pos, neg = np.array([0.5, 0.7, 0.7, 0.2]), np.array([0.7, 0.1, 0.5])
    assert probe.auc(pos, neg) == pytest.approx(roc_auc_score([1] * 4 + [0] * 3, np.r_[pos, neg]))


def test_generated_near_homophones_find_the_false_friends():
    words = {"en": [("gift", "gift"), ("kind", "kind"), ("dog", "dog")],
             "de": [("poison", "Gift"), ("child", "Kind"), ("dog", "Hund")]}  # fmt: skip
    rows = probe.generate_relations(words, [("en", "de")])
    near = {(r[1], r[3]) for r in rows if r[4] == "near_homophone"}
    assert {("gift", "Gift"), ("kind", "Kind")} <= near
    assert {(r[1], r[3]) for r in rows if r[4] == "synonym"} == {("dog", "Hund")}
    assert all(r[4] != "unrelated" or (r[1], r[3]) not in near for r in rows)
    with pytest.raises(PhonesError, match="espeak-ng has"):
        probe.generate_relations({"en": words["en"], "xx": words["de"]}, [("en", "xx")])
