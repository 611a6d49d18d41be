"""One synthesised source for the bundled sets: clips spoken by espeak-ng on first use, cached, read as utterances.

A set (``engine.data.synth.sentences.DemoSource``, ``engine.data.synth.words.WordsDemoSource``) says only what
differs: its name, cache folder, languages, the texts of each id with their voice settings, and its version (a hash of
everything that shapes the audio, so that editing the texts starts a fresh cache instead of mixing old clips with new
text). Clips are cached as ``<cache>/<folder>/<version>/<lang>/<id>.wav`` (22.05 kHz mono 16-bit, espeak-ng's own
format; ``load_audio`` resamples to 16 kHz), ``<cache>`` as ``engine.data.synth.espeak.default_cache_dir``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import soundfile

from engine.data.synth.espeak import SYNTH_WORKERS, default_cache_dir, find_espeak, run_jobs, speak
from engine.data.utterance import Utterance, check_language


@dataclasses.dataclass(frozen=True)
class SynthItem:
    """One id of a set: its text per language and the voice settings it is spoken with in every language."""

    id: str
    texts: dict[str, str]
    speed: int  # words per minute
    pitch: int  # espeak-ng's 0-99 scale


class SynthesisedSource:
    """A bundled synthetic set as a ``Source``; subclasses set ``name``, ``folder``, ``what`` and
    ``raw_transcription``, and define ``languages``, ``items`` and ``version``.

    ``utterances(lang)`` synthesises that language's missing clips first; ``synthesize()`` makes them all at once.
    """

    name = ""
    folder = ""  # under the cache root
    what = ""  # how errors name the set
    clip_kind = ""  # how errors name one clip
    raw_transcription = False  # also fill Utterance.raw_transcription with the text

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, workers: int = SYNTH_WORKERS):
        root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.dir = root.resolve() / self.folder / self.version()
        self.workers = max(1, int(workers))

    def languages(self) -> list[str]:
        raise NotImplementedError

    def items(self) -> list[SynthItem]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def splits(self) -> list[str]:
        return []

    def clip_path(self, lang: str, item_id: str) -> pathlib.Path:
        return self.dir / lang / f"{item_id}.wav"

    def synthesize(self, languages: list[str] | None = None) -> int:
        """Synthesises every missing clip of ``languages`` (default: all); returns how many were written."""
        languages = self.languages() if languages is None else list(languages)
        for lang in languages:
            check_language(lang, self.languages(), self.what)
        todo = [(lang, it) for lang in languages for it in self.items() if not self.clip_path(lang, it.id).is_file()]
        if not todo:
            return 0
        espeak = find_espeak()
        for lang in languages:
            (self.dir / lang).mkdir(parents=True, exist_ok=True)
        run_jobs(lambda job: self._synthesize_one(espeak, *job), todo, self.workers)
        return len(todo)

    def _synthesize_one(self, espeak: str, lang: str, item: SynthItem) -> None:
        target = self.clip_path(lang, item.id)
        speak(espeak, lang, item.texts[lang], item.speed, item.pitch, target, f"{self.clip_kind} {lang}/{item.id}")

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), self.what)
        self.synthesize([lang])
        out = []
        for item in self.items():
            path = self.clip_path(lang, item.id)
            out.append(
                Utterance(
                    id=item.id,
                    lang=lang,
                    audio=str(path),
                    path=str(path),
                    transcription=item.texts[lang],
                    raw_transcription=item.texts[lang] if self.raw_transcription else None,
                    speaker=f"espeak-ng:{lang}",
                    duration_s=soundfile.info(str(path)).duration,  # header read only
                )
            )
        return out
