"""decode on a Canary store through the jobs: early exit at two layers, transcription and translation to English,
against transformers' decoder fed the same layer of its own encoder (issue 47's "decode at two layers of Canary").

Model: a random ``CanaryForConditionalGeneration`` at small widths (32 wide, 2 encoder blocks, 2 decoder layers of 2
heads of 16, 256 tokens: parity at real widths is tests/models/fastconformer/test_canary.py's) with
tests/models/fastconformer/canary_folder.py's tokenizer and weights. Clips: tests/jobs/test_families.py's four real
FLEURS clips (fr, pt), encoded by ``jobs.encode``; ``jobs.decode --layers 1,2 --tasks transcribe,translate --decoding
greedy,beam:2`` with English references from
``--references`` (the store has no English). Reference, per clip, layer k and task: transformers' encoder on
``ParakeetFeatureExtractor``'s features, ``generate`` with ``encoder_outputs`` holding ``hidden_states[k]`` and the
``decoder_input_ids`` of ``CanaryProcessor.apply_transcription_request(source_language=lang,
target_language=lang or "en")``, read back with ``batch_decode(skip_special_tokens=True)``.

Bound: texts and token counts equal exactly. The store's states differ from transformers' by up to about 1e-6 of their
peak (tests/jobs/test_fastconformer_jobs.py), so exactness needs no near-tie: at every generated position (eos
included) transformers' top-2 gap, teacher-forced on its own tokens, must be ``GAP`` times the largest difference of
our logits on the stored states from its logits (2x guarantees the same argmax); the smallest ratio is printed
(measured 38.9). 15 of the 16 greedy decodes run to ``MAX_NEW`` tokens, one ends at eos after 13. Beam rows: the
text of ``generate(num_beams=2)``; our best finished beam's score (``LoadedCanary.beam`` on the stored states) must
beat the second by ``GAP`` times its difference from transformers' ``sequences_scores`` (measured 4640).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

from engine.data.audio import load_audio
from engine.errors import BabelgridError
from engine.models.family import load_encoder
from engine.models.fastconformer.canary import load_canary
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.stages.early_exit import cut_windows
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.test_families import LANGS, PAIRS, family_clips
from tests.models.fastconformer import canary_folder as cf

ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               subsampling_conv_channels=8)  # fmt: skip
DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
               intermediate_size=64, head_dim=16)  # fmt: skip
PIECES = 256
MAX_NEW = 24
LAYERS = (1, 2)
GAP = 10
BEAMS = 2
CODES = {"fr": "fr", "pt": "pt"}


@pytest.fixture(scope="module")
def canary_run(fleurs_dir, run_job, tmp_path_factory):
    """(torch model, processor, run folder) after encode and decode."""
    root = tmp_path_factory.mktemp("canary-decode")
    folder = root / "model"
    folder.mkdir()
    tokenizer = cf.write_tokenizer(folder, fleurs_dir, PIECES)
    model = cf.canary(ENCODER, DECODER, PIECES)
    model.save_pretrained(folder)
    (root / "clips").mkdir()
    clips = family_clips(fleurs_dir, root / "clips")
    references = root / "english.tsv"
    references.write_text("a\tThe first sentence in English.\nb\tAnd the second one.\n")
    store, out = root / "store", root / "decode"
    # encode in this process (the encode job's library call; its flags on a Canary folder: test_fastconformer_jobs.py)
    run_encode(configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=str(store), progress=False))
    proc = run_job(
        "decode", "--store", str(store), "--model", str(folder), "--out", str(out), "--layers", "1,2",
        "--tasks", "transcribe,translate", "--references", str(references), "--max_new_tokens", str(MAX_NEW),
        "--decoding", f"greedy,beam:{BEAMS}",
    )  # fmt: skip
    assert "decoded 32 utterance-parts" in proc.stdout, proc.stdout
    return model, cf.processor(tokenizer), root


def test_two_layers_transcribe_and_translate_equal_transformers(canary_run, fleurs_dir):
    model, processor, root = canary_run
    table = pq.read_table(root / "decode" / "hypotheses.parquet").to_pandas()
    assert len(table) == 32 and set(table["layer"]) == set(LAYERS) and (~table["ln_post"]).all()
    assert set(table["task"]) == {"transcribe", "translate"} and set(table["decoding"]) == {"greedy", f"beam:{BEAMS}"}
    ours, reader = load_canary(root / "model"), open_store(str(root / "store"))
    # Our side reads every clip's stored states padded to the longest clip's frames (``valid`` masks the rest, as in
    # the job's batches): one compiled beam search and teacher-forced program for the four clips instead of one per
    # clip's length (those two took 19 s of the test's 24 s, most of it compiling; the test takes 6.5 s now).
    frames = max(int(reader.lengths(lang).max()) for lang in LANGS)
    worst, worst_beam, tokens, lengths = np.inf, np.inf, set(), []
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            audio = load_audio(fleurs_dir / f"{stem}.ogg")
            x = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
            with torch.no_grad():
                encoded = model.model.encoder(
                    x["input_features"], attention_mask=x["attention_mask"], output_hidden_states=True
                )
            for layer in LAYERS:
                states = encoded.hidden_states[layer]
                stored = reader.states(lang, uid, layer)
                stored = (np.pad(stored, ((0, frames - len(stored)), (0, 0))), len(stored))
                for task, target in (("transcribe", CODES[lang]), ("translate", "en")):
                    prompt = processor.apply_transcription_request(
                        audio, source_language=CODES[lang], target_language=target
                    )["decoder_input_ids"]
                    out = ParakeetEncoderModelOutput(last_hidden_state=states, attention_mask=encoded.attention_mask)
                    with torch.no_grad():
                        generated = model.generate(encoder_outputs=out, decoder_input_ids=prompt,
                                                   max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)  # fmt: skip
                    new = generated[0, prompt.shape[1] :].tolist()
                    text = new[: new.index(cf.EOS)] if cf.EOS in new else new
                    expected = processor.batch_decode(generated, skip_special_tokens=True)[0]
                    row = table[(table["language"] == lang) & (table["id"] == uid) & (table["layer"] == layer)
                                & (table["task"] == task) & (table["decoding"] == "greedy")]  # fmt: skip
                    assert len(row) == 1, (lang, uid, layer, task)
                    assert row["hypothesis"].iloc[0] == expected, (lang, uid, layer, task, row["hypothesis"].iloc[0])
                    assert int(row["n_tokens"].iloc[0]) == len(text) and row["language_token"].iloc[0] == CODES[lang]
                    worst = min(worst, _margin(model, ours, out, stored, generated, prompt.shape[1], len(text)))
                    tokens.update(text)
                    lengths.append(len(text))
                    beam_row = table[(table["language"] == lang) & (table["id"] == uid) & (table["layer"] == layer)
                                     & (table["task"] == task) & (table["decoding"] == f"beam:{BEAMS}")]  # fmt: skip
                    worst_beam = min(worst_beam, _beam(model, processor, ours, out, stored, prompt, beam_row))
    print(f"smallest top-2 gap / largest logit difference: {worst:.1f}; lengths {lengths}")
    print(f"beam: smallest gap from the best to the second finished beam / score difference: {worst_beam:.1f}")
    assert worst >= GAP and worst_beam >= GAP, (worst, worst_beam)
    assert len(tokens) > 10 and max(lengths) > 0, (tokens, lengths)  # non-trivial: many distinct tokens
    scores = (root / "decode" / "scores.csv").read_text()
    assert "translate" in scores and "transcribe" in scores


def _beam(model, processor, ours, out, stored, prompt, row) -> float:
    """The beam row's text is ``generate(num_beams=BEAMS)``'s; returns the gap from our best finished beam's score to
    the second's, in units of the best's difference from transformers' ``sequences_scores``. ``stored``: (the stored
    states padded to the test's frames, their valid frames)."""
    with torch.no_grad():
        ref = model.generate(encoder_outputs=out, decoder_input_ids=prompt, max_new_tokens=MAX_NEW, num_beams=BEAMS,
                             output_scores=True, return_dict_in_generate=True)  # fmt: skip
    assert (
        len(row) == 1
        and row["hypothesis"].iloc[0] == processor.batch_decode(ref.sequences, skip_special_tokens=True)[0]
    )
    states, valid = stored
    _, _, scores = ours.beam(states[None], [valid], prompt[0].numpy(), BEAMS, MAX_NEW)
    err = abs(float(scores[0, 0]) - float(ref.sequences_scores[0]))
    return float((scores[0, 0] - scores[0, 1]) / max(err, 1e-9))


def _margin(model, ours, out, stored, generated, p: int, n: int) -> float:
    """Transformers' smallest top-2 gap over the generated positions (eos included), in units of the largest
    difference of our logits on the stored states (``stored``, as ``_beam`` takes them) from its logits."""
    seq = generated[:, : min(p + n + 1, generated.shape[1])]
    with torch.no_grad():
        theirs = model(encoder_outputs=out, decoder_input_ids=seq).logits[0, p - 1 : -1].numpy()
    # ours on the tokens padded to the prompt and MAX_NEW + 1 (one shape for every row; causal: the padding cannot
    # reach the positions compared)
    states, valid = stored
    tokens = np.pad(seq.numpy(), ((0, 0), (0, p + MAX_NEW + 1 - seq.shape[1])), constant_values=cf.EOS)
    mine = ours.logits(tokens, states[None], [valid])[0, p - 1 : seq.shape[1] - 1]
    top2 = np.sort(theirs, -1)[:, -2:]
    assert np.array_equal(mine.argmax(-1), theirs.argmax(-1))
    return float(((top2[:, 1] - top2[:, 0]) / np.abs(mine - theirs).max(-1)).min())


def test_refusals(canary_run, tmp_path):
    """One line each (a ``BabelgridError``: the job prints its message, no traceback), before any part is written:
    --patience (transformers' beam search has none), a language Canary has no token for, and translate from English
    (here French decoded as English, via --decode_as). Through the decode job's library call, in this process: the
    refusals are the library's, and the flags these settings come from are the ones ``canary_run``'s job took."""
    _, _, root = canary_run

    def refused(out, match, **settings):
        config = configure(DecodeConfig, store=str(root / "store"), model=str(root / "model"), out=str(out),
                           progress=False, **settings)  # fmt: skip
        with pytest.raises(BabelgridError, match=match):
            run_decode(config)
        assert not (out / "parts").exists()

    refused(tmp_path / "beam", r"--patience.*has no such option|has no such option.*--patience", patience=2.0)
    refused(tmp_path / "ja", r"has no <\|ja\|> token", decode_as=("fr=ja",))
    refused(tmp_path / "en", r"language 'fr'.*is English", decode_as=("fr=en",), tasks=("translate",),
            references=str(root / "english.tsv"))  # fmt: skip


def test_long_audio_splits_into_the_encoders_windows(canary_run):
    """Audio over 30 s: the store holds its windows' frames end to end, each full window ``window_frames()`` of them
    (what the encoder gives a 30 s window), and the decode path cuts them back there before decoding each window."""
    _, _, root = canary_run
    ours = load_canary(root / "model")
    encoder = load_encoder(str(root / "model"))
    per_window = ours.window_frames()
    assert encoder.expected_frames(30 * 16000, "window") == (per_window, 1)
    samples = 2 * 30 * 16000 + 16000  # two full windows and one second
    frames, windows = encoder.expected_frames(samples, "window")
    states = np.arange(frames, dtype=np.float32)[:, None]
    cut = cut_windows(states, frames, per_window)
    assert windows == 3 and [len(w) for w in cut] == [per_window, per_window, frames - 2 * per_window]
    assert np.array_equal(np.concatenate(cut), states)


def test_sae_early_exit_reads_the_stored_layer_as_the_decode_job(canary_run, tmp_path):
    """The sae job's early exit on a Canary store (a decoder that masks the padding, so the store's states cut into
    windows are its memory): the stored column is the decode job's greedy transcript from layer 1, utterance by
    utterance, and the reconstructed column is Canary's decoder on the exported SAE's reconstruction of them."""
    from engine.models.family import FAMILIES
    from engine.models.interface import Search
    from engine.pipelines.decode.hypotheses import read_hypotheses
    from engine.pipelines.sae.config import SaeConfig
    from engine.pipelines.sae.evaluate import apply
    from engine.pipelines.sae.export import open_sae
    from engine.pipelines.sae.run import run_sae
    from engine.pipelines.stages.early_exit import search_windows
    from engine.runtime.options import configure

    _, _, root = canary_run
    out = tmp_path / "sae"
    run_sae(configure(SaeConfig, store=str(root / "store"), out=str(out), model=str(root / "model"), layers=(1,),
                      epochs=1, batch_size=64, expansion=2, k=4, warmup=1, eval_utterances=2, activations=0,
                      decode_utterances=2, max_new_tokens=MAX_NEW, decode_batch=8, progress=False))  # fmt: skip
    ours = pq.read_table(out / "layer-1" / "early_exit.parquet").to_pandas()
    theirs = read_hypotheses(str(root / "decode")).to_pandas()
    theirs = theirs[(theirs.layer == 1) & (theirs.task == "transcribe") & (theirs.decoding == "greedy")]
    assert len(ours) == 2 * len(LANGS)
    store = open_store(str(root / "store"))
    weights, cfg = open_sae(out / "layer-1")
    decoder = FAMILIES["fastconformer"].decoder(str(root / "model"))
    for lang in LANGS:
        mine = ours[ours.language == lang]
        for _, row in mine.iterrows():
            match = theirs[(theirs.language == lang) & (theirs.id == row.id)]
            assert match.hypothesis.tolist() == [row.hypothesis], (lang, row.id)
        lengths = store.lengths(lang)
        states, _ = store.language_layer(lang, 1, np.arange(2), np.float32, frames=int(lengths[:2].max()))
        windows = [w for u in range(2) for w in cut_windows(states[u], int(lengths[u]), decoder.window_frames)]
        assert len(windows) == 2  # one window each: the tokens are the utterance's
        rebuilt = [apply(weights, 1.0, cfg["k"], w)[0] for w in windows]
        ids, _, _ = search_windows(decoder, rebuilt, "transcribe", CODES[lang], Search(1, MAX_NEW, 1.0, 1.0), 8)
        assert mine.hypothesis_reconstructed.tolist() == [decoder.text(i) for i in ids], lang
