"""The decode job end to end: on the tiny random model (outputs through the flags, resume, scores recomputed, bad
input, --language detect, --decode_as, empty and silent audio, empty hypotheses), and on real FLEURS clips with the
packaged whisper-base (decoding from the audio is decoding from the store's layer: same states on the valid frames,
same tokens as the library, the clip over 30 s included).

Runs that check the command line (its flags, its printed summary, its error messages) are subprocesses: absl flags are
process-global and other job modules define the same names. The others call the job's library function
(``run_decode``) in this process with the session's loaded model, so that they share its compiled programs.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile

from engine.figures import png_title
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.text_decoder import WhisperDecoder
from engine.pipelines.decode.config import DecodeConfig, DecodeError, references_path
from engine.pipelines.decode.hypotheses import read_hypotheses, read_scores
from engine.pipelines.decode.merge import score_rows
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.text import metrics as text_metrics
from tests.jobs.manifests import write_fleurs_manifest

TINY_CLIPS = ("en-000", "en-001", "de-009", "de-000")  # de-009 is 43 s: two windows
NO_TEXT = "fleurs-de-000"  # listed without a transcription: decoded, not scored (no_reference)
MISSING = "fleurs-de-404"  # listed, but its file does not exist: never encoded


def write_store(root, fleurs_dir, whisper, model, clips, layers, extra_rows=(), **settings) -> pathlib.Path:
    write_fleurs_manifest(root / "clips.jsonl", fleurs_dir, clips, no_text=NO_TEXT, extra_rows=extra_rows)
    out = root / "store"
    config = configure(
        EncodeConfig,
        out=str(out),
        model=model,
        dataset=f"manifest:{root / 'clips.jsonl'}",
        layers=layers,
        progress=False,
        allow_unpaired=True,  # FLEURS clips of different sentences: nothing cross-lingual is measured here
        **settings,
    )
    run_encode(config, encoder=WhisperEncoder(whisper))
    return out


def decode_here(whisper, store, out, **settings):
    """The job's library function in this process, on the loaded ``whisper`` (the store's model)."""
    config = configure(DecodeConfig, store=str(store), out=str(out), progress=False, **settings)
    return run_decode(config, decoder=WhisperDecoder(whisper))


def recomputed_scores(hyps: pd.DataFrame, codes: dict) -> dict:
    """scores.csv recomputed here with jiwer and sacrebleu on hypotheses.parquet; ``codes``: the Whisper code each
    store language's references are written in (translate references are English)."""
    import jiwer
    import sacrebleu

    out = {}
    scored = hyps[hyps["reference"].notna()]
    for key, g in scored.groupby(["language", "layer", "ln_post", "task", "decoding"]):
        target = "en" if key[3] == "translate" else codes[key[0]]
        norm = text_metrics.normalizer_for(target)
        refs, hs = [norm(r) for r in g["reference"]], [norm(h) for h in g["hypothesis"]]
        tok = {"zh": "zh", "ja": "ja-mecab"}.get(target, "13a")
        out[key + ("wer",)] = jiwer.wer(refs, hs)
        out[key + ("cer",)] = jiwer.cer(["".join(r.split()) for r in refs], ["".join(h.split()) for h in hs])
        out[key + ("bleu",)] = sacrebleu.corpus_bleu(hs, [refs], tokenize=tok).score
        out[key + ("chrf",)] = sacrebleu.corpus_chrf(hs, [refs]).score
    return out


def check_scores_are_the_libraries(out, codes: dict) -> None:
    hyps = read_hypotheses(str(out)).to_pandas()
    want = recomputed_scores(hyps, codes)
    got = {
        (r["language"], r["layer"], r["ln_post"] == "True", r["task"], r["decoding"], r["metric"]): r["value"]
        for r in read_scores(str(out))
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def skipped_rows(out) -> set[tuple[str, ...]]:
    lines = (pathlib.Path(out) / "skipped.csv").read_text().splitlines()
    assert lines[0] == "language,id,task,reason"
    return {tuple(line.split(",")) for line in lines[1:]}


def library_decode(whisper, mel, options) -> list[list[int]]:
    """Tokens per window of ``mel f32[window, n_mels, 3000]`` decoded by the library as the job calls it: one batch of
    8 windows, padded with copies of the first (``engine.pipelines.decode.unit.decode_windows``), so the inputs are
    the job's."""
    n = len(mel)
    chunk = np.concatenate([mel, np.repeat(mel[:1], 8 - n, axis=0)])
    res = whisper.transcribe(None, options, xa=whisper.audio_features(chunk, options))
    return res.tokens[:n], res.languages[:n]


# -- tiny random model -----------------------------------------------------------------------------------------------

TINY_CODES = {"en": "en", "de": "de"}


@pytest.fixture(scope="module")
def tiny_store(fleurs_dir, tiny_whisper, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("decode-tiny")
    missing = dict(id=MISSING, lang="de", path=str(root / "missing.ogg"), transcription="hallo")
    return write_store(root, fleurs_dir, tiny_whisper, str(tiny_model_dir), TINY_CLIPS, (1, 3), [missing])


TINY_FLAGS = ("--layers", "1,3", "--tasks", "transcribe,translate", "--decoding", "greedy,beam:2", "--ln_post", "both")
TINY_SETTINGS = dict(layers=(1, 3), tasks=("transcribe", "translate"), decodings=("greedy", "beam:2"), ln_post="both")


@pytest.fixture(scope="module")
def tiny_out(run_job, tiny_store, tiny_model_dir, tiny_whisper, tmp_path_factory):
    """The job through its flags, then the same settings again in this process (a resume: every part kept)."""
    out = tmp_path_factory.mktemp("decode-tiny-out") / "out"
    args = ("--store", str(tiny_store), "--out", str(out), "--model", str(tiny_model_dir), "--max_new_tokens", "5")
    # a status line every window batch: the bar moves by whole languages, minutes apart on real data
    first = run_job("decode", *args, *TINY_FLAGS, env={"BABELGRID_STATUS_SECONDS": "1e-9"})
    again = decode_here(tiny_whisper, tiny_store, out, model=str(tiny_model_dir), max_new_tokens=5, **TINY_SETTINGS)
    return out, first.stdout + first.stderr, again.report()


def test_tiny_outputs_through_flags(tiny_out):
    out, stdout, _ = tiny_out
    hyps = read_hypotheses(str(out)).to_pandas()
    assert list(hyps.columns) == [
        "language", "id", "recording", "utterance", "layer", "ln_post", "task", "decoding", "language_token",
        "hypothesis", "reference", "avg_logprob", "compression_ratio", "n_tokens",
    ]  # fmt: skip
    # 4 encoded utterances x (L1 ln_post on, L1 off, L3) x 2 tasks x 2 decodings
    assert len(hyps) == 4 * 3 * 2 * 2
    assert set(zip(hyps["layer"], hyps["ln_post"], strict=True)) == {(1, True), (1, False), (3, True)}
    assert (hyps["n_tokens"] <= 2 * 5).all()  # two windows for de-009, 5 tokens each at most
    assert set(hyps.loc[hyps["language"] == "de", "language_token"]) == {"de"}
    # translate references are the English transcription of the same id: none for German ids here
    assert hyps.loc[hyps["task"] == "translate", "reference"].isna().sum() == 2 * 3 * 2
    assert hyps.loc[(hyps["id"] == NO_TEXT) & (hyps["task"] == "transcribe"), "reference"].isna().all()
    skipped = skipped_rows(out)
    assert ("de", MISSING, "*", "audio_missing") in skipped and ("de", NO_TEXT, "transcribe", "no_reference") in skipped
    assert "skipped" in stdout and "(audio_missing)" in stdout and "(no_reference)" in stdout
    assert re.search(r"decode de: \d+ of \d+ windows, each decoded for \d+ parts", stdout), stdout
    for name in ("report.md", "scores-greedy.png", "scores-beam2.png", "decode.json"):
        assert (out / name).is_file(), name
    title = png_title((out / "scores-beam2.png").read_bytes())  # model, dataset, n
    assert "(beam:2) tiny-random; dataset manifest clips.jsonl; n = 1-2 utterances per language and layer" in title
    report = (out / "report.md").read_text()
    assert "| reference |" in report and "L1 (no ln_post)" in report
    assert json.loads((out / "decode.json").read_text())["exact"] is True


def test_tiny_resume_keeps_parts(tiny_out):
    _, _, again = tiny_out
    assert "decoded 0 utterance-parts" in again and "24 parts kept" in again, again


def test_tiny_resume_with_another_matmul_precision_is_refused(tiny_out, tiny_store, tiny_model_dir, tiny_whisper):
    """decode.json did not record --matmul_precision: a resume with `default` (TF32 on NVIDIA GPUs) was accepted and
    would have put hypotheses of two precisions in one folder (a probe's)."""
    from engine.pipelines.decode.config import DecodeError

    out = tiny_out[0]
    assert json.loads((out / "decode.json").read_text())["matmul_precision"] == "highest"
    with pytest.raises(DecodeError, match=r"matmul_precision: store has 'highest', this run 'default'"):
        decode_here(tiny_whisper, tiny_store, out, model=str(tiny_model_dir), max_new_tokens=5,
                    matmul_precision="default", **TINY_SETTINGS)  # fmt: skip


def test_tiny_scores_are_the_libraries(tiny_out):
    check_scores_are_the_libraries(tiny_out[0], TINY_CODES)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(layers=(2,)), "layers [2] are not in the layer store"),
        (dict(langs=("fr",)), "languages ['fr'] are not in the layer store"),
        (dict(decode_as=(("de", "xx"),)), "'xx' is not a language of this model"),
    ],
)
def test_tiny_bad_input_is_a_named_error(tiny_store, tiny_whisper, tmp_path, settings, message):
    with pytest.raises(DecodeError, match=re.escape(message)):
        decode_here(tiny_whisper, tiny_store, tmp_path / "o", **settings)


def test_ln_post_is_on_by_default():
    """``both`` decodes every layer below L+1 twice; the README's command and most studies want ``on``."""
    assert configure(DecodeConfig, store="s", out="o").ln_post == "on"


def test_tiny_bad_settings_are_named_errors():
    with pytest.raises(DecodeError, match=re.escape("beam:N")):
        configure(DecodeConfig, store="s", out="o", decodings=("beam:1",))
    with pytest.raises(DecodeError, match="is not a file"):
        references_path("/nonexistent.tsv")


def test_tiny_bad_flag_is_a_named_error_on_the_command_line(run_job, tiny_store, tiny_model_dir, tmp_path):
    args = ("--store", str(tiny_store), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir))
    proc = run_job("decode", *args, "--decode_as", "de=xx", expect=None)
    assert proc.returncode != 0 and "'xx' is not a language of this model" in proc.stderr, proc.stderr[-2000:]


def test_empty_hypothesis_is_scored_not_dropped():
    import jiwer

    refs, hyps = ["the cat sat", "a dog ran far"], ["the cat sat", ""]
    table = pa.table(
        dict(
            language=["en", "en"],
            layer=[2, 2],
            ln_post=[True, True],
            task=["transcribe"] * 2,
            decoding=["greedy"] * 2,
            hypothesis=hyps,
            reference=refs,
        )  # fmt: skip
    )
    scores = {s["metric"]: s for s in score_rows(table, {"en": "en"})}
    assert scores["wer"]["n"] == 2 and scores["wer"]["value"] == pytest.approx(jiwer.wer(refs, hyps)) == 4 / 7


# -- real clips, packaged whisper-base -------------------------------------------------------------------------------

REAL_CLIPS = ("de-009", "en-000")  # de-009 is 43 s: two windows; en-000 one, padded with a copy
REAL_CODES = {"de": "de", "en": "en"}
# Windows per model call, in the jobs and here: de-009's two windows, the one-window clip padded with a copy. The
# job's default of 8 padded each language to 8 windows, so that whisper-base encoded and decoded (to 96 tokens) four
# times the rows this test looks at: 64 s of the suite's slowest test, and not one more case covered.
REAL_BATCH = 2
# Tokens per window: layer 2's early-exit decode runs to the limit, so the limit sets most of this test's time (96
# took 70 s of CI time; 48, 33 s alone). The store's and the audio's tokens are compared as far as the job decoded:
# 32 tokens and two clips (es-001 was a third one-window clip, the same case as en-000): 31 s alone on 2 Intel Xeon
# cores, against 50 s with three clips and 48 tokens (2026-11-29).
REAL_TOKENS = 32


@pytest.mark.realdata
@pytest.mark.slow
def test_real_clips_audio_source_is_the_store_layer(fleurs_dir, base_whisper, tmp_path):
    """For k in {2, L+1}: the encoder recomputed from the audio gives the store's states on the valid frames, and
    decoding the window with the store's states on the valid frames (the audio's on the padding) gives the job's
    tokens, which are the library's; scores.csv is jiwer's and sacrebleu's on hypotheses.parquet. (Whisper's decoder
    reads the padding frames, so the job decodes from the audio: this is what ties its tokens to the store's states.)

    Every model call here has the job's shapes (batches of ``REAL_BATCH`` windows, one language per batch), so it
    reuses the job's compiled programs."""
    import jax.numpy as jnp

    from engine.data.audio import load_audio
    from engine.models.whisper.decoding import DecodingOptions
    from engine.stores.reader import open_store

    whisper = base_whisper
    top = whisper.dims.n_audio_layer + 1
    store = write_store(tmp_path, fleurs_dir, whisper, None, REAL_CLIPS, (2, top), batch_size=REAL_BATCH)
    out = tmp_path / "out"
    decode_here(whisper, store, out, layers=(2, top), ln_post="on", max_new_tokens=REAL_TOKENS, batch_size=REAL_BATCH)
    check_scores_are_the_libraries(out, REAL_CODES)
    hyps = read_hypotheses(str(out)).to_pandas()
    reader = open_store(str(store))
    tok = whisper.tokenizer
    for name in REAL_CLIPS:
        lang, uid = name.split("-")[0], f"fleurs-{name}"
        mel, valid = whisper.features(load_audio(fleurs_dir / f"{uid}.ogg"))
        n = len(mel)
        assert n == (2 if name == "de-009" else 1) and n <= REAL_BATCH
        batch = np.concatenate([mel, np.repeat(mel[:1], REAL_BATCH - n, axis=0)])  # as the job pads a language's
        raw_layers = np.asarray(whisper.encode(batch, (2, top)))  # before ln_post, as the store keeps layer 2
        for layer, raw in zip((2, top), raw_layers, strict=True):
            options = DecodingOptions(language=lang, encoder_layer=layer, max_new_tokens=REAL_TOKENS)
            stored = reader.states(lang, uid, layer)
            recomputed = np.concatenate([raw[w, : valid[w]] for w in range(n)])
            # Equal up to float32 summation order (the encode job batched other windows with these): measured
            # 1e-4 of the peak at most; 2^-11 is one float16 rounding (test_parity_ct2.py's bar).
            assert np.abs(recomputed - stored).max() / np.abs(stored).max() < 2.0**-11, (name, layer)
            # The store's states on the valid frames, the window's own padding frames after them.
            from_store = np.array(raw[:n])
            start = 0
            for w in range(n):
                from_store[w, : valid[w]] = stored[start : start + valid[w]]
                start += valid[w]
            if layer != top:
                from_store = np.asarray(whisper.model.encoder.ln_post(jnp.asarray(from_store)))
            # The job's decoder input (the audio's windows, then its padding copies) and the store's windows in its
            # place: two calls of the job's batch; rows are decoded independently.
            xa_audio = np.asarray(whisper.audio_features(batch, options))
            audio_tokens = whisper.transcribe(None, options, xa=jnp.asarray(xa_audio)).tokens[:n]
            xa_store = np.concatenate([from_store, xa_audio[n:]])
            store_tokens = whisper.transcribe(None, options, xa=jnp.asarray(xa_store)).tokens[:n]
            assert store_tokens == audio_tokens, (name, layer)
            joined = sum(audio_tokens, [])
            row = hyps[(hyps["id"] == uid) & (hyps["layer"] == layer)]
            assert len(row) == 1 and row["hypothesis"].iloc[0] == tok.decode(joined).strip(), (name, layer)
            assert row["n_tokens"].iloc[0] == len(joined)


# -- odd languages and odd audio on the tiny model: --decode_as, --language detect, empty and silent clips -----------

ODD_CODES = {"ky": "kk", "de": "de"}  # Whisper has no Kyrgyz: --decode_as ky=kk


@pytest.fixture(scope="module")
def odd_store(fleurs_dir, tiny_whisper, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    """A store without English: "ky" (a German clip, for a language Whisper lacks), German clips, a 0-byte file, a
    silent file (both refused by the encode job), and one clip encoded, then silenced (the decoder refuses it)."""
    root = tmp_path_factory.mktemp("decode-odd")
    (root / "empty.wav").write_bytes(b"")
    soundfile.write(root / "silent.wav", np.zeros(16000, np.float32), 16000)
    gone = root / "gone.ogg"
    gone.write_bytes((fleurs_dir / "fleurs-de-003.ogg").read_bytes())
    extra = [
        dict(id="fleurs-ky-001", lang="ky", path=str(fleurs_dir / "fleurs-de-001.ogg"), transcription="hallo welt"),
        dict(id="empty", lang="de", path=str(root / "empty.wav"), transcription="nichts"),
        dict(id="silent", lang="de", path=str(root / "silent.wav"), transcription="stille"),
        dict(id="gone", lang="de", path=str(gone), transcription="weg"),
    ]
    store = write_store(root, fleurs_dir, tiny_whisper, str(tiny_model_dir), ("de-002",), (3,), extra)
    soundfile.write(gone, np.zeros(16000, np.float32), 16000, format="OGG")
    return store


def test_empty_and_silent_audio_are_counted_skips_with_reasons(odd_store, tiny_whisper, tmp_path):
    """The encode job refuses empty and silent audio without recording why; the decode job names the reason."""
    out = tmp_path / "o"
    summary = decode_here(tiny_whisper, odd_store, out, langs=("de",), max_new_tokens=5)
    assert {
        ("de", "empty", "*", "empty_audio"),
        ("de", "silent", "*", "silent_audio"),
        ("de", "gone", "*", "silent_audio"),  # encoded, then silenced: refused when the decoder reads it
    } == skipped_rows(out)
    report = summary.report()
    assert "(empty_audio)" in report and "(silent_audio)" in report and summary.n_skipped == 3, report
    hyps = read_hypotheses(str(out)).to_pandas()
    assert list(hyps["id"]) == ["fleurs-de-002"]  # layer 3 is L+1: decoded once
    check_scores_are_the_libraries(out, ODD_CODES)


def test_language_whisper_lacks_is_skipped_or_decoded_as(odd_store, fleurs_dir, tiny_whisper, tmp_path):
    from engine.data.audio import load_audio
    from engine.models.whisper.decoding import DecodingOptions

    bare = decode_here(tiny_whisper, odd_store, tmp_path / "bare", langs=("ky",))
    assert skipped_rows(tmp_path / "bare") == {("ky", "fleurs-ky-001", "transcribe", "no_language_token")}
    assert bare.decoded == 0 and "(no_language_token)" in bare.report()

    out = tmp_path / "as"
    decode_here(tiny_whisper, odd_store, out, langs=("ky",), decode_as=(("ky", "kk"),), max_new_tokens=5)
    assert json.loads((out / "decode.json").read_text())["decode_as"] == {"ky": "kk"}
    hyps = read_hypotheses(str(out)).to_pandas()
    assert list(hyps["language_token"]) == ["kk"] and (out / "skipped.csv").read_text().count("\n") == 1
    mel, _ = tiny_whisper.features(load_audio(fleurs_dir / "fleurs-de-001.ogg"))
    tokens, languages = library_decode(
        tiny_whisper, mel, DecodingOptions(language="kk", max_new_tokens=5, encoder_layer=3)
    )
    assert languages == ["kk"] and hyps["hypothesis"].iloc[0] == tiny_whisper.tokenizer.decode(tokens[0]).strip()
    check_scores_are_the_libraries(out, ODD_CODES)


def test_translate_without_english_references_is_refused(odd_store, tiny_whisper, tmp_path):
    with pytest.raises(DecodeError, match="task translate needs English references"):
        decode_here(tiny_whisper, odd_store, tmp_path / "o", tasks=("translate",))


def test_language_detect_and_decode_as(odd_store, fleurs_dir, tiny_model_dir, tiny_whisper, tmp_path):
    """--language detect: each window's language is the library's detection, and the prompt carries it; references
    are still scored in the store language's (or --decode_as) normaliser."""
    from engine.data.audio import load_audio
    from engine.models.whisper.decoding import DecodingOptions

    out = tmp_path / "o"
    summary = decode_here(tiny_whisper, odd_store, out, model=str(tiny_model_dir), max_new_tokens=5,
                          language="detect", decode_as=(("ky", "kk"),))  # fmt: skip
    manifest = json.loads((out / "decode.json").read_text())
    assert manifest["language"] == "detect" and manifest["decode_as"] == {"ky": "kk"}
    hyps = read_hypotheses(str(out)).to_pandas().set_index("id")
    assert sorted(hyps.index) == ["fleurs-de-002", "fleurs-ky-001"], summary.report()
    for uid, clip in (("fleurs-de-002", "de-002"), ("fleurs-ky-001", "de-001")):
        mel, _ = tiny_whisper.features(load_audio(fleurs_dir / f"fleurs-{clip}.ogg"))
        tokens, languages = library_decode(
            tiny_whisper, mel, DecodingOptions(language=None, max_new_tokens=5, encoder_layer=3)
        )
        assert hyps.loc[uid, "language_token"] == languages[0], uid
        assert hyps.loc[uid, "hypothesis"] == tiny_whisper.tokenizer.decode(tokens[0]).strip(), uid
    check_scores_are_the_libraries(out, ODD_CODES)
