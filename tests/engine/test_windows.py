"""The encode job's host stage, where it decides without a model: which long utterance pads a language's shards
enough to be worth a warning, and the skip reason a recording over --max_seconds is recorded under."""

from engine.pipelines.stages.windows import over_cap, padding_note, recorded_skip_reason
from engine.stores.utterances import UtteranceRow


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
