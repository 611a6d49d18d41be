"""What every store-reading job that needs no model does on a store of any family, checked from its outputs: shared by
the families' job tests (tests/jobs/test_speechllm_jobs.py, tests/jobs/test_fastconformer_jobs.py).

The jobs run in this process, through the library calls their ``main`` makes (``run_<job>(config)``): what varies with
the family is the store (its frame rate, width and layers), which the library reads; the flags are the same for every
family, and each job's flags are run as a process in its own tests (tests/jobs/test_families_jobs.py runs these four
on a wav2vec2 store). A process each was four job start-ups (imports, compiles) per family."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.pipelines.challenge.run import ChallengeConfig, run_challenge
from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.run import run_interp
from engine.pipelines.probe import run as probe
from engine.pipelines.probe.config import ProbeConfig
from engine.pipelines.probes.config import ProbesConfig
from engine.pipelines.probes.run import run_probes
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.test_families import LANGS, PAIRS


def check_store_jobs(store: str, whisper_words, tmp_path) -> None:
    """challenge, probe, probes (samediff on Whisper-aligned words: the clips of tests/jobs/test_families.py have 2 ids
    a language, too few for LID's folds) and interp on ``store`` (languages fr, pt), each read back from its outputs;
    interp's word cosines are recomputed from the stored states at the frames the words' seconds map to at the
    store's own frame rate (within 1e-5: float32 dot products in another order)."""
    reader = open_store(store)
    layers = set(reader.info.layers)

    out = tmp_path / "challenge"
    run_challenge(configure(ChallengeConfig, store=store, out=str(out), pairs="fr:pt", phone_threshold=0.16,
                            progress=False))  # fmt: skip
    assert {r.split(",")[0] for r in (out / "fr__pt.csv").read_text().splitlines()[1:]} == set(PAIRS)

    text = {lang: dict(zip(*(reader.utterances_table(lang).column(c).to_pylist() for c in ("id", "transcription")),
                           strict=True)) for lang in LANGS}  # fmt: skip
    relations = tmp_path / "relations.csv"
    rows = [("fr", text["fr"][u], "pt", text["pt"][u], "synonym") for u in PAIRS]
    rows += [("fr", text["fr"]["a"], "pt", text["pt"]["b"], "unrelated"), ("fr", text["fr"]["b"], "pt", text["pt"]["a"],
             "unrelated")]  # fmt: skip
    relations.write_bytes(probe.relations_csv_bytes(rows))
    probe.run_probe(configure(ProbeConfig, store=store, out=str(tmp_path / "probe"), relations=str(relations), seeds=2,
                              progress=False))  # fmt: skip
    assert set(pd.read_csv(tmp_path / "probe" / "probe.csv")["layer"]) == layers

    run_probes(configure(ProbesConfig, store=store, out=str(tmp_path / "probes"), words=str(whisper_words),
                         probes=("samediff",), min_chars=2, progress=False))  # fmt: skip
    assert set(pd.read_csv(tmp_path / "probes" / "samediff.csv")["layer"]) == layers

    out = tmp_path / "interp"
    run_interp(configure(InterpConfig, store=store, words=str(whisper_words), out=str(out), poolings=("centre",),
                         layers=(max(layers),), pairs="fr:pt", progress=False))  # fmt: skip
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
