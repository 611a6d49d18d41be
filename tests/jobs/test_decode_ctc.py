"""decode on a CTC model: the per-layer logit lens, through the jobs' flags, on real FLEURS clips.

A random ``Wav2Vec2ForCTC`` folder (``save_pretrained``, a character ``vocab.json``; width 32, 2 layers: parity at
real widths is tests/models/'s) encodes three clips of two languages; decode writes a hypothesis and WER/CER for
every stored layer, and its last layer's text equals transformers' greedy CTC decoding of ``Wav2Vec2ForCTC``'s own
logits, read with ``Wav2Vec2CTCTokenizer``.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from engine.data.audio import load_audio
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from tests.jobs.manifests import write_fleurs_manifest
from tests.models.wav2vec2.w2v_reference import write_vocab

CLIPS = ("en-000", "en-001", "de-000")
VOCAB = 40
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CONV = dict(conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


@pytest.fixture(scope="module", params=["post-ln", "pre-ln"])
def ctc_run(request, fleurs_dir, run_job, tmp_path_factory):
    """(torch model, folder, decode output) of a base-like (post-LN) and a large-like (pre-LN, final norm) model."""
    stable = request.param == "pre-ln"
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        **SMALL, **CONV, vocab_size=VOCAB, pad_token_id=0, do_stable_layer_norm=stable,
        feat_extract_norm="layer" if stable else "group",
    )  # fmt: skip
    model = transformers.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():  # a head whose argmax moves from frame to frame, so that the texts are not all blank
        model.lm_head.weight.normal_(0, 2.0)
    root = tmp_path_factory.mktemp(f"ctc-{request.param}")
    folder = root / "model"
    model.save_pretrained(folder)
    write_vocab(folder, VOCAB)
    manifest = write_fleurs_manifest(root / "clips.jsonl", fleurs_dir, CLIPS)
    store, out = root / "store", root / "decode"
    # encode in this process (the encode job's library call): the decode job, through its flags, is what is tested
    run_encode(configure(EncodeConfig, model=str(folder), dataset=f"manifest:{manifest}", out=str(store),
                         allow_unpaired=True, progress=False))  # fmt: skip
    proc = run_job("decode", "--store", str(store), "--model", str(folder), "--out", str(out))
    return model, folder, out, proc.stdout


def test_every_layer_is_scored(ctc_run):
    _, _, out, stdout = ctc_run
    scores = list(csv.DictReader((out / "scores.csv").open()))
    got = {(r["language"], int(r["layer"]), r["metric"], r["decoding"]) for r in scores}
    for lang in ("en", "de"):
        for layer in (0, 1, 2):
            assert {(lang, layer, "wer", "ctc"), (lang, layer, "cer", "ctc")} <= got, sorted(got)
    assert all(float(r["value"]) >= 0 for r in scores if r["metric"] in ("wer", "cer"))
    assert (out / "scores-ctc.png").is_file() and (out / "report.md").is_file()
    assert "decoded 9 utterance-parts" in stdout, stdout


def test_the_last_layer_is_transformers_greedy_ctc(ctc_run, fleurs_dir):
    model, folder, out, _ = ctc_run
    table = pq.read_table(out / "hypotheses.parquet").to_pandas()
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=model.config.feat_extract_norm == "layer")
    top = model.config.num_hidden_layers
    for clip in CLIPS:
        audio = load_audio(str(fleurs_dir / f"fleurs-{clip}.ogg"))
        with torch.no_grad():
            x = extractor(audio, sampling_rate=16000, return_tensors="pt")["input_values"]
            ids = model(x).logits.argmax(-1)
        expected = tokenizer.batch_decode(ids)[0]
        row = table[(table["id"] == f"fleurs-{clip}") & (table["layer"] == top)]
        assert len(row) == 1 and row["hypothesis"].iloc[0] == expected, (clip, row["hypothesis"].tolist(), expected)
        assert bool(row["ln_post"].iloc[0]) == model.config.do_stable_layer_norm
    assert np.isfinite(table["avg_logprob"]).all() and (table["decoding"] == "ctc").all()


def test_a_resume_keeps_every_part(ctc_run):
    """The rerun through the decode job's library call, in this process (the resume is the library's)."""
    model, folder, out, _ = ctc_run
    store = out.parent / "store"
    report = run_decode(configure(DecodeConfig, store=str(store), model=str(folder), out=str(out), progress=False))
    report = report.report()
    assert "decoded 0 utterance-parts" in report and "6 parts kept" in report, report


def test_a_beam_search_is_refused_for_a_ctc_head(ctc_run):
    """A CTC head is read by its best path: --decoding beam:N, which needs a text decoder, is refused in one line
    before anything is written (greedy, the default, is the best path)."""
    from engine.errors import BabelgridError
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode
    from engine.runtime.options import configure

    _, folder, out, _ = ctc_run
    beam = out.parent / "beam"
    with pytest.raises(BabelgridError, match=r"--decoding beam:3: the store's model has no text decoder to search"):
        run_decode(configure(DecodeConfig, store=str(out.parent / "store"), model=str(folder), out=str(beam),
                             decodings=("beam:3",), progress=False))  # fmt: skip
    assert not beam.exists()
