"""Every job on every family: random-weight wav2vec2, HuBERT, w2v-BERT 2.0 and SeamlessM4T v2 folders written by
transformers' ``save_pretrained``, encoded from real FLEURS clips (wav2vec2's through ``python -m jobs.encode``, the
others through the library call the job makes, in this process: the flags are the same for every family), then seqsim
and retrieval on the store; interp on the wav2vec2 store with words timed in seconds; the stored layers against
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
import torch  # noqa: E402
import transformers  # noqa: E402

from engine.data.audio import load_audio
from engine.errors import CheckpointError
from engine.models import family as fam
from engine.models.interface import FAMILY_NAMES
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
from engine.stores.utterances import StoreMismatchError
from engine.stores.words import WORD_SCHEMA

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


def family_clips(fleurs_dir: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """``<root>/<lang>/<id>.ogg`` and its transcript ``<id>.txt``: the two translation pairs, ids shared across
    languages (the transcripts feed challenge, probe and Whisper's align in tests/jobs/test_families_jobs.py)."""
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            (root / lang).mkdir(exist_ok=True)
            (root / lang / f"{uid}.ogg").symlink_to(fleurs_dir / f"{stem}.ogg")
            (root / lang / f"{uid}.txt").symlink_to(fleurs_dir / f"{stem}.txt")
    return root


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    return family_clips(fleurs_dir, tmp_path_factory.mktemp("family-clips"))


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


_ENCODED: dict[tuple[str, str], tuple] = {}


def encoded(name, clips, run_job, tmp_path_factory) -> tuple:
    """(torch model, its folder, the run's folder, the layer store) of family ``name``, encoded once per module (its
    ``clips``): wav2vec2's through the encode job's flags (a process), the others' through the library call the job
    makes, in this process (an encode job's start-up each). Keyed by the module's clips, whose folders go with the
    module (tests/conftest.py): a store cached for the session pointed at a folder another module had removed."""
    key = name, str(clips)
    if key not in _ENCODED:
        model, folder = _folder(name, tmp_path_factory)
        root = tmp_path_factory.mktemp(f"{name}-run")
        store = str(root / "store")
        if name == "wav2vec2":
            report = run_job("encode", "--model", str(folder), "--dataset", f"folder:{clips}", "--out", store).stdout
        else:
            config = configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=store, progress=False)
            report = run_encode(config).report()
        assert "encoded 4 utterances" in report, report
        _ENCODED[key] = model, folder, root, store
    return _ENCODED[key]


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "w2v-bert", "seamless"])
def test_encode_seqsim_retrieval(name, clips, fleurs_dir, run_job, tmp_path_factory):
    model, folder, root, store = encoded(name, clips, run_job, tmp_path_factory)

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
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256"):  # the encode job's library call
        run_encode(configure(EncodeConfig, model=str(other), dataset=f"folder:{clips}", out=store, progress=False))

    sim = str(root / "sim")
    run_similarity(configure(SimilarityConfig, store=store, out=sim, measures=("seqsim",), progress=False))
    result = run_retrieval(configure(RetrievalConfig, similarity=sim, out=str(root / "retrieval")))
    assert result is not None
    rows = (root / "retrieval" / "retrieval.csv").read_text().splitlines()
    assert len(rows) > 1 and {r.split(",")[0] for r in rows[1:]} <= {"fr", "pt"}


def test_interp_on_a_wav2vec2_store_with_words_in_seconds(clips, fleurs_dir, run_job, tmp_path_factory):
    """The cross-model use: words timed in seconds (as Whisper's align job writes them for the same clips) mapped onto
    a wav2vec2 store's frames by its frame rate. The times here are planted: each transcript word gets an equal share
    of its clip."""
    _, _, root, store = encoded("wav2vec2", clips, run_job, tmp_path_factory)
    reader = open_store(store)
    words = root / "words"
    for lang in LANGS:
        table = reader.utterances_table(lang).to_pydict()
        rows = {f.name: [] for f in WORD_SCHEMA}
        for u, uid, seconds in zip(table["utterance"], table["id"], table["duration_s"], strict=True):
            stem = PAIRS[uid][LANGS.index(lang)]
            tokens = (fleurs_dir / f"{stem}.txt").read_text(encoding="utf-8").split()[:12]
            step = seconds / len(tokens)
            for w, token in enumerate(tokens):
                for key, value in dict(
                    utterance=u, id=uid, recording=0, word_index=w, word=f" {token}", start=w * step,
                    end=(w + 1) * step, probability=0.9,
                ).items():  # fmt: skip
                    rows[key].append(value)
        (words / lang).mkdir(parents=True)
        pq.write_table(pa.Table.from_pydict(rows, schema=WORD_SCHEMA), words / lang / "words.parquet")
    out = root / "interp"
    summary = run_interp(
        configure(InterpConfig, store=store, words=str(words), out=str(out), layers=(1, 2), progress=False)
    )
    assert summary is not None
    pairs = pq.read_table(out / "fr__pt" / "pairs.parquet").to_pandas()
    assert len(pairs) and set(pairs["layer"]) == {1, 2} and set(pairs["id_a"]) <= {"a", "b"}


@pytest.mark.parametrize(("job", "lacks"), [("decode", "ctc"), ("align", "cross-attention"), ("finetune", "decoder")])
def test_decoder_jobs_refuse_other_families_at_once(job, lacks, clips, run_job, tmp_path_factory, tmp_path):
    _, folder, _, store = encoded("wav2vec2", clips, run_job, tmp_path_factory)
    out = tmp_path / "out"
    proc = run_job(job, "--store", store, "--model", str(folder), "--out", str(out), expect=None)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"a {lacks} head" in text and "wav2vec2 model without one" in text, text
    assert not out.exists()  # refused before any work: not even the lease
    if job == "align":
        assert "interp's --words" in text


def test_decode_without_model_on_a_ctc_store_is_the_same_one_line_refusal(clips, run_job, tmp_path_factory, tmp_path):
    # issue 49 item 10: without --model this raised TypeError in family._config_json instead of refusing.
    _, _, _, store = encoded("wav2vec2", clips, run_job, tmp_path_factory)
    out = tmp_path / "out"
    proc = run_job("decode", "--store", store, "--out", str(out), expect=None)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "a ctc head" in text and "whisper model without one" in text, text
    assert "Traceback" not in text and "TypeError" not in text, text
    assert not out.exists()


def test_family_detection(tmp_path, tiny_model_dir):
    assert fam.detect_family(None).name == "whisper" and fam.detect_family(tiny_model_dir).name == "whisper"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'.*supported model types"):
        fam.detect_family(tmp_path)
    with pytest.raises(CheckpointError, match="adapters exist only for wav2vec2"):
        fam.load_encoder(tiny_model_dir, adapter="fra")


def test_the_face_loads_any_family(tiny_model_dir, tmp_path_factory):
    """``engine.load_model`` goes through the registry: a wav2vec2 folder loads as its family's model, a Whisper
    folder as ``LoadedWhisper``, with the weights each family's loader reads."""
    import engine
    from engine.models.wav2vec2.loaded import LoadedWav2Vec2
    from engine.models.whisper.loaded import LoadedWhisper

    _, folder = _folder("wav2vec2", tmp_path_factory)
    model = engine.load_model(folder)
    assert isinstance(model, LoadedWav2Vec2) and model.checkpoint.sha256 == fam.load_encoder(folder).sha256
    whisper = engine.load_model(tiny_model_dir)
    assert isinstance(whisper, LoadedWhisper) and whisper.checkpoint.sha256 == fam.load_encoder(tiny_model_dir).sha256
    assert tuple(fam.FAMILIES) == FAMILY_NAMES  # the stores' list of families is the registry's
