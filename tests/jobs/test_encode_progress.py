"""What the encode job says of its run: its bar counts what is committed (a write that fails is never counted as
done), a run that encoded nothing exits 1, and a store holding languages the run was not asked for is named."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest

from engine.errors import StoreError
from engine.models.whisper.encoder import WhisperEncoder
from engine.pipelines.encode import run as encode_run
from engine.pipelines.encode.config import EncodeConfig
from engine.runtime.options import configure
from engine.stores.language import LanguageArrays, WriteHandle
from engine.stores.reader import open_store
from tests.jobs.test_encode import BATCH, write_clips


def test_the_bar_counts_committed_writes_not_queued_ones(tmp_path, tiny_whisper, monkeypatch):
    """The bar counted each utterance as its write was queued, so a run whose writes then failed showed 60/60
    before its error (cluster-user probe). Here the 4th of 6 writes fails: the bar ends at the 5 committed."""
    clips = write_clips(tmp_path / "clips", langs=("en",), n=6)
    write, calls = LanguageArrays.write_utterance, []

    def failing(self, u, states, *, lent=False):
        calls.append(u)
        if len(calls) != 4:
            return write(self, u, states, lent=lent)
        refused = concurrent.futures.Future()
        refused.set_exception(StoreError("cannot write: refused"))
        return WriteHandle(u, len(states), refused)

    bar = {}
    start, update = encode_run._Progress.start, encode_run._Progress.update
    monkeypatch.setattr(encode_run._Progress, "start", lambda self, n: (bar.update(total=n, n=0), start(self, n))[1])
    monkeypatch.setattr(encode_run._Progress, "update",
                        lambda self, n, s=0.0: (bar.update(n=bar["n"] + n), update(self, n, s))[1])  # fmt: skip
    monkeypatch.setattr(LanguageArrays, "write_utterance", failing)
    config = configure(EncodeConfig, out=str(tmp_path / "store"), dataset=f"folder:{clips}", batch_size=BATCH,
                       progress=False)  # fmt: skip
    with pytest.raises(StoreError, match="refused"):
        encode_run.run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert bar == {"total": 6, "n": 5}, bar
    assert int(open_store(str(tmp_path / "store")).done("en").sum()) == 5


def test_a_run_that_encodes_nothing_exits_1(run_job, tiny_model_dir, tmp_path):
    """Every clip skipped (an empty file here): the job said `store: X` and exited 0 with a store of nothing, which a
    pipeline's next stage took for success (newcomer probe). It now exits 1, saying so; the skip is still recorded."""
    (tmp_path / "clips" / "en").mkdir(parents=True)
    (tmp_path / "clips" / "en" / "000.wav").write_bytes(b"")
    out = tmp_path / "store"
    proc = run_job("encode", "--model", str(tiny_model_dir), "--dataset", f"folder:{tmp_path / 'clips'}", "--out",
                   str(out), "--progress=false", expect=1)  # fmt: skip
    assert "nothing was encoded: all 1 utterances were skipped" in proc.stderr, proc.stderr
    assert "EmptyAudioError" in (out / "en" / "skipped.json").read_text()


def test_languages_in_the_store_beyond_langs_are_named(tmp_path, tiny_whisper, caplog):
    """A study narrowed encode's --langs from en,de to en: its seqsim and retrieval still scored de (the store holds
    it, and they read every language), and nothing said so (newcomer probe). The encode run names it now."""
    clips = write_clips(tmp_path / "clips", langs=("en", "de"), n=2)
    out = tmp_path / "store"
    for langs in (("en", "de"), ("en",)):
        config = configure(EncodeConfig, out=str(out), dataset=f"folder:{clips}", batch_size=BATCH, langs=langs,
                           progress=False)  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="engine.pipelines.encode.run"):
            encode_run.run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    said = [r.getMessage() for r in caplog.records if "also holds" in r.getMessage()]
    assert len(said) == 1 and "also holds ['de'], encoded by an earlier run" in said[0], said
