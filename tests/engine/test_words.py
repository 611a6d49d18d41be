"""The align job's per-utterance files: words grouped into subtitle cues, timestamps in SRT and WebVTT form."""

import json

import pyarrow as pa
import pytest

from engine.stores.words import CUE_MAX_CHARS, WORD_SCHEMA, WordsError, _subtitles, per_utterance_files, read_words


def test_cues_split_at_the_line_length_and_timestamps_have_each_formats_separator():
    slow = [{"word": f" word{i:02d}", "start": 1.0 + i, "end": 1.5 + i, "probability": 0.9} for i in range(12)]
    srt = _subtitles(slow, "srt").split("\n\n")  # a cue ends before it would span more than 5 s
    assert srt[0].splitlines() == ["1", "00:00:01,000 --> 00:00:05,500", "word00 word01 word02 word03 word04"]
    fast = [{"word": f" word{i:02d}", "start": 0.1 * i, "end": 0.1 * i + 0.05, "probability": 0.9} for i in range(20)]
    cues = [c.splitlines()[2] for c in _subtitles(fast, "srt").split("\n\n") if c]
    assert " ".join(cues).split() == [w["word"].strip() for w in fast]
    assert all(len(text) <= CUE_MAX_CHARS for text in cues) and len(cues[0]) > CUE_MAX_CHARS - 7
    vtt = _subtitles([{"word": " long", "start": 3661.25, "end": 3662.0, "probability": 1.0}], "vtt")
    assert vtt.splitlines()[:3] == ["WEBVTT", "", "01:01:01.250 --> 01:01:02.000"]


def test_files_are_named_by_utterance_index_never_by_id():
    rows = {"utterance": [7], "id": ["../../etc/passwd"], "recording": [0], "word_index": [0], "word": [" x"],
            "start": [0.0], "end": [0.5], "probability": [1.0]}  # fmt: skip
    files = per_utterance_files("en", pa.Table.from_pydict(rows, schema=WORD_SCHEMA), ("srt",))
    assert sorted(files) == ["en/json/00000007.json", "en/srt/00000007.srt"]


def test_read_words_says_what_the_folder_holds_instead(tmp_path):
    """A wrong folder, another language and a run in progress all said "run jobs.align there" (analyst probe)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({"format": "babelgrid-layer-store"}))
    with pytest.raises(WordsError, match="it is a babelgrid-layer-store folder, not the align job's output"):
        read_words(str(tmp_path / "store"), "de")
    (tmp_path / "words" / "fr").mkdir(parents=True)
    (tmp_path / "words" / "fr" / "words.parquet").write_bytes(b"")
    with pytest.raises(WordsError, match=r"it has words of \['fr'\] only"):
        read_words(str(tmp_path / "words"), "de")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "lease.json").write_text("{}")
    with pytest.raises(WordsError, match="a run writes it"):
        read_words(str(tmp_path / "running"), "de")
