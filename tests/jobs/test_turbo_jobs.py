"""Whisper large-v3-turbo through the jobs, as a user runs them (subprocesses, flags): encode every layer of two real
FLEURS clips, decode from two layers (early exit from block 1 through ln_post, and the full depth), align the
transcripts' words with turbo's alignment heads. The model is the random-weight turbo folder of
``tests/models/whisper/turbo_model.py`` (turbo's config, v3 tokenizer and generation config; 2 encoder blocks), so
nothing in it names its size: whatever the jobs get right they take from the files.

Each output is compared with the library run here on the same audio or the same stored states; the library itself is
checked against transformers and openai-whisper in ``tests/models/whisper/test_turbo.py``.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pandas as pd
import pytest

from engine.data.audio import load_audio
from engine.models.whisper.decoding import DecodingOptions
from engine.models.whisper.timing import align_words, fill_padding, silence_states
from engine.pipelines.decode.hypotheses import read_hypotheses
from engine.stores.reader import open_store
from tests.jobs.manifests import write_fleurs_manifest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CLIPS = ("de-000", "en-000")  # one window each, two languages
LAYERS = (1, 3)  # block 1 (early exit, through ln_post) and L+1 = 3, the encoder output
MAX_NEW = 8


@pytest.fixture(scope="module")
def turbo(turbo_model_dir):
    from engine.models.whisper.loaded import load_whisper

    return load_whisper(turbo_model_dir)


@pytest.fixture(scope="module")
def runs(run_job, fleurs_dir, turbo_model_dir, tmp_path_factory) -> dict[str, pathlib.Path]:
    """The three jobs' outputs: ``store`` (encode, every layer), ``decoded`` (decode), ``words`` (align)."""
    root = tmp_path_factory.mktemp("turbo-jobs")
    manifest = write_fleurs_manifest(root / "clips.jsonl", fleurs_dir, CLIPS)
    out = {name: root / name for name in ("store", "decoded", "words")}
    model = ("--model", str(turbo_model_dir))
    one = ("--batch_size", "1")
    run_job("encode", *model, *one, "--dataset", f"manifest:{manifest}", "--out", str(out["store"]), "--allow_unpaired")
    run_job("decode", *model, *one, "--store", str(out["store"]), "--out", str(out["decoded"]),
            "--layers", ",".join(map(str, LAYERS)), "--max_new_tokens", str(MAX_NEW))  # fmt: skip
    run_job("align", *model, *one, "--store", str(out["store"]), "--out", str(out["words"]))
    return out


def clip_mel(turbo, fleurs_dir, name):
    return turbo.features(load_audio(fleurs_dir / f"fleurs-{name}.ogg"))


def test_encode_stores_every_layer(runs, turbo, fleurs_dir):
    """Layers 0 .. L+1 (4 for 2 blocks) of each clip, equal to the library's encoder on the valid frames. Tolerance
    1e-5 of the peak: the same program on the same window (batch 1 on both sides); measured 0."""
    reader = open_store(str(runs["store"]))
    errors = []
    for name in CLIPS:
        lang, uid = name.split("-")[0], f"fleurs-{name}"
        mel, valid = clip_mel(turbo, fleurs_dir, name)
        with jax.default_matmul_precision("highest"):
            states = np.asarray(turbo.encode(mel))
        assert len(states) == turbo.dims.n_audio_layer + 2 == 4
        for layer, ours in enumerate(states):
            stored = reader.states(lang, uid, layer)
            assert stored.shape == (valid[0], 1280), (name, layer)
            err = np.abs(ours[0, : valid[0]] - stored).max() / np.abs(stored).max()
            errors.append(err)
    print(f"\nturbo store against the library: max relative error {max(errors):.1e}")
    assert max(errors) < 1e-5, errors


def test_decode_at_two_layers_is_the_library(runs, turbo, fleurs_dir):
    """One hypothesis per clip and layer, forced to the clip's language (v3's language ids), each the library's
    greedy decoding from that layer of the audio."""
    hyps = read_hypotheses(str(runs["decoded"])).to_pandas()
    assert len(hyps) == len(CLIPS) * len(LAYERS)
    assert set(zip(hyps["layer"], hyps["ln_post"], strict=True)) == {(1, True), (3, True)}
    tok = turbo.tokenizer
    for name in CLIPS:
        lang, uid = name.split("-")[0], f"fleurs-{name}"
        mel, _ = clip_mel(turbo, fleurs_dir, name)
        for layer in LAYERS:
            options = DecodingOptions(language=lang, encoder_layer=layer, max_new_tokens=MAX_NEW)
            with jax.default_matmul_precision("highest"):
                tokens = turbo.transcribe(mel, options).tokens[0]
            row = hyps[(hyps["id"] == uid) & (hyps["layer"] == layer)]
            assert len(row) == 1 and row["language_token"].iloc[0] == lang
            assert row["hypothesis"].iloc[0] == tok.decode(tokens).strip(), (name, layer)
            assert row["n_tokens"].iloc[0] == len(tokens) == MAX_NEW  # random weights never end a sentence


def test_align_words_are_the_library_on_the_stored_states(runs, turbo, fleurs_dir):
    """Words of each clip's transcript with turbo's alignment heads (from the folder's generation config), equal to
    ``align_words`` on the stored final layer, the padding filled as the job fills it."""
    reader = open_store(str(runs["store"]))
    top = turbo.dims.n_audio_layer + 1
    for name in CLIPS:
        lang, uid = name.split("-")[0], f"fleurs-{name}"
        words = pd.read_parquet(runs["words"] / lang / "words.parquet")
        got = words[words.id == uid].sort_values("word_index")
        states = reader.states(lang, uid, top)
        xa = fill_padding(states[None], [len(states)], silence_states(turbo), 1500)
        text = (fleurs_dir / f"fleurs-{name}.txt").read_text(encoding="utf-8").strip()
        with jax.default_matmul_precision("highest"):
            expected = align_words(turbo, xa, [len(states)], [turbo.tokenizer.encode(" " + text)], [lang])[0]
        assert list(got.word) == [w.text for w in expected] and len(got) > 10, name
        np.testing.assert_allclose(got.start, [w.start for w in expected], atol=1e-6)
        np.testing.assert_allclose(got.end, [w.end for w in expected], atol=1e-6)
        np.testing.assert_allclose(got.probability, [w.probability for w in expected], rtol=1e-4, atol=1e-6)
        assert (np.diff(got.start) >= 0).all() and got.end.max() > 1.0
