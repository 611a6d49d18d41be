"""engine.data.synth.sentences: the sentence table, espeak-ng synthesis into a cache, reuse, atomic writes, missing
espeak-ng."""

import os
import shutil
import stat

import numpy as np
import pytest
import soundfile

from engine.data.audio import SAMPLE_RATE
from engine.data.synth import espeak
from engine.data.synth import sentences as D
from engine.data.utterance import DatasetError, Source
from engine.errors import LanguageError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_sentence_table():
    """At least 30 parallel sentences in at least 6 languages; every sentence exists in every language."""
    assert len(D.SENTENCES) >= 30 and len(D.DEMO_LANGUAGES) >= 6
    assert D.DEMO_IDS[:2] == ("demo-000", "demo-001") and len(set(D.DEMO_IDS)) == len(D.SENTENCES)
    for i, sentence in enumerate(D.SENTENCES):
        assert set(sentence) == set(D.DEMO_LANGUAGES), f"sentence {i} lacks {set(D.DEMO_LANGUAGES) - set(sentence)}"
        assert 5 <= len(sentence["en"].split()) <= 12, sentence["en"]
        assert all(text.strip() == text and text[-1] in ".?" for text in sentence.values()), sentence
    for lang in D.DEMO_LANGUAGES:
        texts = [s[lang] for s in D.SENTENCES]
        assert len(set(texts)) == len(texts), f"{lang} repeats a sentence"
    assert sum("?" in s["en"] for s in D.SENTENCES) >= 5  # questions
    assert sum(any(c.isdigit() for c in s["en"]) for s in D.SENTENCES) >= 2  # numbers as digits


def test_voice_settings_and_version(monkeypatch):
    settings = [D.voice_settings(i) for i in range(len(D.SENTENCES))]
    assert settings == [D.voice_settings(i) for i in range(len(D.SENTENCES))]
    assert len(set(settings)) > 5 and all(140 <= s <= 180 and 30 <= p <= 70 for s, p in settings)
    version = D.demo_version()
    assert version == D.demo_version() and version.startswith("v1-")
    edited = list(D.SENTENCES)
    edited[0] = {**edited[0], "en": "Good evening, how are you today?"}
    monkeypatch.setattr(D, "SENTENCES", tuple(edited))
    assert D.demo_version() != version  # edited text -> a fresh cache folder


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BABELGRID_CACHE", str(tmp_path / "env"))
    assert D.DemoSource().dir == (tmp_path / "env" / "demo" / D.demo_version()).resolve()
    assert D.DemoSource(tmp_path / "arg").dir == (tmp_path / "arg" / "demo" / D.demo_version()).resolve()
    monkeypatch.delenv("BABELGRID_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert espeak.default_cache_dir() == tmp_path / "xdg" / "babelgrid"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert espeak.default_cache_dir() == tmp_path / "home" / ".cache" / "babelgrid"


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    src = D.DemoSource(tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"apt-get install espeak-ng.*brew install espeak-ng"):
        src.utterances("en")
    assert not list((tmp_path / "cache").rglob("*.wav"))


def test_failed_synthesis_leaves_no_file(monkeypatch, tmp_path):
    """A synthesis that dies halfway (here a fake espeak-ng that writes a partial file and fails) leaves neither the
    clip nor its temp file behind, so the next run synthesises it again instead of reusing half a clip."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "espeak-ng"
    fake.write_text(
        '#!/bin/sh\nwhile [ "$1" != "-w" ]; do shift; done\nprintf "RIFF$$ partial" > "$2"\n'
        'echo "killed" >&2\nexit 137\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    src = D.DemoSource(tmp_path / "cache", workers=2)
    with pytest.raises(
        DatasetError, match=r"espeak-ng failed to synthesise demo clip sv/demo-\d{3} \(exit 137\): killed"
    ):
        src.synthesize(["sv"])
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_unknown_language(tmp_path):
    src = D.DemoSource(tmp_path)
    with pytest.raises(LanguageError, match=r"the demo set has no language 'fr'; available: en, de, es"):
        src.utterances("fr")
    with pytest.raises(LanguageError, match=r"no language 'zh'"):
        src.synthesize(["en", "zh"])


@needs_espeak
def test_one_language(tmp_path, monkeypatch):
    src = D.DemoSource(tmp_path, workers=2)
    assert isinstance(src, Source) and src.splits() == []
    utts = src.utterances("de", "test")
    assert [u.id for u in utts] == list(D.DEMO_IDS)
    assert all(u.lang == "de" and u.whisper_lang == "de" and u.recording == 0 for u in utts)
    assert utts[1].transcription == D.SENTENCES[1]["de"]
    assert utts[0].path == str(tmp_path.resolve() / "demo" / D.demo_version() / "de" / "demo-000.wav")
    assert sorted(p.name for p in (src.dir / "de").iterdir()) == [f"{i}.wav" for i in D.DEMO_IDS]  # no temp files
    assert soundfile.info(utts[0].path).samplerate == 22050
    for u in utts[:5]:
        audio = u.load()
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert audio.size == pytest.approx(u.duration_s * SAMPLE_RATE, abs=2)  # resampled 22.05 -> 16 kHz
        assert 1.0 < u.duration_s < 8.0 and np.abs(audio).max() > 0.1 and np.sqrt(np.mean(audio**2)) > 0.01
    # Second use reuses the files as they are, even with espeak-ng gone.
    mtimes = [os.stat(u.path).st_mtime_ns for u in utts]
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert src.synthesize(["de"]) == 0
    again = D.DemoSource(tmp_path).utterances("de")
    assert again == utts and [os.stat(u.path).st_mtime_ns for u in again] == mtimes


@needs_espeak
def test_deterministic_audio(tmp_path):
    a, b = D.DemoSource(tmp_path / "a"), D.DemoSource(tmp_path / "b")
    a.synthesize(["ru"])
    b.synthesize(["ru"])
    for i in range(len(D.SENTENCES)):
        assert a.clip_path("ru", D.DEMO_IDS[i]).read_bytes() == b.clip_path("ru", D.DEMO_IDS[i]).read_bytes()


@needs_espeak
@pytest.mark.slow
def test_whole_set(tmp_path):
    """Every language synthesises, clips share ids across languages, and a second call writes nothing."""
    src = D.DemoSource(tmp_path, workers=2)
    assert src.synthesize() == len(D.SENTENCES) * len(D.DEMO_LANGUAGES)
    assert src.synthesize() == 0
    ids = {lang: [u.id for u in src.utterances(lang)] for lang in src.languages()}
    assert all(v == list(D.DEMO_IDS) for v in ids.values())
    for lang in src.languages():
        for u in src.utterances(lang):
            audio = u.load()  # raises SilentAudioError on silence
            assert audio.size > SAMPLE_RATE and np.abs(audio).max() > 0.1, (lang, u.id)
