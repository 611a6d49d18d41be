"""Word timestamps (engine/timing.py) against faster-whisper / CTranslate2, an implementation we did not write.

Real speech: the single-window FLEURS parity clips (10, tests/models/whisper/conftest.py) with their FLEURS
transcripts, packaged whisper-base at float32.
Both sides get the same transcript tokens and the same valid frames (CTranslate2's ``num_frames`` is twice ours:
it counts mel frames); each side runs its own encoder (they differ by ~1e-3). CTranslate2's ``Whisper.align`` is
what faster-whisper's ``word_timestamps=True`` calls before its duration heuristics, and its words are then merged
with faster-whisper's own ``merge_punctuations``. Acceptance: the same words; median |start/end difference| at
most 0.02 s, 95th percentile at most 0.1 s (one frame is 0.02 s). Observed (printed with -s): every boundary equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.audio import SAMPLE_RATE, load_audio
from engine.errors import ShapeError
from engine.models.whisper.features import features_for_audio
from engine.models.whisper.timing import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    TranscriptTooLongError,
    Word,
    align_words,
    concatenate_windows,
    fill_padding,
    merge_punctuations,
    silence_states,
)

BATCH = 5  # the 10 single-window parity clips in two batches


def word_dicts(words):
    return [
        dict(word=w.text, tokens=list(w.tokens), start=w.start, end=w.end, probability=w.probability) for w in words
    ]


# --------------------------------------------------------------------------------------------------------------
# Punctuation merging against faster-whisper's function (fast, no model).


@pytest.mark.parametrize("seed", range(20))
def test_merge_punctuations_matches_faster_whisper(seed):
    fw = pytest.importorskip("faster_whisper.transcribe")
    rng = np.random.default_rng(seed)
    pieces = [" the", " cat", "'s", ",", " (", " sat", ")", ".", " ¿", "qué", "?", " -", "well", "”", " “", '"', "、"]
    words = [
        Word(str(p), float(i), float(i + 1), float(rng.uniform()), (i,))
        for i, p in enumerate(rng.choice(pieces, rng.integers(1, 12)))
    ]
    ours = merge_punctuations(words, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    theirs = word_dicts(words)
    fw.merge_punctuations(theirs, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    assert word_dicts(ours) == [d for d in theirs if d["word"]]


def test_concatenate_windows_checks_partial_windows():
    states = np.zeros((2, 1500, 4), np.float32)
    x, n = concatenate_windows(states, [1500, 300])
    assert x.shape == (3000, 4) and n == 1800
    with pytest.raises(ShapeError, match="only the last window"):
        concatenate_windows(states, [700, 300])


# --------------------------------------------------------------------------------------------------------------
# A tiny random model: shapes, errors, padding, batching.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from engine.models.whisper.dims import ModelDimensions
    from engine.models.whisper.loaded import load_whisper
    from engine.models.whisper.random_weights import random_state_dict

    dims = ModelDimensions(80, 1500, 64, 4, 2, 51865, 448, 64, 4, 2)
    path = tmp_path_factory.mktemp("model") / "tiny-random.pt"
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(dims, seed=5, scale=0.3).items()}
    torch.save({"dims": dims.to_dict(), "model_state_dict": sd}, path)
    return load_whisper(path)


def test_words_cover_the_transcript_in_order(tiny):
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((2, 1500, 64)).astype(np.float32)
    texts = [" Hello world, this is a test.", " 你好世界"]
    tokens = [tiny.tokenizer.encode(t) for t in texts]
    words = align_words(tiny, xa, [1200, 800], tokens, ["en", "zh"])
    assert "".join(w.text for w in words[0]) == texts[0]
    assert [w.text for w in words[0]] == [" Hello", " world,", " this", " is", " a", " test."]
    # No spaces: a word per run of tokens that decodes to whole characters ("世界" is one token), as Whisper.
    assert [w.text for w in words[1]] == [" 你", "好", "世界"]
    for ws, n in zip(words, [1200, 800], strict=True):
        starts, ends = np.array([w.start for w in ws]), np.array([w.end for w in ws])
        assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts) and ends[-1] <= n / 50
        assert all(0 <= w.probability <= 1 for w in ws)


def test_batch_neighbours_change_nothing_and_filled_padding_hides_poison(tiny):
    rng = np.random.default_rng(1)
    xa = rng.standard_normal((3, 1500, 64)).astype(np.float32)
    n = [1500, 700, 333]
    tokens = [tiny.tokenizer.encode(t) for t in (" one two three four", " five six", " seven")]
    batched = align_words(tiny, xa, n, tokens, ["en"] * 3)
    for i in range(3):
        alone = align_words(tiny, xa[i : i + 1], n[i : i + 1], tokens[i : i + 1], ["en"])[0]
        assert [(w.text, w.start, w.end) for w in alone] == [(w.text, w.start, w.end) for w in batched[i]]
        np.testing.assert_allclose([w.probability for w in alone], [w.probability for w in batched[i]], rtol=1e-5)
    # A layer store has nothing past n_frames: fill_padding puts the silent window's states there, whatever it held.
    silence = silence_states(tiny)
    assert silence.shape == (1500, 64)
    poisoned = xa.copy()
    for i, k in enumerate(n):
        poisoned[i, k:] = 1e4
    filled = fill_padding(poisoned, n, silence)
    np.testing.assert_array_equal(filled, fill_padding(xa, n, silence))
    np.testing.assert_array_equal(filled[1, :700], xa[1, :700])
    np.testing.assert_array_equal(filled[2, 333:], silence[333:])
    # Valid frames only (as a store returns them), or more frames than asked for: the same windows.
    np.testing.assert_array_equal(fill_padding(xa[1:2, :700], [700], silence, 1500), filled[1:2])
    np.testing.assert_array_equal(fill_padding(np.tile(poisoned, (1, 2, 1)), n, silence, 1500), filled)
    two = fill_padding(np.zeros((1, 3000, 64), np.float32), [1700], silence)
    np.testing.assert_array_equal(two[0, 1700:], silence[200:])  # the last window's own positions
    with pytest.raises(ShapeError, match="whole 30 s windows"):
        fill_padding(np.zeros((1, 1000, 64), np.float32), [10], silence)
    with pytest.raises(ShapeError, match="n_frames must be at most 700"):
        fill_padding(xa[:, :700], n, silence, 1500)


def test_two_windows_are_aligned_window_by_window(tiny):
    """Each window's words are those words aligned against that window alone, shifted by the window's start."""
    rng = np.random.default_rng(2)
    xa = rng.standard_normal((2, 3000, 64)).astype(np.float32)
    text = " one two three four five six seven eight nine ten"
    tokens = tiny.tokenizer.encode(text)
    words = align_words(tiny, xa, [2400, 1000], [tokens, tokens], ["en", "en"])
    assert "".join(w.text for w in words[0]) == text
    k = sum(w.start < 30.0 for w in words[0])  # window 1 ends at frame 1499 (29.98 s), window 2 starts at 30 s
    assert 0 < k < len(words[0])  # the boundary falls inside the transcript: both windows have words
    pieces = [words[0][:k], words[0][k:]]
    alone = align_words(
        tiny,
        xa[0].reshape(2, 1500, 64),
        [1500, 900],
        [[x for w in ws for x in w.tokens] for ws in pieces],
        ["en", "en"],
    )
    for shift, ws, ref in zip((0.0, 30.0), pieces, alone, strict=True):
        assert [(w.text, w.start, w.end) for w in ws] == [(w.text, w.start + shift, w.end + shift) for w in ref]
        np.testing.assert_allclose([w.probability for w in ws], [w.probability for w in ref], rtol=1e-5)
    # One valid window in a two-window batch: its first window alone, as a single-window batch aligns it.
    single = align_words(tiny, xa[1:2, :1500], [1000], [tokens], ["en"])[0]
    assert [(w.text, w.start, w.end) for w in words[1]] == [(w.text, w.start, w.end) for w in single]


def test_empty_transcript_gives_no_words(tiny):
    xa = np.zeros((2, 1500, 64), np.float32)
    words = align_words(tiny, xa, [100, 100], [[], tiny.tokenizer.encode(" hi")], ["en", "en"])
    assert words[0] == [] and [w.text for w in words[1]] == [" hi"]


def test_bad_inputs_are_refused(tiny):
    xa = np.zeros((1, 1500, 64), np.float32)
    with pytest.raises(TranscriptTooLongError, match="448"):
        align_words(tiny, xa, [100], [[100] * 446], ["en"])
    with pytest.raises(ShapeError, match="n_frames must lie"):
        align_words(tiny, xa, [0], [[100]], ["en"])
    with pytest.raises(ShapeError, match="xa must be"):
        align_words(tiny, np.zeros((1, 1500, 32), np.float32), [10], [[100]], ["en"])
    with pytest.raises(ShapeError, match="one entry per utterance"):
        align_words(tiny, xa, [10, 10], [[100]], ["en"])


# --------------------------------------------------------------------------------------------------------------
# Real speech against faster-whisper.


@pytest.fixture(scope="module")
def whisper(base_whisper):
    return base_whisper


@pytest.fixture(scope="module")
def real(fleurs_windows, whisper):
    """(name, language, transcript tokens, window index, valid frames) of every single-window clip: the session's
    shared windows (tests/models/whisper/conftest.py), whose encoder outputs both sides already computed
    (base_encoded)."""
    fw = fleurs_windows
    out = []
    for i, (name, lang, text) in enumerate(zip(fw.names, fw.langs, fw.refs, strict=True)):
        windows = fw.windows_of(i)
        if len(windows) == 1:
            w = int(windows[0])
            out.append((name, lang, whisper.tokenizer.encode(" " + text), w, int(fw.valid[w])))
    assert len(out) == len(fw.names) - 1  # all but de-009
    return out


@pytest.fixture(scope="module")
def ours(real, whisper, base_encoded):
    """Our words for every clip, batched: from full windows (as Whisper), and as the align job does from a layer
    store (nothing past the valid frames, so the padding is filled with the silent window's states)."""
    out = {False: [], True: []}
    silence = silence_states(whisper)
    for start in range(0, len(real), BATCH):
        # A last batch short of BATCH (none with 10 clips) is padded with copies of its first clip to BATCH rows, so
        # that it needs no programs of its own; rows are aligned independently (test_batched_equals_one_by_one).
        chunk = real[start : start + BATCH]
        kept = len(chunk)
        chunk = chunk + [chunk[0]] * (BATCH - kept)
        xa = base_encoded[0][[c[3] for c in chunk]]
        n = [c[4] for c in chunk]
        texts, langs = [c[2] for c in chunk], [c[1] for c in chunk]
        out[False] += align_words(whisper, xa, n, texts, langs)[:kept]
        stored = np.where(np.arange(xa.shape[1])[None, :, None] < np.array(n)[:, None, None], xa, 0)
        out[True] += align_words(whisper, fill_padding(stored, n, silence), n, texts, langs)[:kept]
    return out


@pytest.fixture(scope="module")
def theirs(real, ct2_base_dir, base_encoded):
    """faster-whisper's words from CTranslate2's encoder output of the same windows."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    fw = pytest.importorskip("faster_whisper")
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations as fw_merge

    model = fw.WhisperModel(str(ct2_base_dir), device="cpu", compute_type="float32", cpu_threads=2)
    out = []
    for _, lang, tokens, window, valid in real:
        enc = ctranslate2.StorageView.from_array(np.array(base_encoded[1][window : window + 1], copy=True))
        tok = Tokenizer(model.hf_tokenizer, True, task="transcribe", language=lang)
        words = model.find_alignment(tok, [tokens], enc, 2 * valid)[0]
        fw_merge(words, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        out.append([w for w in words if w["word"]])
    return out


def check_boundaries(ours, theirs, real, label: str) -> None:
    """Same words on every clip; |start/end difference| median <= 0.02 s and 95th percentile <= 0.1 s."""
    diffs = []
    for name, a, b in zip([r[0] for r in real], ours, theirs, strict=True):
        assert [w.text for w in a] == [w["word"] for w in b], name
        diffs += [w.start - v["start"] for w, v in zip(a, b, strict=True)]
        diffs += [w.end - v["end"] for w, v in zip(a, b, strict=True)]
    d = np.abs(diffs)
    print(
        f"\n{label}, {len(d) // 2} words: |diff| median {np.median(d):.3f} s, p95 {np.percentile(d, 95):.3f} s, "
        f"max {d.max():.2f}"
    )
    assert np.median(d) <= 0.02 and np.percentile(d, 95) <= 0.1


@pytest.mark.realdata
@pytest.mark.slow
def test_word_timestamps_match_faster_whisper(ours, theirs, real):
    check_boundaries(ours[False], theirs, real, "full windows")
    # Word probabilities: mean token probability; the encoders differ by ~1e-3, so probabilities by ~1e-4.
    p = np.array([w.probability for ws in ours[False] for w in ws])
    q = np.array([w["probability"] for ws in theirs for w in ws])
    np.testing.assert_allclose(p, q, atol=1e-3)


@pytest.mark.realdata
@pytest.mark.slow
def test_store_alignment_with_silence_padding_is_close_to_faster_whisper(ours, theirs, real):
    """The align job's path: the padding's encoder states come from a silent window (a layer store has none)."""
    check_boundaries(ours[True], theirs, real, "store path")


@pytest.mark.realdata
@pytest.mark.slow
def test_batched_equals_one_by_one(real, ours, whisper, base_encoded):
    """Three rows of the first batch (its first, middle and last) aligned alone, from the same encoder output: the
    same words at the same frames. Every row runs the same program, so three show what the whole batch did."""
    for name, lang, tokens, window, valid in [real[0], real[BATCH // 2], real[BATCH - 1]]:
        alone = align_words(whisper, base_encoded[0][window : window + 1], [valid], [tokens], [lang])[0]
        batched = ours[False][[r[0] for r in real].index(name)]
        assert [(w.text, w.start, w.end) for w in alone] == [(w.text, w.start, w.end) for w in batched], name


# The two clips joined by the long-utterance test. pt-000 + pt-008 ran too until 2026-11-27: the same programs (one
# window alone, two concatenated) on other words, and the same result.
LONG_PAIR = ("de-000", "de-007")


@pytest.mark.realdata
@pytest.mark.slow
def test_long_utterance_over_concatenated_windows(fleurs_dir, whisper):
    """Two clips joined into one utterance over 30 s: the second clip's words land where they do alone, shifted.

    The joined utterance spans two windows, so the second clip's words cross the window boundary: each window's
    words are aligned against that window alone (timing.py's two passes). The known answer is the second clip aligned
    alone, shifted by the first clip's duration (the transcripts are joined too).
    """
    first, second = LONG_PAIR
    clips = [fleurs_dir / f"fleurs-{name}.ogg" for name in (first, second)]
    audio = [load_audio(p) for p in clips]
    texts = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in clips]
    lang = first.split("-")[0]

    def run(samples, text):
        mel, valid = features_for_audio(samples, whisper.dims.n_mels)
        x, n = concatenate_windows(np.asarray(whisper.audio_features(mel)), valid)
        return align_words(whisper, x[None], [n], [whisper.tokenizer.encode(" " + text)], [lang])[0]

    joined = np.concatenate(audio)
    assert len(joined) > 30 * SAMPLE_RATE
    alone = run(audio[1], texts[1])
    both = run(joined, texts[0] + " " + texts[1])
    tail = both[len(both) - len(alone) :]
    assert [w.text for w in tail] == [w.text for w in alone]
    offset = len(audio[0]) / SAMPLE_RATE
    d = np.abs([(w.start - v.start - offset, w.end - v.end - offset) for w, v in zip(tail, alone, strict=True)])
    # Alone, the second clip's first word starts at 0 s (leading silence goes to the first word); joined, that
    # silence is the end of the first window and its first word starts at the second window: not comparable.
    d = d.reshape(-1)[1:]
    assert max(w.end for w in both) > 30.0
    assert np.median(d) <= 0.04 and np.mean(d <= 0.2) >= 0.9, d
