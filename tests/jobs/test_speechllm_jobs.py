"""Speech-LLM audio towers through the jobs: encode writes every stored layer (checked against transformers' PyTorch
tower, utterance by utterance, windows concatenated), seqsim and retrieval read the store, and the decoder jobs refuse
it at once. Small random widths (the real widths are in tests/models/speechllm/test_speechllm.py); the clips are
tests/jobs/test_families.py's two translation pairs, fr and pt."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
import transformers

from engine.data.audio import load_audio
from engine.errors import BabelgridError
from engine.models import family as fam
from engine.models.common.logmel import features_for_audio, split_windows
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
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
from tests.models.speechllm.test_speechllm import _theirs

RTOL_PEAK = 1e-5
AUDIO = dict(num_mel_bins=128, max_source_positions=1500)
TEXT = dict(hidden_size=48, num_hidden_layers=1, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=64, head_dim=24)  # fmt: skip


def _small(kind: str):
    torch.manual_seed(0)
    if kind == "qwen2_audio":
        audio = {**AUDIO, "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64}
        model = transformers.Qwen2AudioForConditionalGeneration(
            transformers.Qwen2AudioConfig(audio_config=audio, text_config=TEXT)
        )
    else:
        audio = {**AUDIO, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
        model = transformers.VoxtralForConditionalGeneration(
            transformers.VoxtralConfig(audio_config=audio, text_config={**TEXT, "head_dim": 24})
        )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory):
    return family_clips(fleurs_dir, tmp_path_factory.mktemp("speechllm-clips"))


_MODELS: dict = {}
_STORES: dict = {}


def _model(kind, tmp_path_factory):
    """(torch model, its folder), built once per module."""
    if kind not in _MODELS:
        model = _small(kind)
        folder = tmp_path_factory.mktemp(kind)
        model.save_pretrained(folder)
        _MODELS[kind] = model, folder
    return _MODELS[kind]


def encoded(kind, output, clips, run_job, tmp_path_factory):
    """(torch model, folder, store) of ``kind`` encoded once with ``tower_output``: Qwen2-Audio's layers through the
    encode job's flags (``--tower_output layers``, a process), the other stores through the library call the job makes,
    in this process (each process was an encode job's start-up; the flag reaches the library, as that run and
    test_tower_output_refused_for_other_families show)."""
    if (kind, output) not in _STORES:
        model, folder = _model(kind, tmp_path_factory)
        store = str(tmp_path_factory.mktemp(f"{kind}-{output}") / "store")
        if (kind, output) == ("qwen2_audio", "layers"):
            proc = run_job("encode", "--model", str(folder), "--dataset", f"folder:{clips}", "--out", store,
                           "--tower_output", output)  # fmt: skip
            report = proc.stdout
        else:
            report = run_encode(configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=store,
                                          tower_output=output, progress=False)).report()  # fmt: skip
        assert "encoded 4 utterances" in report, report
        _STORES[kind, output] = model, folder, store
    return _STORES[kind, output]


@pytest.mark.parametrize("kind", ["qwen2_audio", "voxtral"])
def test_encode_seqsim_retrieval_and_refusals(kind, clips, fleurs_dir, run_job, tmp_path, tmp_path_factory):
    model, _, store = encoded(kind, "layers", clips, run_job, tmp_path_factory)
    reader = open_store(store)
    info = reader.info
    n_layers = 3 if kind == "qwen2_audio" else 4  # Voxtral's final norm is at 50 frames/s too: stored as L + 1
    assert info.family == "speechllm" and info.frame_rate == 50.0 and info.embed == 32
    assert info.layers == tuple(range(n_layers)) and info.layer_meaning == fam.FAMILIES["speechllm"].layer_meaning
    manifest = json.loads((pathlib.Path(store) / "manifest.json").read_text())
    assert manifest["dims"]["config"]["kind"] == kind

    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            audio = load_audio(fleurs_dir / f"{stem}.ogg")
            mel, frames = features_for_audio(audio, 128)
            theirs = _theirs(kind, model, mel, split_windows(audio)[1])
            layers = theirs["layers"] + ([theirs["final"]] if kind == "voxtral" else [])
            n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
            assert n == int(frames.sum())
            for layer, ref in enumerate(layers):
                want = np.concatenate([ref[w, : frames[w]] for w in range(len(frames))])
                ours = reader.states(lang, uid, layer)
                err, peak = np.abs(ours - want).max(), np.abs(want).max()
                assert err <= RTOL_PEAK * peak, f"{kind} {lang}/{uid} layer {layer}: {err / peak:.2e} of the peak"

    sim = str(tmp_path / "sim")
    run_similarity(configure(SimilarityConfig, store=store, out=sim, measures=("seqsim",), progress=False))
    run_retrieval(configure(RetrievalConfig, similarity=sim, out=str(tmp_path / "retrieval")))
    rows = (tmp_path / "retrieval" / "retrieval.csv").read_text().splitlines()
    assert len(rows) > 1 and {r.split(",")[0] for r in rows[1:]} <= set(LANGS)

    # decode without --model (the store names its model) through the job's library call, in this process: the
    # decoder jobs' refusals through their processes are test_decoder_jobs_refuse_a_speechllm_store_at_once's
    with pytest.raises(BabelgridError, match="speechllm"):
        run_decode(configure(DecodeConfig, store=store, out=str(tmp_path / "decode"), progress=False))
    assert not (tmp_path / "decode").exists()


OUTPUT_CASES = [("qwen2_audio", "projector", 25.0), ("voxtral", "projector", 12.5), ("qwen2_audio", "final", 25.0)]


@pytest.mark.parametrize(("kind", "output", "rate"), OUTPUT_CASES)
def test_tower_outputs_at_their_own_rate(kind, output, rate, clips, fleurs_dir, run_job, tmp_path, tmp_path_factory):
    """``--tower_output``: a store of the tower's final output or the projector's, at its own frame rate and width,
    equal to transformers' over the frames transformers counts valid; seqsim and retrieval read it; the layers'
    store and this one are told apart (a resume with the other output is refused)."""
    model, folder, store = encoded(kind, output, clips, run_job, tmp_path_factory)
    info = open_store(store).info
    assert info.frame_rate == rate and info.layers == (0,) and info.embed == (48 if output == "projector" else 32)
    assert output in info.layer_meaning or ("final output" in info.layer_meaning and output == "final")
    reader = open_store(store)
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            audio = load_audio(fleurs_dir / f"{stem}.ogg")
            mel, frames = features_for_audio(audio, 128)
            theirs = _theirs(kind, model, mel, split_windows(audio)[1])[output]
            pooled = kind != "voxtral"
            valid = np.where(frames >= 2, (frames - 2) // 2 + 1, 0) if pooled else frames
            valid = valid // (4 if output == "projector" and kind == "voxtral" else 1)
            want = np.concatenate([theirs[w, : valid[w]] for w in range(len(frames))])
            ours = reader.states(lang, uid, 0)
            assert ours.shape == want.shape
            assert np.abs(ours - want).max() <= RTOL_PEAK * np.abs(want).max(), f"{lang}/{uid}"
    sim = str(tmp_path / "sim")
    run_similarity(configure(SimilarityConfig, store=store, out=sim, measures=("seqsim",), progress=False))
    run_retrieval(configure(RetrievalConfig, similarity=sim, out=str(tmp_path / "retrieval")))
    assert len((tmp_path / "retrieval" / "retrieval.csv").read_text().splitlines()) > 1
    with pytest.raises(BabelgridError, match="output"):  # the default, the tower's layers, into this store
        run_encode(configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=store, progress=False))


def test_tower_output_refused_for_other_families(clips, run_job, tiny_model_dir, tmp_path):
    bad = run_job("encode", "--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--out",
                  str(tmp_path / "s"), "--tower_output", "projector", expect=None)  # fmt: skip
    assert bad.returncode != 0 and "whisper model" in bad.stdout + bad.stderr


def test_compare_puts_the_projector_past_the_tower(clips, run_job, tiny_model_dir, tmp_path, tmp_path_factory):
    """compare over a Whisper store, a Qwen2-Audio tower's layers and its projector's store of the same clips: every
    pair of stores is measured, and on the depth axis the projector sits one block past the tower's last layer."""
    from engine.pipelines.compare.config import CompareConfig
    from engine.pipelines.compare.run import run_compare

    stores = {"whisper": str(tmp_path / "whisper")}
    run_encode(configure(EncodeConfig, model=str(tiny_model_dir), dataset=f"folder:{clips}", out=stores["whisper"],
                         progress=False))  # fmt: skip
    stores["tower"] = encoded("qwen2_audio", "layers", clips, run_job, tmp_path_factory)[2]
    stores["projector"] = encoded("qwen2_audio", "projector", clips, run_job, tmp_path_factory)[2]
    out = tmp_path / "compare"
    # One measure, no null: the measures and their null are tested on their own (test_compare.py); here the depth
    # axis and the pairs (every measure, level and the null for three stores: 59 s of compiles in a suite run).
    run_compare(configure(CompareConfig, stores=tuple(stores.values()), names=tuple(stores), out=str(out),
                          measures=("cka",), levels=("utterance",), null_permutations=0, knn_k=1))  # fmt: skip
    rows = [r.split(",") for r in (out / "by_depth.csv").read_text().splitlines()[1:]]
    depth = {(r[0], int(r[1])): float(r[2]) for r in rows}
    assert depth["tower", 0] == 0 and depth["tower", 2] == pytest.approx(2 / 3)
    assert depth["projector", 0] == pytest.approx(1 + 1 / 3)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "layer_similarity.parquet").to_pandas()
    pairs = {tuple(sorted((a, b))) for a, b in zip(table.model_a, table.model_b, strict=True) if a != b}
    assert pairs == {("projector", "tower"), ("projector", "whisper"), ("tower", "whisper")}


def test_challenge_probe_probes_and_interp_read_the_projector(
    clips, run_job, whisper_words, tmp_path, tmp_path_factory
):
    """The other store-reading jobs on a Qwen2-Audio projector's store (25 frames/s, 48 wide; a tower's own layers
    are a 50/s store like wav2vec2's, whose jobs tests/jobs/test_families_jobs.py runs): challenge, probe, probes
    (samediff on Whisper-aligned words: the clips have 2 ids a language, too few for LID's folds) and interp, whose
    word cosines are recomputed from the stored states at the frames the words' seconds map to."""
    store = encoded("qwen2_audio", "projector", clips, run_job, tmp_path_factory)[2]
    check_store_jobs(store, whisper_words, tmp_path)


@pytest.mark.parametrize("job", ["decode", "align", "finetune"])
def test_decoder_jobs_refuse_a_speechllm_store_at_once(job, clips, run_job, tmp_path_factory, tmp_path):
    """A speech LLM's text decoder is out of scope: the jobs that need one refuse the store in one line, naming the
    family, before any work (no output folder, not even the lease)."""
    _, folder, store = encoded("qwen2_audio", "layers", clips, run_job, tmp_path_factory)
    out = tmp_path / "out"
    proc = run_job(job, "--store", store, "--model", str(folder), "--out", str(out), expect=None)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "speechllm model without one" in text and "Traceback" not in text, text
    assert not out.exists()
