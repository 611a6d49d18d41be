"""Batch logs: with stderr not a terminal, a job prints status lines (done / total, rate, ETA) at a steady interval."""

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import soundfile

from engine.runtime import runs
from engine.runtime.runs import StatusLines, progress_bar
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_status_lines_at_the_interval_with_rate_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runs.time, "monotonic", clock)
    out = io.StringIO()
    bar = StatusLines(200, "encode", "utt", interval=30, stream=out)
    for _ in range(10):  # 10 s: under the interval, nothing printed
        clock.t += 1
        bar.update(5)
    assert out.getvalue() == ""
    clock.t += 20  # 30 s, 55 done
    bar.update(5)
    bar.set_postfix(audio_s_per_s="6.5")
    clock.t += 30  # 60 s, 60 done: 1 utt/s, 140 left
    bar.update(5)
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert lines[0] == "encode: 55/200 utt (27.5%), 1.83 utt/s, elapsed 30 s, ETA 79 s"
    assert lines[1] == "encode: 60/200 utt (30.0%), 1 utt/s, elapsed 60 s, ETA 2 min 20 s, audio_s_per_s=6.5"
    assert len(lines) == 3 and lines[2] == lines[1]  # the closing line


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(runs.STATUS_ENV, "0.5")
    assert runs.status_interval() == 0.5
    for bad in ("x", "0", "-3"):
        monkeypatch.setenv(runs.STATUS_ENV, bad)
        assert runs.status_interval() == runs.STATUS_INTERVAL


def test_progress_bar_chooses_status_lines_only_for_auto_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(10, "x", "utt", None), StatusLines)
    assert progress_bar(10, "x", "utt", False).disable
    assert progress_bar(0, "x", "utt", None).disable  # nothing to do: no line at all
    assert not isinstance(progress_bar(10, "x", "utt", True), StatusLines)


def test_a_job_writing_to_a_log_file_prints_status_lines(tmp_path, tiny_model_dir):
    clips = tmp_path / "clips" / "en"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * np.arange(16000) / 16000) + 0.01 * rng.standard_normal(16000)
        soundfile.write(clips / f"s{i}.wav", tone.astype(np.float32), 16000)
    log = tmp_path / "encode.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **{runs.STATUS_ENV: "0.001"})
    with open(log, "w") as f:  # stderr is a file: no terminal, as in a cluster job
        subprocess.run(
            [sys.executable, "-m", "jobs.encode", "--model", str(tiny_model_dir), "--dataset",
             f"folder:{tmp_path / 'clips'}", "--out", str(tmp_path / "store"), "--batch_size", "2"],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=patient(600),
        )  # fmt: skip
    status = [line for line in log.read_text().splitlines() if line.startswith("encode: ")]
    assert status, log.read_text()
    assert status[-1].startswith("encode: 6/6 utt (100.0%)") and "utt/s" in status[-1], status
