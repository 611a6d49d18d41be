"""What every store-reading job that needs no model does on a store of any family, checked from its outputs: shared by
the families' job tests (tests/jobs/test_speechllm_jobs.py, tests/jobs/test_fastconformer_jobs.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.pipelines.probe import run as probe
from engine.stores.reader import open_store
from tests.jobs.test_families import LANGS, PAIRS


def check_store_jobs(store: str, run_job, whisper_words, tmp_path) -> None:
    """challenge, probe, probes (samediff on Whisper-aligned words: the clips of tests/jobs/test_families.py have 2 ids
    a language, too few for LID's folds) and interp on ``store`` (languages fr, pt), each read back from its outputs;
    interp's word cosines are recomputed from the stored states at the frames the words' seconds map to at the
    store's own frame rate (within 1e-5: float32 dot products in another order)."""
    reader = open_store(store)
    layers = set(reader.info.layers)

    out = tmp_path / "challenge"
    run_job("challenge", "--store", store, "--out", str(out), "--pairs", "fr:pt", "--phone_threshold", "0.16")
    assert {r.split(",")[0] for r in (out / "fr__pt.csv").read_text().splitlines()[1:]} == set(PAIRS)

    text = {lang: dict(zip(*(reader.utterances_table(lang).column(c).to_pylist() for c in ("id", "transcription")),
                           strict=True)) for lang in LANGS}  # fmt: skip
    relations = tmp_path / "relations.csv"
    rows = [("fr", text["fr"][u], "pt", text["pt"][u], "synonym") for u in PAIRS]
    rows += [("fr", text["fr"]["a"], "pt", text["pt"]["b"], "unrelated"), ("fr", text["fr"]["b"], "pt", text["pt"]["a"],
             "unrelated")]  # fmt: skip
    relations.write_bytes(probe.relations_csv_bytes(rows))
    run_job("probe", "--store", store, "--out", str(tmp_path / "probe"), "--relations", str(relations), "--seeds", "2")
    assert set(pd.read_csv(tmp_path / "probe" / "probe.csv")["layer"]) == layers

    run_job("probes", "--store", store, "--out", str(tmp_path / "probes"), "--words", str(whisper_words),
            "--probes", "samediff", "--min_chars", "2")  # fmt: skip
    assert set(pd.read_csv(tmp_path / "probes" / "samediff.csv")["layer"]) == layers

    out = tmp_path / "interp"
    run_job("interp", "--store", store, "--words", str(whisper_words), "--out", str(out), "--pooling", "centre",
            "--layers", str(max(layers)), "--pairs", "fr:pt")  # fmt: skip
    pairs = pd.read_parquet(out / "fr__pt" / "pairs.parquet")
    assert len(pairs) and set(pairs["layer"]) == {max(layers)}
    rate = reader.info.frame_rate

    def centres(lang: str, uid: str) -> dict[int, int]:
        """word_index -> centre frame: the word's seconds at the store's rate (start floored, end ceiled: at 25/s the
        align job's 20 ms times fall between frames), cut to the utterance's frames, a word starting where an
        overlapping earlier one ends."""
        n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
        table = pd.read_parquet(whisper_words / lang / "words.parquet").query("id == @uid").sort_values("word_index")
        spans, end = {}, 0
        for word in table.itertuples():
            s = min(math.floor(word.start * rate + 1e-3), n - 1)
            e = min(max(s + 1, math.ceil(word.end * rate - 1e-3)), n)
            s = max(s, end) if spans else s
            if s < e:
                spans[word.word_index], end = s + (e - s) // 2, e
        return spans

    for row in pairs.itertuples():
        a = reader.states("fr", row.id_a, row.layer)[centres("fr", row.id_a)[row.word_index_a]]
        b = reader.states("pt", row.id_b, row.layer)[centres("pt", row.id_b)[row.word_index_b]]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(cosine - row.cosine) <= 1e-5, (row, cosine)
