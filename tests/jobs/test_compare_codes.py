"""compare across language-code systems: two stores of the same real clips whose languages are named in different
systems (folders ``fr`` / ``pt`` and ``fra_Latn`` / ``por_Latn``) are compared language by language, as if they used
the same codes.

The tiny random Whisper (tests/conftest.py) encodes 6 real FLEURS clips of French and 6 of Portuguese (ids ``s0`` ..
``s5`` in both folders: not translations, the codes are the point) twice, once under each system. The stores then
hold the same states, so a compare of the two must write exactly what a compare of the first store with itself
writes: every layer-similarity row (both levels, the permutation null, whose seeds are the language's name),
``by_depth.csv`` (one store's retrieval read from a folder in its own codes, the other's computed) and
``challenge_table.csv``. With the ISO store first the outputs name the languages by its codes, and the challenge set
(built under ``fr__pt``) is found under the second store's codes. ``--langs`` takes either store's code; a store with
two codes for one language is refused, naming both, before anything is written.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.pipelines.compare.config import CompareConfig, CompareError
from engine.pipelines.compare.languages import Language, languages_of, shared_languages
from engine.pipelines.compare.layers import NULL_COLUMNS
from engine.pipelines.compare.run import run_compare
from engine.pipelines.retrieval.output import CSV_COLUMNS
from engine.pipelines.retrieval.subset import SUBSET_COLUMNS
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.conftest import seal
from tests.jobs.test_compare import N, make_store

CODES = {"same": ("fr", "pt"), "iso": ("fra_Latn", "por_Latn")}  # the sample's clips fleurs-fr-*, fleurs-pt-*
RENAMED = dict(zip(CODES["same"], CODES["iso"], strict=True))
IDS = tuple(f"s{i}" for i in range(6))
LAYERS = (0, 1, 2, 3)  # the tiny Whisper's stored layers


@pytest.fixture(scope="module")
def stores(fleurs_dir, tiny_whisper, tmp_path_factory) -> dict[str, str]:
    """The two stores, encoded in this process (the encode job's library call, the session's loaded model): the
    codes come from the folders, not the flags."""
    from engine.models.whisper.encoder import WhisperEncoder
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode

    root = tmp_path_factory.mktemp("compare-codes")
    urls = {}
    for system, codes in CODES.items():
        clips = root / f"clips-{system}"
        for code, prefix in zip(codes, ("fr", "pt"), strict=True):
            (clips / code).mkdir(parents=True)
            for i, uid in enumerate(IDS):
                for ext in ("ogg", "txt"):
                    (clips / code / f"{uid}.{ext}").symlink_to(fleurs_dir / f"fleurs-{prefix}-00{i}.{ext}")
        urls[system] = str(root / f"store-{system}")
        run_encode(configure(EncodeConfig, out=urls[system], dataset=f"folder:{clips}", progress=False),
                   encoder=WhisperEncoder(tiny_whisper))  # fmt: skip
    return urls


def _retrieval_folder(folder, codes) -> str:
    """A planted jobs.retrieval output under ``codes``: the same numbers whatever the codes."""
    folder.mkdir()
    a, b = codes
    with open(folder / "retrieval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for layer in LAYERS:
            for x, y, value in ((a, b, 0.5 - 0.1 * layer), (b, a, 0.25 + 0.05 * layer)):
                w.writerow([x, y, layer, "mean", "R@1", value, 1 / 6, 6, 0, 0, 0, 0])
                w.writerow([x, y, layer, "mean", "MRR", value + 0.1, 0.4, 6, 0, 0, 0, 0])
    with open(folder / "subset_comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUBSET_COLUMNS)
        for layer in LAYERS:
            for name, value in (("full", 0.5), ("challenge", 0.75 - 0.1 * layer)):
                w.writerow([a, b, layer, "mean", name, "R@1", value, value, value, 1 / 4, 4, 1])
    seal(folder / "retrieval.csv"), seal(folder / "subset_comparison.csv")
    return str(folder)


def _outputs(out) -> tuple[list[dict], bytes, bytes]:
    rows = pq.read_table(out / "layer_similarity.parquet").to_pylist()
    return rows, (out / "by_depth.csv").read_bytes(), (out / "challenge_table.csv").read_bytes()


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory) -> dict[str, tuple]:
    """Outputs of three compares: the first store with itself (``same``), with the ISO store (``cross``), and the
    ISO store first (``flipped``, utterance level, no null)."""
    root = tmp_path_factory.mktemp("compare-codes-runs")
    challenge = root / "challenge"
    challenge.mkdir()
    (challenge / "fr__pt.csv").write_text(
        "id,kept,reason,evidence\n" + "".join(f"{uid},{int(i % 3 != 0)},,\n" for i, uid in enumerate(IDS))
    )
    seal(challenge / "fr__pt.csv")
    settings = dict(names=("m1", "m2"), challenge=str(challenge), measures=("cka", "cka_unbiased", "mknn"),
                    frame_measures=("cka",), knn_k=3, null_permutations=20, frame_sample=300)  # fmt: skip
    pairs = {
        "same": (stores["same"], stores["same"], _retrieval_folder(root / "ret-same", CODES["same"])),
        "cross": (stores["same"], stores["iso"], _retrieval_folder(root / "ret-iso", CODES["iso"])),
    }
    outputs = {}
    for name, (a, b, retrieval) in pairs.items():
        run_compare(configure(CompareConfig, stores=(a, b), out=str(root / name), retrieval=("", retrieval),
                              **settings))  # fmt: skip
        outputs[name] = _outputs(root / name)
    flipped = dict(settings, null_permutations=0, levels=("utterance",))
    run_compare(configure(CompareConfig, stores=(stores["iso"], stores["same"]), out=str(root / "flipped"), **flipped))
    outputs["flipped"] = _outputs(root / "flipped")
    return outputs


def test_the_stores_hold_the_same_states_under_other_codes(stores):
    same, iso = open_store(stores["same"]), open_store(stores["iso"])
    assert sorted(same.languages()) == list(CODES["same"]) and sorted(iso.languages()) == list(CODES["iso"])
    for code, other in RENAMED.items():
        assert same.utterances_table(code).column("id").to_pylist() == list(IDS)
        assert iso.utterances_table(other).column("id").to_pylist() == list(IDS)
        for layer in LAYERS:
            x, lengths = same.language_layer(code, layer)
            y, other_lengths = iso.language_layer(other, layer)
            assert np.array_equal(lengths, other_lengths) and np.array_equal(x, y), (code, layer)


def test_a_cross_system_compare_writes_what_one_system_does(runs):
    rows, by_depth, challenge = runs["cross"]
    same_rows, same_by_depth, same_challenge = runs["same"]
    assert {r["language"] for r in rows} == {"fr", "pt", "all"}  # named by the first store's codes
    assert {r["level"] for r in rows} == {"utterance", "frame"} and all(r["value"] is not None for r in rows)
    assert sum(r["p_value"] is not None for r in rows) == 3 * 3 * 16 * 3  # every utterance row has its null
    assert rows == same_rows
    assert by_depth == same_by_depth  # m2's retrieval folder in ISO codes read under the first store's names
    depth_rows = list(csv.DictReader(by_depth.decode().splitlines()))
    assert {(r["lang_a"], r["lang_b"]) for r in depth_rows if r["model"] == "m2"} == {
        ("fr", "pt"), ("pt", "fr"), ("all", "all")
    }  # fmt: skip
    assert challenge == same_challenge and b"challenge" in challenge


def test_the_first_stores_codes_name_the_languages(runs):
    rows, by_depth, challenge = runs["flipped"]
    same_rows, same_by_depth, same_challenge = runs["same"]
    assert {r["language"] for r in rows} == {"fra_Latn", "por_Latn", "all"}
    want = [{**r, "language": RENAMED.get(r["language"], r["language"])} | dict.fromkeys(NULL_COLUMNS)
            for r in same_rows if r["level"] == "utterance"]  # fmt: skip
    assert rows == want
    # Both models computed (m1's retrieval in `same` too): each is m1's of `same` under the ISO names.
    computed = [r for r in csv.DictReader(same_by_depth.decode().splitlines()) if r["model"] == "m1"]
    got = list(csv.DictReader(by_depth.decode().splitlines()))
    for model in ("m1", "m2"):
        mine = [r for r in got if r["model"] == model]
        assert mine == [{**r, "model": model, "lang_a": RENAMED.get(r["lang_a"], r["lang_a"]),
                         "lang_b": RENAMED.get(r["lang_b"], r["lang_b"])} for r in computed]  # fmt: skip
    # The challenge set is fr__pt.csv, found under the second store's codes, for both models.
    table = list(csv.DictReader(challenge.decode().splitlines()))
    first = [r for r in csv.DictReader(same_challenge.decode().splitlines()) if r["model"] == "m1"]
    assert [r for r in table if r["model"] == "m1"] == first and len(table) == 2 * len(first) == 2 * 2 * 4


def test_langs_takes_either_stores_code(stores, run_job, tmp_path):
    readers = [open_store(stores["same"]), open_store(stores["iso"])]
    for asked in (("por_Latn",), ("pt",), ("pt_br",), ("por_Latn", "pt")):  # pt_br: FLEURS's code, in neither
        config = configure(CompareConfig, stores=(stores["same"], stores["iso"]), out=str(tmp_path), langs=asked)
        assert languages_of(config, readers) == [Language("pt", ("pt", "por_Latn"))], asked
    with pytest.raises(CompareError, match=r"languages \['de'\] are not in every store; the stores share \['fr', "):
        languages_of(configure(CompareConfig, stores=(stores["same"], stores["iso"]), out=str(tmp_path),
                               langs=("de", "fr")), readers)  # fmt: skip
    # Through the flags, the ISO store first: the plan pairs the utterances of the language asked under each store's
    # code.
    proc = run_job("compare", f"--stores={stores['iso']},{stores['same']}", f"--out={tmp_path / 'plan'}", "--plan",
                   "--langs=pt", "--names=m1,m2")  # fmt: skip
    frames = int(readers[0].lengths("pt").sum())  # the same audio in both stores: the same lengths
    assert f"languages: 1 (+ all)\n  utterances: {len(IDS)}; frames {frames:,} (" in proc.stdout, proc.stdout


def test_matching_rules_on_code_lists():
    urls = ("A", "B")
    assert shared_languages(urls, [["de", "en", "fr"], ["fra_Latn", "deu_Latn", "spa_Latn"]]) == [
        Language("de", ("de", "deu_Latn")), Language("fr", ("fr", "fra_Latn"))
    ]  # fmt: skip
    # One system: literal codes, even two of one language, as before.
    assert [lang.codes for lang in shared_languages(urls, [["pt_br", "pt_pt"], ["pt_pt", "pt_br"]])] == [
        ("pt_br", "pt_br"), ("pt_pt", "pt_pt")
    ]  # fmt: skip
    assert shared_languages(urls, [["pt_br", "pt_pt"], ["pt_br"]]) == [Language("pt", ("pt_br", "pt_br"))]
    assert shared_languages(("A", "B", "C"), [["en_us"], ["eng_Latn"], ["en"]]) == [
        Language("en", ("en_us", "eng_Latn", "en"))
    ]  # three stores, three systems  # fmt: skip
    assert shared_languages(urls, [["xx_test"], ["xx_other"]]) == []  # unknown codes match only when equal
    with pytest.raises(CompareError, match=r"store 'A' has 2 codes for language 'pt': 'pt_br' and 'pt_pt'"):
        shared_languages(urls, [["pt_br", "pt_pt"], ["por_Latn"]])


def test_ambiguous_codes_are_refused_naming_both(tmp_path):
    """A store with two codes of one language (``pt_br``, ``pt_pt``) against a store with one (``por_Latn``): the
    default and a ``--langs`` through the other store's code are refused before any output is written; naming one
    of the two picks it."""
    two = make_store(tmp_path / "two", "model-two", 50.0, list(range(N)), langs=("de", "pt_br", "pt_pt"))
    one = make_store(tmp_path / "one", "model-one", 50.0, list(range(N)), seed=1, langs=("deu_Latn", "por_Latn"))
    single = make_store(tmp_path / "single", "model-pt", 50.0, list(range(N)), seed=2, langs=("pt",))
    message = r"store '.*two' has 2 codes for language 'pt': 'pt_br' and 'pt_pt'.*--langs"
    for langs in (None, ("por_Latn",), ("pt",), ("de", "pt"), ("pt_pt", "por_Latn")):
        out = tmp_path / f"out-{langs}"
        with pytest.raises(CompareError, match=message):
            run_compare(configure(CompareConfig, stores=(two, one), out=str(out), langs=langs))
        assert not out.exists(), langs
    readers = [open_store(two), open_store(one)]
    config = configure(CompareConfig, stores=(two, one), out=str(tmp_path / "x"), langs=("pt_br", "deu_Latn"))
    assert languages_of(config, readers) == [Language("de", ("de", "deu_Latn")), Language("pt", ("pt_br", "por_Latn"))]
    # The other way round: one store's single code asked for two of the other's.
    with pytest.raises(CompareError, match=r"store '.*two' has 2 codes for language 'pt': 'pt_br' and 'pt_pt'"):
        run_compare(configure(CompareConfig, stores=(single, two), out=str(tmp_path / "y"), langs=("pt_br", "pt_pt")))
    with pytest.raises(CompareError, match=r"'pt_br' and 'pt_pt'"):
        run_compare(configure(CompareConfig, stores=(single, two), out=str(tmp_path / "z")))
