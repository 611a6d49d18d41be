"""FastConformer stores through the jobs: a small random Parakeet-CTC and a small random Canary (transformers'
``save_pretrained`` folders) encoded from real FLEURS clips by ``python -m jobs.encode``; every stored layer against
transformers' ``hidden_states`` of the same utterance, the store's frame rate (12.5/s) and layer meaning; seqsim and
retrieval on each store, challenge, probe, probes and interp on the Parakeet one, compare over the two (the same
audio through ASR-only and ASR + translation training).
Small widths (32) and two blocks keep CI time small: parity at real widths is
tests/models/fastconformer/test_fastconformer.py's. The bound is the parity tests' (1e-5 of each layer's peak), here
where the layers come back through the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from engine.data.audio import load_audio
from engine.models import family as fam
from engine.pipelines.compare.config import CompareConfig
from engine.pipelines.compare.run import run_compare
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.store_jobs import check_store_jobs
from tests.jobs.test_families import LANGS, PAIRS, family_clips

RTOL_PEAK = 1e-5
ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               subsampling_conv_channels=8)  # fmt: skip


def _small(kind: str):
    torch.manual_seed(0)
    if kind == "parakeet":
        model = transformers.ParakeetForCTC(
            transformers.ParakeetCTCConfig(encoder_config=ENCODER, vocab_size=40, pad_token_id=39)
        )
    else:
        encoder = {**ENCODER, "num_mel_bins": 128, "scale_input": False}
        decoder = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       intermediate_size=32, vocab_size=40, head_dim=16)  # fmt: skip
        model = transformers.CanaryForConditionalGeneration(
            transformers.CanaryConfig(encoder_config=encoder, decoder_config=decoder, vocab_size=40)
        )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms, biases and BatchNorm statistics away from 1 and 0
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.exp(torch.randn(b.shape, generator=gen) * 0.3))
    return model.eval()


@pytest.fixture(scope="module")
def stores(fleurs_dir, run_job, tmp_path_factory):
    """{kind: (torch model, the run's folder, the store's URL)} for Parakeet-CTC and Canary: Parakeet's through the
    encode job's flags (a process), Canary's through the library call the job makes, in this process (a second
    encode job's start-up; the flags are the same for every family)."""
    clips = family_clips(fleurs_dir, tmp_path_factory.mktemp("fastconformer-clips"))
    out = {}
    for kind in ("parakeet", "canary"):
        model = _small(kind)
        root = tmp_path_factory.mktemp(kind)
        model.save_pretrained(root / "model")
        store = str(root / "store")
        if kind == "parakeet":
            report = run_job("encode", "--model", str(root / "model"), "--dataset", f"folder:{clips}", "--out",
                             store).stdout  # fmt: skip
        else:
            report = run_encode(configure(EncodeConfig, model=str(root / "model"), dataset=f"folder:{clips}",
                                          out=store, progress=False)).report()  # fmt: skip
        assert "encoded 4 utterances" in report, report
        out[kind] = model, root, store
    return out


def _theirs(kind: str, model, audio: np.ndarray) -> list[np.ndarray]:
    encoder = model.encoder if kind == "parakeet" else model.model.encoder
    n_mels = 80 if kind == "parakeet" else 128
    x = transformers.ParakeetFeatureExtractor(feature_size=n_mels)(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        out = encoder(x["input_features"], attention_mask=x["attention_mask"], output_hidden_states=True)
    frames = int(out.attention_mask.sum())
    return [h[0, :frames].numpy() for h in out.hidden_states]


@pytest.mark.parametrize("kind", ["parakeet", "canary"])
def test_encode_seqsim_retrieval(kind, stores, fleurs_dir):
    model, root, store = stores[kind]
    reader = open_store(store)
    info = reader.info
    assert info.family == "fastconformer" and info.frame_rate == 12.5 and info.embed == 32
    assert info.layers == (0, 1, 2) and info.layer_meaning == fam.FAMILIES["fastconformer"].layer_meaning
    manifest = json.loads((root / "store" / "manifest.json").read_text())
    assert manifest["family"] == "fastconformer"
    assert manifest["dims"]["config"]["model_type"] == ("parakeet_ctc" if kind == "parakeet" else "canary")

    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            theirs = _theirs(kind, model, load_audio(fleurs_dir / f"{stem}.ogg"))
            n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
            assert n == len(theirs[0]), (lang, uid, n, len(theirs[0]))
            for layer, ref in enumerate(theirs):
                ours = reader.states(lang, uid, layer)
                err, peak = np.abs(ours - ref).max(), np.abs(ref).max()
                assert err <= RTOL_PEAK * peak, f"{kind} {lang}/{uid} layer {layer}: {err / peak:.2e} of the peak"

    sim = str(root / "sim")
    run_similarity(configure(SimilarityConfig, store=store, out=sim, measures=("seqsim",), progress=False))
    run_retrieval(configure(RetrievalConfig, similarity=sim, out=str(root / "retrieval")))
    rows = (root / "retrieval" / "retrieval.csv").read_text().splitlines()
    assert len(rows) > 1 and {r.split(",")[0] for r in rows[1:]} <= set(LANGS)


def test_compare_parakeet_and_canary(stores, tmp_path):
    """compare over the two stores of the same audio: a row per layer pair, both models named."""
    a, b = stores["parakeet"][2], stores["canary"][2]
    out = tmp_path / "compare"
    run_compare(
        configure(CompareConfig, stores=(a, b), names=("parakeet", "canary"), out=str(out), frame_sample=64, knn_k=1)
    )
    outputs = {p.name for p in out.iterdir()}
    assert "layer_similarity.parquet" in outputs, outputs
    import pyarrow.parquet as pq

    table = pq.read_table(out / "layer_similarity.parquet").to_pandas()
    assert {"parakeet", "canary"} <= set(table["model_a"]) | set(table["model_b"])
    assert {0, 1, 2} <= set(table["layer_a"])


def test_challenge_probe_probes_and_interp(stores, whisper_words, tmp_path):
    """The other store-reading jobs on the Parakeet-CTC store (12.5 frames/s: a word's 20 ms Whisper times fall
    inside 80 ms frames), read back from their outputs; interp's cosines recomputed at the words' frames."""
    check_store_jobs(stores["parakeet"][2], whisper_words, tmp_path)


def test_decode_refusals(stores, run_job, tmp_path):
    """decode reads a Parakeet-CTC store through its CTC head (tests/jobs/test_decode_parakeet.py) and a Canary store
    through its decoder (tests/jobs/test_decode_canary.py), both needing the checkpoint's tokenizer.json: a folder
    without one is refused naming it, in one line, before any hypothesis is written."""
    model, root, store = stores["parakeet"]
    proc = run_job(
        "decode", "--store", store, "--model", str(root / "model"), "--out", str(tmp_path / "p"), expect=None
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "has no tokenizer.json" in text and "Traceback" not in text, text
    model, root, store = stores["canary"]
    out = tmp_path / "decode"
    proc = run_job("decode", "--store", store, "--model", str(root / "model"), "--out", str(out), expect=None)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "has no tokenizer.json" in text and "Traceback" not in text, text
    assert not (out / "parts").exists()
