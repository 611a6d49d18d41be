"""The encode job's host stage, where it decides without a model: which long utterance pads a language's shards
enough to be worth a warning, the skip reason a recording over --max_seconds is recorded under, and the refusal of a
table made under another cap."""

import dataclasses

import pytest

from engine.pipelines.stages.windows import over_cap, padding_note, recorded_skip_reason
from engine.stores.utterances import StoreMismatchError, UtteranceRow, check_same_rows


def rows(*frames):
    return [UtteranceRow(id=f"u{i}", lang="en", path=f"/en/u{i}.wav", duration_s=n / 50, n_frames=n, n_windows=1)
            for i, n in enumerate(frames)]  # fmt: skip


def test_one_long_utterance_among_short_ones_is_named_with_its_factor():
    note = padding_note("en", rows(500, 600, 700, 0, 360_000))  # 0 frames: skipped, not counted
    assert note.startswith("en: its longest utterance (u4, 7200 s) pads every shard of the language to 360000 frames, "
                           "554x its median utterance's 650")  # fmt: skip
    assert padding_note("en", rows(500, 600, 2169)) is None  # FLEURS-like: 3.6x, under 60 s
    assert padding_note("en", rows(2900, 2950, 3100)) is None  # long, but all alike
    assert padding_note("en", rows(0, 0)) is None


def test_the_cap_and_its_skip_reason():
    assert over_cap(601.0, "window", 600.0) and not over_cap(600.0, "window", 600.0)
    assert not over_cap(7200.0, "truncate", 600.0) and not over_cap(7200.0, "window", None)
    assert recorded_skip_reason("LongAudioError") == "audio_too_long"
    assert recorded_skip_reason("SilentAudioError") == "silent_audio"


def test_a_table_made_under_another_cap_is_refused_naming_the_cap():
    """A rerun whose --max_seconds moves a recording in or out of the table: the store's table differs, and the
    refusal says it is the cap (not a replaced file) both ways."""
    (capped,) = rows(0)
    capped = dataclasses.replace(capped, duration_s=700.0)  # over the cap: a duration, no frames
    kept = dataclasses.replace(capped, n_frames=35_000, n_windows=24)
    with pytest.raises(StoreMismatchError, match="its 700 s were over the --max_seconds of the run that made the st"):
        check_same_rows([capped], [kept], "en", "/s")
    with pytest.raises(StoreMismatchError, match="its 700 s are over this run's --max_seconds: give the cap the store"):
        check_same_rows([kept], [capped], "en", "/s")
    unreadable = dataclasses.replace(capped, duration_s=0.0)  # no header: the file was replaced since
    with pytest.raises(StoreMismatchError, match="unreadable when the store was made, readable now"):
        check_same_rows([unreadable], [kept], "en", "/s")
