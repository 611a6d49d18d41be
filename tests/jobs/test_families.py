"""Every job on every family: random-weight wav2vec2, HuBERT, w2v-BERT 2.0 and SeamlessM4T v2 folders written by
transformers' ``save_pretrained``, encoded from real FLEURS clips through ``python -m jobs.encode``, then seqsim and
retrieval on the store; interp on the wav2vec2 store with words timed in seconds; the stored layers against
transformers' ``hidden_states``; refusals of the decoder-side jobs.

Tiny widths (32) and two layers keep CI time small: parity at real widths is tests/models/'s. The bound is the
parity tests' (1e-5 of each layer's peak), here where the layers come back through the store (float32).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data.audio import load_audio
from engine.errors import CheckpointError
from engine.models import family as fam
from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.run import run_interp
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.similarity.config import SimilarityConfig
from engine.pipelines.similarity.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.stores.words import WORD_SCHEMA

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RTOL_PEAK = 1e-5
# Two translation pairs of the sample (its README): the same FLEURS sentence read in French and in Portuguese.
PAIRS = {"a": ("fleurs-fr-005", "fleurs-pt-002"), "b": ("fleurs-fr-000", "fleurs-pt-007")}
LANGS = ("fr", "pt")
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CONV = dict(conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
SEAMLESS_REST = dict(
    vocab_size=64, t2u_vocab_size=32, char_vocab_size=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
    decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=64,
    t2u_encoder_layers=1, t2u_decoder_layers=1, t2u_encoder_ffn_dim=32, t2u_decoder_ffn_dim=32,
    t2u_encoder_attention_heads=2, t2u_decoder_attention_heads=2, t2u_max_position_embeddings=64,
    t2u_variance_predictor_embed_dim=16, t2u_variance_predictor_hidden_dim=16, upsample_initial_channel=16,
    upsample_rates=(2,), upsample_kernel_sizes=(4,), resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
    unit_hifi_gan_vocab_size=16, unit_embed_dim=16, lang_embed_dim=4, spkr_embed_dim=4, vocoder_num_langs=2,
    vocoder_num_spkrs=2,
)  # fmt: skip


def _models():
    t = transformers
    return {
        "wav2vec2": lambda: t.Wav2Vec2Model(t.Wav2Vec2Config(**SMALL, **CONV)),
        "hubert": lambda: t.HubertModel(t.HubertConfig(**SMALL, **CONV)),
        "w2v-bert": lambda: t.Wav2Vec2BertModel(t.Wav2Vec2BertConfig(**SMALL)),
        "seamless": lambda: t.SeamlessM4Tv2Model(
            t.SeamlessM4Tv2Config(
                hidden_size=32, speech_encoder_layers=2, speech_encoder_attention_heads=2,
                speech_encoder_intermediate_size=64, **SEAMLESS_REST,
            )
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    """``<root>/<lang>/<id>.ogg``: the two translation pairs, ids shared across languages."""
    root = tmp_path_factory.mktemp("family-clips")
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            (root / lang).mkdir(exist_ok=True)
            (root / lang / f"{uid}.ogg").symlink_to(fleurs_dir / f"{stem}.ogg")
    return root


def _folder(name: str, tmp_path_factory):
    torch.manual_seed(0)
    model = _models()[name]().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms away from 1 and 0, so that a weight read from the wrong place shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return model, folder


def _reference(name: str, model, audio: np.ndarray) -> list[np.ndarray]:
    """transformers' layers of one utterance, each f32[frame, embed], in the store's order."""
    with torch.no_grad():
        if name in ("wav2vec2", "hubert"):
            x = transformers.Wav2Vec2FeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt")
            out = model(x["input_values"], output_hidden_states=True).hidden_states
        else:
            x = transformers.SeamlessM4TFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt")
            encoder = model.speech_encoder if name == "seamless" else model
            out = encoder(x["input_features"], output_hidden_states=True).hidden_states
            if name == "seamless":
                # The Seamless encoder's last entry is its adapter's output (8x fewer frames): not a stored layer.
                out = out[:-1]
    return [np.asarray(h[0]) for h in out]


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "w2v-bert", "seamless"])
def test_encode_seqsim_retrieval(name, clips, fleurs_dir, run_job, tmp_path_factory):
    model, folder = _folder(name, tmp_path_factory)
    root = tmp_path_factory.mktemp(f"{name}-run")
    store = str(root / "store")
    proc = run_job("encode", "--model", str(folder), "--dataset", f"folder:{clips}", "--out", store)
    assert "encoded 4 utterances" in proc.stdout, proc.stdout

    reader = open_store(store)
    family = {"wav2vec2": "wav2vec2", "hubert": "wav2vec2"}.get(name, "w2vbert")
    info = reader.info
    assert info.family == family and info.frame_rate == 50.0 and info.embed == 32
    assert info.layer_meaning == fam.FAMILIES[family].layer_meaning and info.layers == (0, 1, 2)
    manifest = json.loads((root / "store" / "manifest.json").read_text())
    assert manifest["family"] == family and manifest["dims"]["n_layers_out"] == 3

    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            audio = load_audio(fleurs_dir / f"{stem}.ogg")
            theirs = _reference(name, model, audio)
            n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
            assert n == len(theirs[0]) or (family == "w2vbert" and n == len(theirs[0]) - 1)
            for layer, ref in enumerate(theirs):
                ours = reader.states(lang, uid, layer)
                assert ours.shape == (n, 32), (layer, ours.shape)
                peak = np.abs(ref).max()
                err = np.abs(ours - ref[:n]).max()
                assert err <= RTOL_PEAK * peak, f"{name} {lang}/{uid} layer {layer}: {err / peak:.2e} of the peak"

    # A later run with another model on this store is refused, naming what differs.
    other = _folder("hubert" if name == "wav2vec2" else "wav2vec2", tmp_path_factory)[1]
    bad = run_job("encode", "--model", str(other), "--dataset", f"folder:{clips}", "--out", store, expect=None)
    assert bad.returncode != 0 and "checkpoint_sha256" in bad.stdout + bad.stderr

    sim = str(root / "sim")
    run_similarity(configure(SimilarityConfig, store=store, out=sim, measures=("seqsim",), progress=False))
    result = run_retrieval(configure(RetrievalConfig, similarity=sim, out=str(root / "retrieval")))
    assert result is not None
    rows = (root / "retrieval" / "retrieval.csv").read_text().splitlines()
    assert len(rows) > 1 and {r.split(",")[0] for r in rows[1:]} <= {"fr", "pt"}
