"""Bad input, concurrent runs and unwritable outputs: no single bad input stops a batch, no resume mixes settings, no
second writer, nothing created before a refusal.

What a job process says (its exit status, its one-line error, its summary) runs through the jobs' flags in
subprocesses; runs whose outcome is the library's (a resume refused for its settings, a lease taken over, the align
job's skips) run through the library calls the jobs make, in this process, which spares a job's start-up each.

The kill-and-resume fault injection (SIGKILL at chosen commits, resume, bitwise equal) is in test_encode.py.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.pipelines.align.config import AlignConfig
from engine.pipelines.align.run import run_align
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.lease import LEASE, StoreBusyError, WriterLease
from engine.runtime.options import configure
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.utterances import StoreMismatchError
from engine.stores.words import read_words
from tests.waits import patient


def tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> pathlib.Path:
    """<root>/en/a.wav (+ a.txt), b.wav (1e20 amplitude, float WAV), c.wav; <root>/xx/a.wav (a language Whisper
    lacks)."""
    root = tmp_path_factory.mktemp("clips")
    for lang, names in (("en", "abc"), ("xx", "a")):
        (root / lang).mkdir()
        for i, name in enumerate(names):
            x = tone(0.5 + 0.3 * i, seed=i)
            if (lang, name) == ("en", "b"):
                x = x * 1e20
            sf.write(root / lang / f"{name}.wav", x, SAMPLE_RATE, subtype="FLOAT")
    (root / "en" / "a.txt").write_text("Hello there, world.\n")  # a sidecar transcript; c has none
    return root


def encode_flags(out: pathlib.Path, model: pathlib.Path, clips: pathlib.Path, langs: str | None = None) -> list[str]:
    """The encode job's flags for the ``langs`` folders of ``clips`` (every one by default) into ``out`` with
    ``model``."""
    flags = ["--out", str(out), "--model", str(model), "--dataset", f"folder:{clips}"]
    return flags + (["--langs", langs] if langs else [])


@pytest.fixture(scope="module")
def store(run_job, clips, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("store") / "store"
    proc = run_job("encode", *encode_flags(out, tiny_model_dir, clips))
    assert "skipped 1 (AudioRangeError): en/b" in proc.stdout, proc.stdout
    assert "have no language token in this whisper model" in proc.stderr and "'xx'" in proc.stderr
    return out


def test_a_huge_amplitude_clip_is_counted_and_the_rest_encoded(store):
    reader = open_store(str(store))
    assert reader.done("en").tolist() == [True, False, True]  # a, b, c: b skipped, c after it still encoded
    assert reader.utterances_table("en").column("transcription").to_pylist() == ["Hello there, world.", None, None]
    assert reader.done("xx").tolist() == [True]


def test_strict_makes_the_skip_an_exit_code(run_job, clips, tiny_model_dir, tmp_path):
    proc = run_job("encode", *encode_flags(tmp_path / "s", tiny_model_dir, clips, "en"), "--strict", expect=1)
    assert "--strict: 1 items were skipped" in proc.stderr


def encode(out: pathlib.Path, model: pathlib.Path, clips: pathlib.Path, langs: str, **settings):
    """The encode job's library call, in this process, as ``encode_flags`` describes the run."""
    config = configure(EncodeConfig, out=str(out), model=str(model), dataset=f"folder:{clips}", langs=(langs,),
                       progress=False, **settings)  # fmt: skip
    return run_encode(config)


def test_a_resume_with_another_compute_dtype_is_refused(clips, tiny_model_dir, tmp_path):
    encode(tmp_path / "s", tiny_model_dir, clips, "xx")
    with pytest.raises(StoreMismatchError, match="compute_dtype: store has 'float32', this run 'bfloat16'"):
        encode(tmp_path / "s", tiny_model_dir, clips, "xx", compute_dtype="bfloat16")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["compute_dtype"] == "float32"


def test_a_second_writer_is_refused_and_a_stale_lease_taken_over(run_job, clips, tiny_model_dir, tmp_path):
    out = tmp_path / "s"
    args = encode_flags(out, tiny_model_dir, clips, "xx")
    _, kv = open_kvstore(str(out))
    holder = WriterLease(kv, str(out), "encode (another run)", ttl=600)
    holder.take()  # a run in progress: its lease is renewed and unexpired
    try:
        proc = run_job("encode", *args, expect=1)
        assert "is being written by another run: encode (another run)" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr and "--break_lease" in proc.stderr
        assert not (out / "manifest.json").exists(), "the refused run wrote nothing"
    finally:
        holder.release()
    assert not (out / LEASE).exists(), "a finished run releases its lease"
    # A run killed while holding the lease leaves it behind; once it has expired the next run takes it over.
    stale = {"owner": "dead", "host": "h", "pid": 1, "job": "encode", "expires_unix": time.time() - 1}
    (out).mkdir(parents=True, exist_ok=True)
    (out / LEASE).write_text(json.dumps(stale))
    encode(out, tiny_model_dir, clips, "xx")  # the runs from here on in this process: the lease is the library's
    assert open_store(str(out)).done("xx").all() and not (out / LEASE).exists()
    # A run killed on this host leaves an unexpired lease whose pid no longer runs: taken over at once.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=patient(60)
    )
    here = {**stale, "host": socket.gethostname(), "pid": int(gone.stdout), "expires_unix": time.time() + 600}
    (out / LEASE).write_text(json.dumps(here))
    encode(out, tiny_model_dir, clips, "xx")
    assert not (out / LEASE).exists()
    # An unexpired lease of a run on another host, known to be dead: --break_lease.
    (out / LEASE).write_text(json.dumps({**stale, "expires_unix": time.time() + 600}))
    with pytest.raises(StoreBusyError, match="is being written by another run: encode on host 'h', pid 1"):
        encode(out, tiny_model_dir, clips, "xx")
    encode(out, tiny_model_dir, clips, "xx", break_lease=True)
    assert not (out / LEASE).exists()


def test_bad_language_codes_are_listed_before_anything_is_created(run_job, tiny_model_dir, tmp_path):
    manifest = tmp_path / "list.csv"
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(0.5, 0), SAMPLE_RATE)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "lang", "path", "transcription"])
        for lang in ("en", "../../etc", "en/../x", "bad.lang"):
            writer.writerow(["a", lang, str(wav), "hello"])
    out = tmp_path / "out"
    proc = run_job("encode", "--out", str(out), "--model", str(tiny_model_dir), "--dataset", f"manifest:{manifest}",
                   expect=1)  # fmt: skip
    assert "['../../etc', 'bad.lang', 'en/../x'] cannot name store folders" in proc.stderr, proc.stderr
    assert "nothing was written" in proc.stderr
    assert not out.exists() and not (tmp_path / "etc").exists()


def test_align_skips_a_language_whisper_lacks(store, tiny_model_dir, tmp_path):
    out = tmp_path / "words"
    config = configure(AlignConfig, store=str(store), out=str(out), model=str(tiny_model_dir), subtitles=("srt", "vtt"),
                       progress=False)  # fmt: skip
    report = run_align(config).report()
    assert "(no_language_token): xx/a" in report, report
    skipped = (out / "xx" / "skipped.csv").read_text().splitlines()
    assert skipped == ["utterance,id,reason", "0,a,no_language_token"]
    # The folder's sidecar transcript reached the words; the clip without one is skipped with the way out named.
    words = read_words(str(out), "en").to_pylist()
    assert [w["word"] for w in words] == [" Hello", " there,", " world."] and {w["id"] for w in words} == {"a"}
    assert "(no_transcription): en/c" in report and "--transcripts decode" in report
    # The same words per utterance as faster-whisper's word dicts, and as subtitles.
    record = json.loads((out / "en" / "json" / "00000000.json").read_text())
    assert record["id"] == "a" and record["language"] == "en"
    assert [w["word"] for w in record["words"]] == [" Hello", " there,", " world."]
    assert set(record["words"][0]) == {"word", "start", "end", "probability"}
    srt = (out / "en" / "srt" / "00000000.srt").read_text().splitlines()
    assert srt[0] == "1" and " --> " in srt[1] and "," in srt[1] and srt[2] == "Hello there, world."
    assert (out / "en" / "vtt" / "00000000.vtt").read_text().startswith("WEBVTT\n\n00:00:")


def test_an_unwritable_output_is_a_clear_error_not_a_traceback(run_job, tiny_model_dir, clips, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_job("encode", *encode_flags(blocker / "store", tiny_model_dir, clips, "xx"), expect=1)
    assert "StoreError: cannot " in proc.stderr and "a part of the path is a file, not a folder" in proc.stderr
