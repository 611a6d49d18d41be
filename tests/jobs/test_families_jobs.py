"""The rest of every job on a non-Whisper family, on test_families.py's random folders and stores of real clips:

- ``encode --plan`` on a wav2vec2 and a w2v-BERT folder: its FLOP count equals torch's ``FlopCounterMode`` on the
  transformers model (eager attention) run on each clip, summed; at 1 s the family's ``cost`` equals it exactly;
- challenge, probe and seqsim's plan on the wav2vec2 store;
- interp on the wav2vec2 store with ``--words`` from the align job run on a tiny random Whisper's store of the same
  clips (the cross-model use of issue 27; ``whisper_words`` of tests/jobs/conftest.py), its cosines recomputed from
  the wav2vec2 states at the frames the words' seconds map to.

The jobs run in this process, through the library calls their ``main`` makes (the plan functions their ``--plan``
calls, ``run_<job>(config)``): what varies with the family is the store or the model folder, which the library reads;
each job's flags, ``--plan`` included, are run as processes in its own tests (test_plan.py, test_challenge.py,
test_probe.py, test_interp.py). A process each was a job's start-up (imports, compiles): seven of them here.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from engine.data.audio import load_audio
from engine.models.w2vbert.config import config_from_hf
from engine.models.w2vbert.cost import encoder_cost as w2vbert_cost
from engine.models.wav2vec2.config import dims_from_hf_config
from engine.models.wav2vec2.cost import encoder_cost as wav2vec2_cost
from engine.pipelines.challenge.run import ChallengeConfig, run_challenge
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.plan import plan_encode_run
from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.run import run_interp
from engine.pipelines.probe import run as probe
from engine.pipelines.probe.config import ProbeConfig
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.plan import plan_seqsim_run
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.test_families import LANGS, PAIRS, _folder, encoded, family_clips

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
flop_counter = pytest.importorskip("torch.utils.flop_counter")

COST = {"wav2vec2": (dims_from_hf_config, wav2vec2_cost), "hubert": (dims_from_hf_config, wav2vec2_cost),
        "w2v-bert": (config_from_hf, w2vbert_cost)}  # fmt: skip


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory):
    return family_clips(fleurs_dir, tmp_path_factory.mktemp("family-jobs-clips"))


def torch_flops(name: str, folder, audio: np.ndarray) -> int:
    """FLOPs torch counts for transformers' encoder on ``audio`` (its valid frames only)."""
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    if name == "w2v-bert":
        x = transformers.SeamlessM4TFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt")
        inputs = x["input_features"][:, : int(x["attention_mask"].sum())]  # the last odd fbank frame is padding
    else:
        inputs = torch.from_numpy(audio)[None]
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "w2v-bert"])
def test_encode_plan_counts_the_family_flops(name, clips, fleurs_dir, tmp_path_factory, tmp_path):
    _, folder = _folder(name, tmp_path_factory)
    config = json.loads((folder / "config.json").read_text())
    read_config, cost = COST[name]
    one_second = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert cost(read_config(config), 16000).flops == torch_flops(name, folder, one_second)
    if name == "hubert":
        return  # its plan is wav2vec2's, checked next

    out = tmp_path / "never"
    text = plan_encode_run(configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=str(out)), None)
    text = text.render()
    assert not out.exists()
    family = "w2vbert" if name == "w2v-bert" else "wav2vec2"
    assert f"({family}, L=2, d=32," in text and "utterances: 4" in text and "windows: 4 of at most 30 s" in text, text
    expected = sum(
        torch_flops(name, folder, load_audio(fleurs_dir / f"{stem}.ogg")) for stems in PAIRS.values() for stem in stems
    )
    assert f"encoder FLOPs: {round(expected):,} (" in text and " 2 layers;" in text, text
    assert re.search(r"encoder\s+\S+ [MG]\s", text), text  # the stage row carries the count too


def test_challenge_probe_and_seqsim_plan_on_a_wav2vec2_store(clips, fleurs_dir, run_job, tmp_path_factory, tmp_path):
    _, _, _, store = encoded("wav2vec2", clips, run_job, tmp_path_factory)
    reader = open_store(store)

    out = tmp_path / "challenge"
    run_challenge(configure(ChallengeConfig, store=store, out=str(out), pairs="fr:pt", phone_threshold=0.16,
                            progress=False))  # fmt: skip
    with open(out / "fr__pt.csv", newline="") as f:
        assert {r["id"] for r in csv.DictReader(f)} == set(PAIRS)

    # The probe finds a word by its utterance's transcription: here each sentence is one "word", its id the concept.
    text = {lang: dict(zip(*(reader.utterances_table(lang).column(c).to_pylist() for c in ("id", "transcription")),
                           strict=True)) for lang in LANGS}  # fmt: skip
    relations = tmp_path / "relations.csv"
    rows = [("fr", text["fr"][u], "pt", text["pt"][u], "synonym") for u in PAIRS]
    rows += [("fr", text["fr"]["a"], "pt", text["pt"]["b"], "unrelated")]
    rows += [("fr", text["fr"]["b"], "pt", text["pt"]["a"], "unrelated")]
    relations.write_bytes(probe.relations_csv_bytes(rows))
    out = tmp_path / "probe"
    probe.run_probe(
        configure(ProbeConfig, store=store, out=str(out), relations=str(relations), seeds=2, progress=False)
    )
    scores = pd.read_csv(out / "probe.csv")
    assert set(scores["layer"]) == {0, 1, 2} and {*scores["lang_a"], *scores["lang_b"]} == set(LANGS), scores

    out = tmp_path / "sim"
    text = plan_seqsim_run(configure(SimilarityConfig, store=store, out=str(out)), None).render()
    frames = sum(int(reader.lengths(lang).sum()) for lang in LANGS)
    assert not out.exists() and "languages: 2, 1 pairs, 3 layers, d=32" in text, text
    assert f"frames: {frames}\n" in text, text


@pytest.mark.parametrize("name", ["wav2vec2", "hubert"])
def test_interp_on_a_wav2vec2_store_with_words_aligned_by_whisper(
    name, clips, run_job, whisper_words, tmp_path_factory, tmp_path
):
    """issue 27's acceptance: words.parquet from jobs.align on a Whisper store of the same clips, read by interp on a
    wav2vec2 (and a HuBERT) store, each word's seconds mapped to the store's frames by its frame rate."""
    _, _, _, store = encoded(name, clips, run_job, tmp_path_factory)
    words = whisper_words
    out = tmp_path / "interp"
    run_interp(configure(InterpConfig, store=store, words=str(words), out=str(out), poolings=("centre",),
                         layers=(1, 2), pairs="fr:pt", progress=False))  # fmt: skip
    pairs = pd.read_parquet(out / "fr__pt" / "pairs.parquet")
    assert len(pairs) and set(pairs["layer"]) <= {1, 2} and set(pairs["id_a"]) <= set(PAIRS)

    reader = open_store(store)
    rate = reader.info.frame_rate
    assert rate == 50.0 and reader.info.family == "wav2vec2"

    def centres(lang: str, uid: str) -> dict[int, int]:
        """word_index -> centre frame: the word's seconds at ``rate`` (the align times lie on a 20 ms grid), cut to
        the wav2vec2 utterance's frames, a word starting where an overlapping earlier one ends."""
        n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
        table = pd.read_parquet(words / lang / "words.parquet").query("id == @uid").sort_values("word_index")
        spans, end = {}, 0
        for row in table.itertuples():
            s = min(round(row.start * rate), n - 1)
            e = min(max(s + 1, round(row.end * rate)), n)
            s = max(s, end) if spans else s
            if s < e:
                spans[row.word_index], end = s + (e - s) // 2, e
        return spans

    checked = 0
    for row in pairs.itertuples():
        ca, cb = centres("fr", row.id_a), centres("pt", row.id_b)
        a = reader.states("fr", row.id_a, row.layer)[ca[row.word_index_a]]
        b = reader.states("pt", row.id_b, row.layer)[cb[row.word_index_b]]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert math.isclose(cosine, row.cosine, abs_tol=1e-5), (row, cosine)
        checked += 1
    assert checked == len(pairs)
