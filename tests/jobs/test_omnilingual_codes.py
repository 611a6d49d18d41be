"""ISO 639-3 language codes with a script (``eng_Latn``: Omnilingual ASR's, FLORES-200's) through the jobs, on an
Omnilingual-ASR-configured ``Wav2Vec2ForCTC`` (pre-LN, layer-norm feature encoder, blank ``<s>`` = 0, a ``▁`` word
delimiter; width 32, 2 layers: parity at real widths is tests/models/wav2vec2/test_omnilingual.py's).

A ``folder:`` dataset of real FLEURS clips in folders ``eng_Latn``, ``deu_Latn`` and ``spa_Latn``, the file ids shared
across languages so that retrieval has partners (the clips are not translations: the scores are not the point, the
codes are), goes through encode (``--langs`` naming them, through the job's flags), seqsim, retrieval and decode (the
CTC logit lens, its English text scored with Whisper's English normaliser: ``eng_Latn`` maps to ``en``; these three,
and interp, through the library calls of their jobs, in this process); every output is read back. interp
pairs a ``fra_Latn`` / ``por_Latn`` store with words aligned by Whisper on a store of the same clips coded ``fr`` /
``pt`` (``whisper_words`` of tests/jobs/conftest.py): the codes are matched through their Whisper codes.
The stored layers are compared with transformers' ``hidden_states`` within 1e-5 of each layer's peak (the parity
tests' bound: float32 sums in other orders), the last layer's hypotheses with ``Wav2Vec2CTCTokenizer``'s text
(built from ``tokenizer_config.json``'s arguments: ``tests.models.wav2vec2.test_omnilingual.reference_tokenizer`` says
why not ``from_pretrained``).
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine.data.audio import load_audio
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.run import run_interp
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity
from tests.jobs.test_families import PAIRS
from tests.models.wav2vec2 import w2v_reference as ref
from tests.models.wav2vec2.test_omnilingual import OMNI_300M, reference_tokenizer, write_omni_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CODES = {"eng_Latn": "en", "deu_Latn": "de", "spa_Latn": "es"}  # store code -> the sample's clip prefix
IDS = ("s0", "s1", "s2")  # s<i> is fleurs-<lang>-00<i> in every language
TINY = dict(OMNI_300M, hidden_size=32, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=40)  # fmt: skip
RTOL_PEAK = 1e-5


@pytest.fixture(scope="module")
def omni_run(fleurs_dir, run_job, tmp_path_factory):
    root = tmp_path_factory.mktemp("omni-codes")
    clips = root / "clips"
    for code, prefix in CODES.items():
        (clips / code).mkdir(parents=True)
        for i, uid in enumerate(IDS):
            for ext in ("ogg", "txt"):
                (clips / code / f"{uid}.{ext}").symlink_to(fleurs_dir / f"fleurs-{prefix}-00{i}.{ext}")
    model = ref.build(transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config(**TINY), root / "model", seed=3)
    with torch.no_grad():  # a head whose argmax moves from frame to frame, blank among the picks
        model.lm_head.weight.normal_(0, 2.0)
        model.lm_head.bias[0] += 12.0
    model.save_pretrained(root / "model")
    write_omni_tokenizer(root / "model", TINY["vocab_size"])
    out = {name: root / name for name in ("store", "sim", "retrieval", "decode")}
    langs = ",".join(CODES)
    run_job("encode", "--model", str(root / "model"), "--dataset", f"folder:{clips}", "--langs", langs,
            "--out", str(out["store"]))  # fmt: skip
    # The jobs after encode through the library calls their ``main`` makes, in this process: the codes reach them
    # from the store (a process each was three job start-ups; the flags are the same for any code)
    run_similarity(configure(SimilarityConfig, store=str(out["store"]), out=str(out["sim"]), langs=tuple(CODES),
                             measures=("seqsim", "mean"), progress=False))  # fmt: skip
    run_retrieval(configure(RetrievalConfig, similarity=str(out["sim"]), out=str(out["retrieval"]), progress=False))
    run_decode(configure(DecodeConfig, store=str(out["store"]), model=str(root / "model"), out=str(out["decode"]),
                         progress=False))  # fmt: skip
    return model, root, out


def test_the_store_holds_the_codes_and_transformers_layers(omni_run, fleurs_dir):
    model, _, out = omni_run
    reader = open_store(str(out["store"]))
    assert sorted(reader.languages()) == sorted(CODES)
    extractor = transformers.Wav2Vec2FeatureExtractor()
    for code, prefix in CODES.items():
        assert reader.utterances_table(code).column("id").to_pylist() == list(IDS)
        for i, uid in enumerate(IDS):
            audio = load_audio(fleurs_dir / f"fleurs-{prefix}-00{i}.ogg")
            with torch.no_grad():
                x = extractor(audio, sampling_rate=16000, return_tensors="pt").input_values
                theirs = [h[0].numpy() for h in model(x, output_hidden_states=True).hidden_states]
            for layer, t in enumerate(theirs):
                ours = reader.states(code, uid, layer)
                assert ours.shape == t.shape
                assert np.abs(ours - t).max() <= RTOL_PEAK * np.abs(t).max(), (code, uid, layer)


def test_seqsim_and_retrieval_pair_the_codes(omni_run):
    _, _, out = omni_run
    sim = open_similarity(str(out["sim"]))
    scores, rows, cols = sim.matrix("seqsim", "eng_Latn", "deu_Latn", 2)
    assert scores.shape == (3, 3) and list(rows) == list(cols) == list(IDS) and np.isfinite(scores).all()
    with open(out["retrieval"] / "retrieval.csv", newline="") as f:
        table = list(csv.DictReader(f))
    pairs = {(r["lang_a"], r["lang_b"]) for r in table}
    assert pairs == {(a, b) for a in CODES for b in CODES if a != b}, pairs
    assert {int(r["layer"]) for r in table} == {0, 1, 2} and {r["measure"] for r in table} == {"seqsim", "mean"}
    for r in table:
        if r["metric"].startswith("R@"):
            assert 0 <= float(r["value"]) <= 1, r


def test_decode_reads_the_lens_of_every_layer_with_blank_zero(omni_run, fleurs_dir):
    model, root, out = omni_run
    table = pq.read_table(out["decode"] / "hypotheses.parquet").to_pandas()
    assert set(table["language"]) == set(CODES) and set(table["layer"]) == {0, 1, 2}
    with open(out["decode"] / "scores.csv", newline="") as f:
        scored = {(r["language"], int(r["layer"]), r["metric"]) for r in csv.DictReader(f)}
    assert {(code, layer, "wer") for code in CODES for layer in (0, 1, 2)} <= scored
    tokenizer = reference_tokenizer(root / "model")
    assert tokenizer.pad_token_id == 0 == model.config.pad_token_id
    extractor = transformers.Wav2Vec2FeatureExtractor()
    blanks = frames = 0
    for code, prefix in CODES.items():
        for i, uid in enumerate(IDS):
            audio = load_audio(fleurs_dir / f"fleurs-{prefix}-00{i}.ogg")
            with torch.no_grad():
                x = extractor(audio, sampling_rate=16000, return_tensors="pt").input_values
                ids = model(x).logits.argmax(-1)[0]
            blanks, frames = blanks + int((ids == 0).sum()), frames + len(ids)
            row = table[(table["language"] == code) & (table["id"] == uid) & (table["layer"] == 2)]
            assert len(row) == 1 and row["hypothesis"].iloc[0] == tokenizer.decode(ids), (code, uid)
            collapsed = ids[torch.cat([torch.tensor([True]), ids[1:] != ids[:-1]])]
            assert int(row["n_tokens"].iloc[0]) == int((collapsed != 0).sum())
    assert 0 < blanks < frames, (blanks, frames)  # blanks among the picks, so their collapse is checked


def test_interp_matches_iso_codes_to_whisper_aligned_words(omni_run, fleurs_dir, whisper_words, tmp_path):
    _, root, _ = omni_run
    clips = tmp_path / "clips"
    for uid, stems in PAIRS.items():  # the clips whisper_words aligned, under ISO 639-3 codes
        for code, stem in zip(("fra_Latn", "por_Latn"), stems, strict=True):
            (clips / code).mkdir(parents=True, exist_ok=True)
            for ext in ("ogg", "txt"):
                (clips / code / f"{uid}.{ext}").symlink_to(fleurs_dir / f"{stem}.{ext}")
    store, out = tmp_path / "store", tmp_path / "interp"
    run_encode(configure(EncodeConfig, model=str(root / "model"), dataset=f"folder:{clips}", out=str(store),
                         progress=False))  # fmt: skip
    assert not (whisper_words / "fra_Latn").exists() and (whisper_words / "fr" / "words.parquet").is_file()
    run_interp(configure(InterpConfig, store=str(store), words=str(whisper_words), out=str(out), poolings=("centre",),
                         layers=(1, 2), pairs="fra_Latn:por_Latn", progress=False))  # fmt: skip
    pairs = pd.read_parquet(out / "fra_Latn__por_Latn" / "pairs.parquet")
    assert len(pairs) and set(pairs["id_a"]) <= set(PAIRS) and set(pairs["layer"]) <= {1, 2}
    words_fr = pd.read_parquet(whisper_words / "fr" / "words.parquet")
    aligned = {(r.id, r.word_index): r.word.strip() for r in words_fr.itertuples()}
    for r in pairs.itertuples():  # every matched French word is one Whisper aligned under "fr"
        assert aligned[r.id_a, r.word_index_a] == r.word_a, r
