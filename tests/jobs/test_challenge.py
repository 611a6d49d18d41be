"""jobs.challenge on a tiny layer store (utterance tables only: the filter reads texts, never states), and
retrieval restricted to a challenge set checked against a direct computation on the restricted matrices."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys

import numpy as np
import pytest

from engine.pipelines.challenge import rules
from engine.pipelines.challenge import run as challenge
from engine.pipelines.challenge.config import parse_threshold
from engine.pipelines.challenge.plan import plan_challenge_run
from engine.pipelines.retrieval import subset as subset_lib
from engine.pipelines.retrieval.config import RetrievalConfig, RetrievalError
from engine.pipelines.retrieval.run import run_retrieval
from engine.runtime.options import configure
from engine.stores import challenge as files
from engine.stores.layers import LayerStore
from engine.stores.similarity import SimilarityStore, done_marker, new_manifest
from engine.stores.utterances import UtteranceRow
from engine.text import soundalike
from engine.text.phones import PhonesError
from kernels.metrics import reference_retrieval_metrics, retrieval_metrics
from tests.engine.scripts import store_writer as writer
from tests.jobs.conftest import seal

TEXTS = {  # id -> (en, de); s0 shares a name, s1 a number, s2 a cognate, s3 and s4 nothing
    "s0": ("We flew to Paris.", "Wir flogen nach Paris."),
    "s1": ("It opened in 2019.", "Es öffnete 2019."),
    "s2": ("Where is my telephone?", "Wo ist mein Telefon?"),
    "s3": ("The dog barks.", "Der Hund bellt."),
    "s4": ("I see a cow.", "Ich sehe eine Kuh."),
}


def rows(lang: str, column: int, texts: dict = TEXTS) -> list[UtteranceRow]:
    return [
        UtteranceRow(
            id=uid,
            lang=lang,
            path=f"/{lang}/{uid}.wav",
            transcription=t[column].lower(),
            duration_s=1.0,
            n_frames=5,
            n_windows=1,
            raw_transcription=t[column],
        )  # fmt: skip
        for uid, t in texts.items()
    ]


def read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_job_flags_names_numbers_and_cognates_and_keeps_the_rest(run_job, tmp_path):
    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    store.language("en", rows("en", 0))
    store.language("de", rows("de", 1))
    store.language("xx", rows("xx", 1))  # a language espeak-ng has no voice for
    out = tmp_path / "challenge"
    # The library's fixed threshold (the job's default is calibrated per pair: the next test).
    argv = ["--store", str(tmp_path / "store"), "--out", str(out), "--phone_threshold", "0.16", "--pairs", "en:de"]
    run_job("challenge", *argv)
    table = {r["id"]: r for r in read(out / "en__de.csv")}
    assert list(table["s0"]) == list(files.PAIR_COLUMNS)
    assert {uid for uid, r in table.items() if r["kept"] == "1"} == {"s3", "s4"}
    assert "Paris" in table["s0"]["evidence"] and "2019" in table["s1"]["evidence"]
    assert table["s2"]["reason"] == "sound_alike" and "telephone~telefon" in table["s2"]["evidence"]
    summary = read(out / "summary.csv")
    (chosen,) = [r for r in summary if r["chosen"] == "1"]
    assert (
        float(chosen["phone_threshold"]) == soundalike.DEFAULT_PHONE_THRESHOLD and chosen["threshold_rule"] == "fixed"
    )
    assert (chosen["pairs"], chosen["kept"], chosen["names_numbers"], chosen["mismatched_pairs"]) == (
        "5",
        "2",
        "2",
        "20",
    )
    assert files.read_kept(str(out), "de", "en") == {"s3", "s4"}  # either file order
    settings = json.loads((out / files.SETTINGS_JSON).read_text())
    assert (settings["phone_threshold"], settings["min_phones"], settings["ner"]) == (0.16, 4, False)
    assert settings["thresholds"]["en__de"]["threshold_rule"] == "fixed"
    assert settings["store"]["path"] == f"{tmp_path}/store/"

    bad = run_job("challenge", *argv[:-1], "en:fr", expect=None)
    assert bad.returncode != 0 and "'fr'" in bad.stderr
    # A language in the store without an espeak-ng voice: refused, naming the languages espeak-ng has.
    with pytest.raises(PhonesError, match=r"no voice for \['xx'\].*espeak-ng has.*\bde\b.*\ben\b"):
        challenge.run_challenge(
            configure(challenge.ChallengeConfig, store=str(tmp_path / "store"), out=str(tmp_path / "x"), pairs="en:xx")
        )


def test_plan_counts_the_sentence_and_word_pairs_and_writes_nothing(tmp_path):
    """--plan on en:de of TEXTS: the 20 mismatched sentence pairs drawn (all of them: fewer than --chance_pairs) and
    the 5 shared ids, each comparing every distinct word of one side with every one of the other; each stage timed,
    a total, and no output folder."""
    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    store.language("en", rows("en", 0))
    store.language("de", rows("de", 1))
    out = tmp_path / "never"
    plan = plan_challenge_run(configure(challenge.ChallengeConfig, store=str(tmp_path / "store"), out=str(out),
                                        pairs="en:de"))  # fmt: skip
    text = plan.render()
    assert not out.exists()
    assert [s.name for s in plan.stages] == ["phonemes (espeak-ng)", "sound rule"], text
    assert all(s.seconds_here > 0 for s in plan.stages), text
    assert re.search(r"\n  total +\S+ [KMGT]? .* \d+(\.\d+)? (ms|s|min|h)\n", text), text
    letters = {lang: [set(re.findall(r"[^\W\d_]+", t[i].lower())) for t in TEXTS.values()] for i, lang in
               enumerate(("en", "de"))}  # fmt: skip
    n = len(TEXTS)
    word_pairs = sum(len(letters["en"][i]) * len(letters["de"][j]) for i in range(n) for j in range(n))
    assert "sentence pairs: 25: 5 shared ids judged, 20 mismatched drawn" in text, text
    assert f"word pairs: at most {word_pairs:,} phone distances" in text, text


def allowed_threshold(distances, rate, cap):
    """Brute force: the largest t <= cap at which at most ``rate`` of the pairs are flagged (distance < t)."""
    finite = [d for d in distances if not np.isnan(d)]
    return max(t for t in [*finite, cap] if t <= cap and np.mean([d < t for d in distances]) <= rate)


MORE = {  # id -> (en, de): five more sentence pairs, some with cognates (garden / Garten, guitar / Gitarre)
    "m0": ("The doctor reads a book.", "Die Ärztin liest ein Buch."),
    "m1": ("My brother drinks water.", "Mein Bruder trinkt Wasser."),
    "m2": ("Our garden is green.", "Unser Garten ist grün."),
    "m3": ("The winter was cold.", "Der Winter war kalt."),
    "m4": ("She plays the guitar.", "Sie spielt Gitarre."),
}


def test_a_store_without_transcriptions_or_pairs_is_refused(tmp_path):
    """A probe's store of untranscribed clips "kept 0/0" of each pair, exit 0; an empty store wrote an empty summary."""
    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    store.language("en", rows("en", 0))
    store.language("de", [dataclasses.replace(r, transcription=None, raw_transcription=None) for r in rows("de", 1)])
    config = configure(challenge.ChallengeConfig, store=str(tmp_path / "store"), out=str(tmp_path / "out"))
    with pytest.raises(challenge.ChallengeError, match=r"no transcription of \['de'\]: challenge sets are filtered"):
        challenge.run_challenge(config)
    LayerStore.create_or_open(f"file://{tmp_path}/empty", writer.INFO)
    with pytest.raises(challenge.ChallengeError, match=r"no language pair to filter: the store has \[\]"):
        challenge.run_challenge(dataclasses.replace(config, store=str(tmp_path / "empty")))
    assert not (tmp_path / "out").exists()


def test_auto_calibrates_each_pair_on_mismatched_pairs(run_job, tmp_path):
    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    texts = {**TEXTS, **MORE}
    for lang, column in (("en", 0), ("de", 1)):
        store.language(lang, rows(lang, column, texts))
    out = tmp_path / "auto"
    argv = ["--store", str(tmp_path / "store"), "--out", str(out), "--pairs", "en:de", "--chance_flag_rate", "0.1"]
    proc = run_job("challenge", *argv)

    # The reference: every mismatched pair (10 x 10 ids less the 10 translations: under --chance_pairs 200, so all)
    # judged one by one by the library filter, and the largest threshold flagging at most 10% of them.
    book = soundalike.PhoneBook()
    loose = rules.FilterConfig(phone_threshold=1.0)
    distances = [rules.flag_pair("en", texts[i][0], "de", texts[j][1], loose, book).min_distance
                 for i in texts for j in texts if i != j]  # fmt: skip
    want = allowed_threshold(distances, 0.1, soundalike.DEFAULT_PHONE_THRESHOLD)
    (chosen,) = [r for r in read(out / "summary.csv") if r["chosen"] == "1"]
    assert float(chosen["phone_threshold"]) == want and chosen["mismatched_pairs"] == "90"
    assert chosen["threshold_rule"] == ("chance" if want < soundalike.DEFAULT_PHONE_THRESHOLD else "cap")
    assert float(chosen["mismatched_flagged"]) == np.mean([d < want for d in distances]) <= 0.1
    recorded = json.loads((out / files.SETTINGS_JSON).read_text())
    assert recorded["phone_threshold"] == "auto" and recorded["chance_flag_rate"] == 0.1
    assert recorded["thresholds"]["en__de"]["phone_threshold"] == want
    # The verdicts follow the pair's threshold: kept = no shared name or number and nothing closer than it.
    at_want = rules.FilterConfig(phone_threshold=want)
    kept = {uid for uid, (en, de) in texts.items() if rules.flag_pair("en", en, "de", de, at_want, book).kept}
    assert files.read_kept(str(out), "en", "de") == kept
    assert f"phone_threshold {want:.4g}: " in proc.stdout and "of 90 mismatched pairs flagged" in proc.stdout

    # Fewer mismatched pairs than the calibration needs: the cap, and the summary says so.
    few = challenge.run_challenge(configure(challenge.ChallengeConfig, store=str(tmp_path / "store"),
                                            out=str(tmp_path / "few"), pairs="en:de", chance_pairs=10))  # fmt: skip
    assert (few.thresholds["en", "de"].threshold, few.thresholds["en", "de"].rule) == (0.16, "cap_too_few_mismatched")
    (chosen,) = [r for r in read(tmp_path / "few" / "summary.csv") if r["chosen"] == "1"]
    assert (chosen["threshold_rule"], chosen["mismatched_pairs"]) == ("cap_too_few_mismatched", "10")
    assert "too few mismatched pairs" in few.report()
    with pytest.raises(files.ChallengeError, match="--phone_threshold must be 'auto' or a number"):
        parse_threshold("high")
    with pytest.raises(files.ChallengeError, match="chance_flag_rate must be in"):
        configure(challenge.ChallengeConfig, store="s", out="o", chance_flag_rate=2.0)


def test_a_rerun_with_other_settings_is_refused_and_the_folder_keeps_its_own(run_job, tmp_path, monkeypatch):
    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    for lang, column in (("en", 0), ("de", 1), ("es", 1)):
        store.language(lang, rows(lang, column))
    out = tmp_path / "challenge"
    config = configure(challenge.ChallengeConfig, store=str(tmp_path / "store"), out=str(out), pairs="en:de")
    challenge.run_challenge(config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    argv = ["--store", f"file://{tmp_path}/store/", "--out", str(out), "--pairs", "en:de", "--phone_threshold", "0.1",
            "--min_phones", "3", "--chance_seed", "1", "--chance_flag_rate", "0.1"]  # fmt: skip
    proc = run_job("challenge", *argv, expect=None)
    assert proc.returncode != 0
    assert (
        "phone_threshold: folder has 'auto', this run 0.1" in proc.stderr and "min_phones: folder has 4" in proc.stderr
    )
    assert "chance_seed: folder has 0, this run 1" in proc.stderr and "chance_flag_rate: folder has 0.05" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before any write
    with pytest.raises(files.ChallengeError, match=r"store.path: folder has .*/store/', this run .*/other/'"):
        challenge.run_challenge(dataclasses.replace(config, store=str(tmp_path / "other")))

    # The same settings (the store spelled another way) may add a pair: its rows join summary.csv.
    challenge.run_challenge(dataclasses.replace(config, store=f"file://{tmp_path}/store", pairs="en:es"))
    assert {(r["lang_a"], r["lang_b"]) for r in read(out / "summary.csv")} == {("en", "de"), ("en", "es")}
    assert set(json.loads((out / files.SETTINGS_JSON).read_text())["thresholds"]) == {"en__de", "en__es"}
    assert (out / "en__de.csv").read_bytes() == before["en__de.csv"]

    # CSVs without the settings file (an older run): their settings are unknown, so they are refused too.
    (out / files.SETTINGS_JSON).unlink()
    with pytest.raises(files.ChallengeError, match=r"holds \['en__de.csv', 'en__es.csv', 'summary.csv'\] but no"):
        challenge.run_challenge(config)

    # --ner without spaCy: refused before anything is written, never a silent fall-back to the heuristic.
    monkeypatch.setitem(sys.modules, "spacy", None)
    rules.spacy_pipeline.cache_clear()
    with pytest.raises(files.ChallengeError, match="needs spaCy, which is not installed"):
        challenge.run_challenge(
            dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(tmp_path / "ner")), ner=True)
        )
    assert not list((tmp_path / "ner").glob("*"))


IDS = {"de": [f"s{i}" for i in range(12)] + ["s3"], "en": [f"s{i}" for i in range(12)] + ["xe"]}
KEPT = {"s1", "s2", "s4", "s5", "s7", "s8", "s10"}
LAYERS = (0, 1, 2)


@pytest.fixture(scope="module")
def sim_and_subset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    manifest = new_manifest(layer_store=str(root / "layers"), model_name="tiny", checkpoint_sha256="0" * 64,
                            layers=LAYERS)  # fmt: skip
    store = SimilarityStore.create_or_open(str(root / "sim"), manifest)
    rng = np.random.default_rng(3)
    match = np.equal.outer(np.array(IDS["de"]), np.array(IDS["en"]))
    scores = np.stack([rng.standard_normal(match.shape) + s * match for s in (0.0, 1.0, 2.5)]).astype(np.float32)
    ids = {"row_ids": IDS["de"], "col_ids": IDS["en"], "row_recording": list(range(13)),
           "col_recording": list(range(13))}  # fmt: skip
    array = store.create_pair("seqsim", "de", "en", ids)
    for position, layer in enumerate(LAYERS):
        store.write_layer(
            array, "seqsim", "de", "en", layer, scores[position], done_marker(np.arange(13), np.arange(13))
        )
    subset = root / "challenge"
    subset.mkdir()
    flags = {uid: rules.PairFlag(uid in KEPT, () if uid in KEPT else ("x",), (), False, 1.0) for uid in IDS["en"]}
    (subset / "de__en.csv").write_bytes(files.pair_csv_bytes(flags))
    seal(subset / "de__en.csv")
    return root, scores, subset


def test_subset_retrieval_equals_the_restricted_matrices(sim_and_subset, tmp_path):
    root, scores, subset = sim_and_subset
    config = configure(
        RetrievalConfig,
        similarity=str(root / "sim"),
        out=str(tmp_path / "a"),
        subset=str(subset),
        ks=(1, 5),
        subset_draws=7,
    )
    result = run_retrieval(config)
    for s in result.scores:
        matrix = scores[LAYERS.index(s.layer)]
        matrix = matrix if (s.lang_a, s.lang_b) == ("de", "en") else matrix.T
        rows = [i for i, uid in enumerate(IDS[s.lang_a]) if uid in KEPT]
        cols = [j for j, uid in enumerate(IDS[s.lang_b]) if uid in KEPT]
        want = reference_retrieval_metrics(
            matrix[np.ix_(rows, cols)], [IDS[s.lang_a][i] for i in rows], [IDS[s.lang_b][j] for j in cols], ks=(1, 5)
        )
        np.testing.assert_allclose(s.metrics.recall[1], want.recall[1], atol=1e-6)
        np.testing.assert_allclose(s.metrics.mrr, want.mrr, atol=1e-6)
        assert s.metrics.random_recall[1] == pytest.approx(want.random_recall[1])
    assert {(r[4], r[10]) for r in result.comparison} == {("full", 12), ("challenge", len(KEPT)), ("size_matched", 7)}

    # Size-matched draws: the seeded subsets, scored directly, give the CSV's mean and percentile interval.
    shared = sorted(set(IDS["de"]) & set(IDS["en"]))
    draws = subset_lib.size_matched_draws(shared, len(KEPT), 7, 0, "de", "en")
    values = []
    for d in draws:
        r = [i for i, uid in enumerate(IDS["de"]) if uid in d]
        c = [j for j, uid in enumerate(IDS["en"]) if uid in d]
        values.append(
            retrieval_metrics(scores[2][np.ix_(r, c)], [IDS["de"][i] for i in r], [IDS["en"][j] for j in c]).recall[1]
        )
    row = next(r for r in read(tmp_path / "a" / subset_lib.SUBSET_CSV)
               if (r["lang_a"], r["layer"], r["set"], r["metric"]) == ("de", "2", "size_matched", "R@1"))  # fmt: skip
    assert float(row["value"]) == pytest.approx(np.mean(values))
    assert (float(row["low"]), float(row["high"])) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert (tmp_path / "a" / subset_lib.SUBSET_FIGURE).read_bytes()[:4] == b"\x89PNG"

    # Reproducible with the seed, different with another.
    again = run_retrieval(dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(tmp_path / "b"))))
    assert again.comparison == result.comparison
    other_run = dataclasses.replace(config.run, out=str(tmp_path / "c"))
    other = run_retrieval(dataclasses.replace(config, run=other_run, subset_seed=1))
    assert other.comparison != result.comparison
    # A rerun without --subset into the folder left the subset's table and figure beside the new numbers (a probe's)
    run_retrieval(dataclasses.replace(config, subset=None, run=other_run))
    assert not (tmp_path / "c" / subset_lib.SUBSET_CSV).exists() and not (tmp_path / "c" / "figures" /
                                                                           "subset_by_layer.png").exists()  # fmt: skip


def test_a_challenge_set_of_other_texts_is_refused(tmp_path):
    """retrieval --subset scored a challenge set built on a store whose ids name other sentences (a probe's): the
    set records the texts per language, which retrieval compares with the similarity store's layer store. Another
    model's store of the same dataset holds the same texts and passes."""
    from engine.stores.challenge import check_built_on, text_digest
    from engine.stores.reader import open_store

    store = LayerStore.create_or_open(f"file://{tmp_path}/store", writer.INFO)
    for lang, column in (("en", 0), ("de", 1)):
        store.language(lang, rows(lang, column))
    reader = open_store(str(tmp_path / "store"))
    texts = {lang: text_digest(reader, lang) for lang in reader.languages}
    (tmp_path / "ch").mkdir()
    manifest = {"layer_store": str(tmp_path / "store")}
    (tmp_path / "ch" / "challenge.json").write_text(json.dumps({"texts": texts}))
    check_built_on(str(tmp_path / "ch"), manifest, RetrievalError)
    (tmp_path / "ch" / "challenge.json").write_text(json.dumps({"texts": {**texts, "de": "0" * 64}}))
    with pytest.raises(RetrievalError, match=r"challenge set .* was built on other texts of \['de'\] than the"):
        check_built_on(str(tmp_path / "ch"), manifest, RetrievalError)
