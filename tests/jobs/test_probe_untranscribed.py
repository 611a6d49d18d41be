"""The word probe on word lists recorded per concept without transcriptions (issue 62 item 8): the same planted
states with and without transcriptions give the same concept retrieval and synonym similarity by layer; the parts
that need the words (near-homophones, unrelated pairs, the AUC) are NA and named; mixed stores run them where words
exist. No model: planted states, as in tests/jobs/test_probe.py."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from engine.figures import png_title
from engine.pipelines.probe import run as probe
from engine.pipelines.probe.config import ProbeConfig
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.utterances import UtteranceRow
from tests.engine.scripts import store_writer as writer

CONCEPTS = ["dog", "gift", "kind", "rat", "cat"]
WORDS = {
    "de": ["Hund", "Geschenk", "freundlich", "Ratte", "Katze"],
    "en": ["dog", "gift", "kind", "rat", "cat"],
    "es": ["perro", "regalo", "amable", "rata", "gato"],
}
FRAMES = {"de": [4, 2, 5, 3, 6], "en": [3, 5, 4, 6, 2], "es": [5, 3, 2, 4, 3]}
WORD_METRICS = ("mean_sim_near_homophone", "mean_sim_unrelated", "auc")  # need the words: NA without them
ID_METRICS = ("r@1", "mrr", "mean_sim_synonym")  # need only the ids


def write_words(url: str, transcribed: set[str]) -> None:
    """A planted word store (concept signal growing with depth), the same states whatever ``transcribed`` names: the
    languages whose clips carry their word; the others have none (None in one, "" in the rest)."""
    store = LayerStore.create_or_open(url, writer.INFO, creation={"dataset": "planted-words"})
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((len(CONCEPTS), writer.DIMS.n_audio_state))
    for lang in WORDS:
        blank = None if lang == "de" else ""
        rows = [UtteranceRow(id=c, lang=lang, path=f"/{lang}/{c}.wav", transcription=w if lang in transcribed else
                             blank, duration_s=0.1, n_frames=n, n_windows=1)
                for c, w, n in zip(CONCEPTS, WORDS[lang], FRAMES[lang], strict=True)]  # fmt: skip
        arrays = store.language(lang, rows)
        for u, n in enumerate(FRAMES[lang]):
            x = rng.standard_normal((len(writer.INFO.layers), n, writer.DIMS.n_audio_state)).astype(np.float32)
            arrays.write_utterance(u, x + (np.arange(len(writer.INFO.layers))[:, None, None] * shared[u]))
        arrays.flush()


def run(tmp_path, name: str, transcribed: set[str], relations=None) -> tuple[probe.ProbeSummary, dict, list]:
    """The probe on a fresh store: (summary, probe.csv rows keyed by their first six columns, relations.csv rows)."""
    store, out = tmp_path / f"{name}-store", tmp_path / name
    write_words(f"file://{store}", transcribed)
    config = configure(ProbeConfig, store=str(store), out=str(out), progress=False, seeds=2, relations=relations)
    summary = probe.run_probe(config)
    with open(out / probe.PROBE_CSV, newline="") as f:
        rows = {tuple(r[c] for c in probe.PROBE_COLUMNS[:6]): r for r in csv.DictReader(f)}
    with open(out / probe.RELATIONS_CSV, newline="") as f:
        used = list(csv.DictReader(f))
    return summary, rows, used


def same(a: dict, b: dict, columns=("value", "low", "high")) -> bool:
    """Two probe.csv rows agree: ``columns`` to 1e-6 (or both NA), the same n. A relation's bootstrap percentiles
    draw from one stream with the other relations of its pair, so a synonym mean's are compared by value alone."""
    close = all(a[c] == b[c] == "NA" or abs(float(a[c]) - float(b[c])) <= 1e-6 for c in columns)
    return close and a["n"] == b["n"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full"), "full", set(WORDS))


def test_without_transcriptions_concepts_are_retrieved_by_id(full, tmp_path, caplog):
    _, want, _ = full
    with caplog.at_level(logging.INFO, logger=probe.__name__):
        summary, got, used = run(tmp_path, "bare", set())
    named = "no transcriptions in ['de', 'en', 'es']: left out, in the 3 language pairs with one, near-homophones"
    assert summary.report().count(named) == 1, summary.report()
    assert "unrelated pairs" in summary.left_out and "the AUC" in summary.left_out
    assert sum(named in r.getMessage() for r in caplog.records) == 1
    pairs = [("de", "en"), ("de", "es"), ("en", "es")]
    directed = pairs + [(b, a) for a, b in pairs]
    for layer in map(str, writer.INFO.layers):
        for measure, pooling in probe.MEASURES:
            for a, b in directed:  # concept retrieval both ways: the rows with transcriptions, to 1e-6
                for metric in ("r@1", "mrr"):
                    key = (a, b, layer, measure, pooling, metric)
                    assert key in got and same(got[key], want[key]), (key, got.get(key), want[key])
            for a, b in pairs:
                key = (a, b, layer, measure, pooling)
                assert same(got[(*key, "mean_sim_synonym")], want[(*key, "mean_sim_synonym")], ("value",))
                for metric in WORD_METRICS:  # not measured: NA, n 0, where the words give numbers
                    row = got[(*key, metric)]
                    assert (row["value"], row["low"], row["high"], row["n"]) == ("NA", "NA", "NA", "0"), row
                    assert want[(*key, metric)]["value"] != "NA"
    assert len(got) == len(want)
    # relations.csv: the synonyms, named by their ids (the concepts), no other relation
    assert {r["relation"] for r in used} == {"synonym"} and len(used) == len(pairs) * len(CONCEPTS)
    assert all(r["word_a"] == r["word_b"] in CONCEPTS for r in used)
    title = png_title((tmp_path / "bare" / probe.PROBE_FIGURE).read_bytes())  # drawn for the synonyms measured
    assert title.endswith("; not measured: near-homophone, unrelated"), title


def test_mixed_store_runs_the_word_parts_where_words_exist(full, tmp_path):
    _, want, _ = full
    summary, got, used = run(tmp_path, "mixed", {"de", "en"})
    assert summary.left_out.startswith("no transcriptions in ['es']: left out, in the 2 language pairs with one")
    assert len(got) == len(want)
    for key, row in want.items():
        if "es" not in key[:2] or key[5] in ("r@1", "mrr"):
            assert same(got[key], row), (key, got[key], row)  # words where they exist; retrieval everywhere
        elif key[5] == "mean_sim_synonym":
            assert same(got[key], row, ("value",)), (key, got[key], row)
        else:
            assert got[key]["value"] == "NA" and got[key]["n"] == "0", (key, got[key])
    assert {r["relation"] for r in used if "es" not in (r["lang_a"], r["lang_b"])} == set(probe.RELATIONS)
    # a synonym with es names the es clip by its id, the other side by its word
    assert {"lang_a": "de", "word_a": "Hund", "lang_b": "es", "word_b": "dog", "relation": "synonym"} in used


def test_a_relations_file_names_concepts_where_there_is_no_transcription(tmp_path):
    relations = tmp_path / "relations.csv"
    hund = ("en", "Hund", "de", "Hund", "synonym")  # words, not ids: skipped, by their reason
    rows = [("en", "dog", "de", "dog", "synonym"), ("en", "gift", "de", "kind", "near_homophone"), hund]
    relations.write_bytes(probe.relations_csv_bytes(rows))
    summary, got, used = run(tmp_path, "given", set(), relations=str(relations))
    assert "no transcriptions in ['de', 'en', 'es']: a relation's word there is read as the clip id" in summary.report()
    assert "skipped 2 (not_a_clip_id): de/Hund, en/Hund" in summary.report()
    assert len(used) == 2
    row = got["de", "en", "0", "cosine", "mean", "mean_sim_near_homophone"]
    assert row["n"] == "1" and row["value"] != "NA"
    assert got["de", "en", "0", "cosine", "mean", "auc"]["value"] != "NA"
