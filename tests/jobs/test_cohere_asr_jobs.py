"""Cohere ASR through the jobs, on ``babelgrid random-model --kind cohere-asr``'s folder (NumPy-written, the NeMo names
``save_pretrained`` stores): encode writes every layer at 12.5 frames/s, equal, window by window, to transformers'
``CohereAsrForConditionalGeneration`` loaded from the same folder (its own reading of those names); seqsim, the probes
job's language ID and the heads job run on the store; decode's greedy transcripts from the last layer, through the
family's one decoder interface, equal ``generate``'s on the stored states. The real widths against transformers are
tests/models/fastconformer/test_cohere_asr.py's.

Clips: two languages (de, en; 3 FLEURS clips each, ids shared by position) cut to 2-3 s, and one of 31 s joined from
three clips, so that an utterance spans two 30 s windows. All in this process, through the jobs' library calls.

Bounds: the store's layers against transformers' encoder on the same (our) features of each window within 1e-5 of
each layer's peak (the features themselves against ``CohereAsrFeatureExtractor``'s: test_cohere_asr.py); decode's texts
equal
exactly, transformers' top-2 gap at every generated position at least ``GAP`` times our largest logit difference.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

from engine.data.audio import load_audio
from engine.errors import BabelgridError
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.canary import load_canary
from engine.models.interface import FASTCONFORMER_LAYERS
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.clips import write_clips
from tests.jobs.seqsim_probes_heads import heads_reads, lid_probe_reads, seqsim_reads

LANGS = ("de", "en")
PER_LANG = 3
LONG = ("en", 1)  # over 30 s: two windows
WINDOW = 30 * 16000
MAX_NEW = 8
GAP = 10
DECODED = "de"  # decode's language: its short clips are one batch of windows (one compile)


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    return write_clips(tmp_path_factory.mktemp("cohere-clips"), fleurs_dir, LANGS, PER_LANG, LONG)


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory):
    from engine.models.random_folder import write_random_folder

    root = tmp_path_factory.mktemp("cohere-jobs")
    write_random_folder("cohere-asr", root / "model")
    run_encode(configure(EncodeConfig, out=str(root / "store"), model=str(root / "model"), dataset=f"folder:{clips}",
                         progress=False))  # fmt: skip
    model = transformers.CohereAsrForConditionalGeneration.from_pretrained(root / "model").eval()
    return root, model


def _windows(clips, lang, i):
    audio = load_audio(clips / lang / f"s{i}.wav")
    return [audio[s : s + WINDOW] for s in range(0, len(audio), WINDOW)]


def _theirs(model, window):
    """transformers' layers (hooks on the subsampling and each block) of one window's valid frames alone, from our
    features (``features.log_mel``: checked against the extractor's in test_cohere_asr.py)."""
    mel, n = feats.log_mel(window, 128)
    x = {
        "input_features": torch.from_numpy(mel[None]),
        "attention_mask": torch.from_numpy(np.arange(len(mel)) < n)[None],
    }
    encoder, got = model.model.encoder, []
    hooks = [m.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
             for m in (encoder.subsampling, *encoder.layers)]  # fmt: skip
    with torch.no_grad():
        out = encoder(x["input_features"], attention_mask=x["attention_mask"])
    for h in hooks:
        h.remove()
    n = int(out.attention_mask.sum())
    return [g[0, :n].numpy() for g in got]


def test_encode_every_layer_equals_transformers(encoded, clips):
    root, model = encoded
    reader = open_store(str(root / "store"))
    info = reader.info
    assert info.family == "fastconformer" and info.frame_rate == 12.5 and info.embed == 64
    assert info.layers == (0, 1, 2) and info.layer_meaning == FASTCONFORMER_LAYERS
    for lang, i in [LONG, ("de", 0)]:
        windows = _windows(clips, lang, i)
        want = [np.concatenate(layer) for layer in zip(*(_theirs(model, w) for w in windows), strict=True)]
        assert len(windows) == (2 if (lang, i) == LONG else 1)
        assert int(reader.lengths(lang)[reader.utterance_index(lang, f"s{i}")]) == len(want[0])
        for layer, w in enumerate(want):
            got = reader.states(lang, f"s{i}", layer)
            err, peak = np.abs(got - w).max(), np.abs(w).max()
            assert err <= 1e-5 * peak, f"{lang}/s{i} layer {layer}: {err / peak:.2e} of the peak"


def test_seqsim_probes_and_heads_read_the_store(encoded, tmp_path):
    """seqsim's similarity store, the probes job's language ID (3 folds: 3 ids a language) and the heads job (every
    head of both blocks ablated over each language's first utterance) at the last block
    (tests/jobs/seqsim_probes_heads.py)."""
    root, _ = encoded
    seqsim_reads(root / "store", tmp_path / "sim", (2,), len(LANGS), PER_LANG)
    lid_probe_reads(root / "store", tmp_path / "probes", (2,), folds=3)
    heads_reads(root / "store", root / "model", tmp_path / "heads", 2)


def test_decode_reads_the_store(encoded, tmp_path):
    """decode's greedy transcripts at the last block (German: one window each) against ``generate`` given the stored
    states, the prompt ``CohereAsrProcessor``'s after the decoder start."""
    root, model = encoded
    store = str(root / "store")
    out = tmp_path / "decode"
    run_decode(configure(DecodeConfig, store=store, model=str(root / "model"), out=str(out), layers=(2,),
                         langs=(DECODED,), max_new_tokens=MAX_NEW, progress=False))  # fmt: skip
    table = pq.read_table(out / "hypotheses.parquet").to_pandas()
    assert len(table) == PER_LANG and set(table["layer"]) == {2} and set(table["language"]) == {DECODED}
    ours, reader = load_canary(root / "model"), open_store(store)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "model")
    worst, texts = np.inf, set()
    for lang, uid in ((DECODED, "s0"), (DECODED, "s1")):
        stored = reader.states(lang, uid, 2)
        prompt = torch.tensor([ours.prompt(lang, lang)])
        mask = torch.ones(1, len(stored), dtype=torch.bool)
        out_states = ParakeetEncoderModelOutput(last_hidden_state=torch.from_numpy(stored[None]), attention_mask=mask)
        with torch.no_grad():
            generated = model.generate(encoder_outputs=out_states, decoder_input_ids=prompt[:, 1:],
                                       max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)  # fmt: skip
            assert generated[0, : prompt.shape[1]].tolist() == prompt[0].tolist()  # generate adds the decoder start
            logits = model(encoder_outputs=out_states, decoder_input_ids=generated).logits[0].numpy()
        row = table[(table["language"] == lang) & (table["id"] == uid)]
        expected = tokenizer.decode(generated[0, prompt.shape[1] :], skip_special_tokens=True)
        assert row["hypothesis"].tolist() == [expected], (lang, row["hypothesis"].tolist(), expected)
        p = prompt.shape[1]
        mine = ours.logits(generated.numpy(), stored[None], [len(stored)])[0, p - 1 : -1]
        theirs = logits[p - 1 : -1]
        top2 = np.sort(theirs, -1)[:, -2:]
        worst = min(worst, float(((top2[:, 1] - top2[:, 0]) / np.abs(mine - theirs).max(-1)).min()))
        texts.add(expected)
    print(f"smallest top-2 gap / largest logit difference {worst:.0f}; texts {texts}")
    assert worst >= GAP and all(texts)
    refused = tmp_path / "translate"  # the decoder declares transcribe its only task: one line, nothing written
    english = tmp_path / "english.tsv"
    english.write_text("s0\tThe first sentence.\n")
    with pytest.raises(BabelgridError, match="has no prompt for it; it decodes transcribe"):
        run_decode(configure(DecodeConfig, store=store, model=str(root / "model"), out=str(refused),
                             tasks=("translate",), references=str(english), progress=False))  # fmt: skip
    assert not (refused / "parts").exists()
