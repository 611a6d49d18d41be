"""The decode job end to end through its flags: on the tiny random model (outputs, resume, scores recomputed, bad
input), and on real FLEURS clips with the packaged whisper-base (decoding from the audio is decoding from the store's
layer: same states on the valid frames, same tokens as the library, the clip over 30 s included).

The job runs in subprocesses (absl flags are process-global and other job modules define the same names).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from engine.analysis import text_metrics
from engine.encode import EncodeConfig, run_encode
from engine.stores.hypotheses import read_hypotheses, read_scores

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_CLIPS = ("en-000", "en-001", "de-009", "de-000")  # de-009 is 43 s: two windows
NO_TEXT = "fleurs-de-000"  # listed without a transcription: decoded, not scored (no_reference)
MISSING = "fleurs-de-404"  # listed, but its file does not exist: never encoded


def write_store(root, fleurs_dir, whisper, model, clips, layers, extra_rows=()) -> pathlib.Path:
    lines = []
    for name in clips:
        path = fleurs_dir / f"fleurs-{name}.ogg"
        row = dict(id=path.stem, lang=name.split("-")[0], path=str(path))
        if path.stem != NO_TEXT:
            row["transcription"] = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        lines.append(json.dumps(row))
    lines += [json.dumps(r) for r in extra_rows]
    (root / "clips.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "store"
    config = EncodeConfig(
        out=str(out), model=model, dataset=f"manifest:{root / 'clips.jsonl'}", layers=layers, progress=False
    )
    run_encode(config, whisper=whisper)
    return out


def run_job(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.decode", "--progress=false", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def recomputed_scores(hyps: pd.DataFrame) -> dict:
    """scores.csv recomputed here with jiwer and sacrebleu on hypotheses.parquet."""
    import jiwer
    import sacrebleu

    out = {}
    scored = hyps[hyps["reference"].notna()]
    for key, g in scored.groupby(["language", "layer", "ln_post", "task", "decoding"]):
        target = "en" if key[3] == "translate" else g["language_token"].iloc[0]
        norm = text_metrics.normalizer_for(target)
        refs, hs = [norm(r) for r in g["reference"]], [norm(h) for h in g["hypothesis"]]
        tok = {"zh": "zh", "ja": "ja-mecab"}.get(target, "13a")
        out[key + ("wer",)] = jiwer.wer(refs, hs)
        out[key + ("cer",)] = jiwer.cer(["".join(r.split()) for r in refs], ["".join(h.split()) for h in hs])
        out[key + ("bleu",)] = sacrebleu.corpus_bleu(hs, [refs], tokenize=tok).score
        out[key + ("chrf",)] = sacrebleu.corpus_chrf(hs, [refs]).score
    return out


def check_scores_are_the_libraries(out) -> None:
    hyps = read_hypotheses(str(out)).to_pandas()
    want = recomputed_scores(hyps)
    got = {
        (r["language"], r["layer"], r["ln_post"] == "True", r["task"], r["decoding"], r["metric"]): r["value"]
        for r in read_scores(str(out))
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


# -- tiny random model -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_store(fleurs_dir, tiny_whisper, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("decode-tiny")
    missing = dict(id=MISSING, lang="de", path=str(root / "missing.ogg"), transcription="hallo")
    return write_store(root, fleurs_dir, tiny_whisper, str(tiny_model_dir), TINY_CLIPS, (1, 3), [missing])


TINY_FLAGS = ("--layers", "1,3", "--tasks", "transcribe,translate", "--decoding", "greedy,beam:2")


@pytest.fixture(scope="module")
def tiny_out(tiny_store, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("decode-tiny-out") / "out"
    args = ("--store", str(tiny_store), "--out", str(out), "--model", str(tiny_model_dir), "--max_new_tokens", "5")
    first = run_job(*args, *TINY_FLAGS)
    again = run_job(*args, *TINY_FLAGS)
    return out, first.stdout, again.stdout


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
    skipped = (out / "skipped.csv").read_text()
    assert f"de,{MISSING},*,not_encoded" in skipped and f"de,{NO_TEXT},transcribe,no_reference" in skipped
    assert "skipped" in stdout and "(not_encoded)" in stdout and "(no_reference)" in stdout
    for name in ("report.md", "scores-greedy.png", "scores-beam2.png", "decode.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| reference |" in report and "L1 (no ln_post)" in report
    assert json.loads((out / "decode.json").read_text())["exact"] is True


def test_tiny_resume_keeps_parts(tiny_out):
    _, _, again = tiny_out
    assert "decoded 0 utterance-parts" in again and "24 parts kept" in again, again


def test_tiny_scores_are_the_libraries(tiny_out):
    check_scores_are_the_libraries(tiny_out[0])


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--layers", "2"), "layers [2] are not in the layer store"),
        (("--decode_as", "de=xx"), "'xx' is not a language of this model"),
        (("--langs", "de", "--tasks", "translate", "--references", "/nonexistent.tsv"), "is not a file"),
        (("--decoding", "beam:1"), "beam:N"),
    ],
)
def test_tiny_bad_input_is_a_named_error(tiny_store, tiny_model_dir, tmp_path, flags, message):
    args = ("--store", str(tiny_store), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir))
    proc = run_job(*args, *flags, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def test_translate_without_english_references_is_refused(fleurs_dir, tiny_whisper, tiny_model_dir, tmp_path):
    store = write_store(tmp_path, fleurs_dir, tiny_whisper, str(tiny_model_dir), ("de-001",), (3,))
    args = ("--store", str(store), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir))
    proc = run_job(*args, "--tasks", "translate", check=False)
    assert proc.returncode != 0 and "task translate needs English references" in proc.stderr, proc.stderr[-2000:]


# -- real clips, packaged whisper-base -------------------------------------------------------------------------------

REAL_CLIPS = ("de-009", "en-000", "es-001")  # de-009 is 43 s: two windows


@pytest.mark.realdata
@pytest.mark.slow
def test_real_clips_audio_source_is_the_store_layer(fleurs_dir, tmp_path):
    """For k in {2, L+1}: the encoder recomputed from the audio gives the store's states on the valid frames, and
    decoding the window with the store's states on the valid frames (the audio's on the padding) gives the job's
    tokens, which are the library's; scores.csv is jiwer's and sacrebleu's on hypotheses.parquet."""
    import jax.numpy as jnp

    from engine.data.audio import load_audio
    from engine.stores.reader import open_store
    from engine.whisper.decoding import DecodingOptions
    from engine.whisper.loaded import load_whisper

    whisper = load_whisper()
    top = whisper.dims.n_audio_layer + 1
    store = write_store(tmp_path, fleurs_dir, whisper, None, REAL_CLIPS, (2, top))
    out = tmp_path / "out"
    run_job(
        "--store", str(store), "--out", str(out), "--layers", f"2,{top}", "--ln_post", "on", "--max_new_tokens", "96"
    )
    check_scores_are_the_libraries(out)
    hyps = read_hypotheses(str(out)).to_pandas()
    reader = open_store(str(store))
    tok = whisper.tokenizer
    for name in REAL_CLIPS:
        lang, uid = name.split("-")[0], f"fleurs-{name}"
        mel, valid = whisper.features(load_audio(fleurs_dir / f"{uid}.ogg"))
        assert name != "de-009" or len(mel) == 2
        for layer in (2, top):
            options = DecodingOptions(language=lang, encoder_layer=layer, max_new_tokens=96)
            xa = np.asarray(whisper.audio_features(mel, options))
            stored = reader.states(lang, uid, layer)
            raw = np.asarray(whisper.encode(mel, (layer,))[0])  # before ln_post, as the store keeps layer 2
            recomputed = np.concatenate([raw[w, : valid[w]] for w in range(len(mel))])
            # Equal up to float32 summation order (the encode job batched other windows with these): measured
            # 1e-4 of the peak at most; 2^-11 is one float16 rounding (test_parity_ct2.py's bar).
            assert np.abs(recomputed - stored).max() / np.abs(stored).max() < 2.0**-11, (name, layer)
            # The store's states on the valid frames, the window's own padding frames after them.
            from_store = np.array(raw)
            start = 0
            for w in range(len(mel)):
                from_store[w, : valid[w]] = stored[start : start + valid[w]]
                start += valid[w]
            if layer != top:
                from_store = np.asarray(whisper.model.encoder.ln_post(jnp.asarray(from_store)))
            store_tokens = sum(whisper.transcribe(None, options, xa=jnp.asarray(from_store)).tokens, [])
            audio_tokens = sum(whisper.transcribe(None, options, xa=jnp.asarray(xa)).tokens, [])
            assert store_tokens == audio_tokens, (name, layer)
            row = hyps[(hyps["id"] == uid) & (hyps["layer"] == layer)]
            assert len(row) == 1 and row["hypothesis"].iloc[0] == tok.decode(audio_tokens).strip(), (name, layer)
            assert row["n_tokens"].iloc[0] == len(audio_tokens)
