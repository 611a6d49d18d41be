"""The bundled word set: about 40 concepts as single words in en, de, es, it, voiced by espeak-ng on first use.

It is the probe's demo and test data (``jobs.probe``): the id of a clip is its concept (``dog``, ``poison``), so the
same id across languages is a pair of cross-lingual synonyms. It holds real false friends, so that generated
near-homophones (the nearest word of another concept by phone distance) include pairs such as en "gift" / de "Gift"
(poison), en "kind" / de "Kind" (child), de "Rat" (advice) / en "rat", it "camera" (room) / en "camera", es "carpeta"
(folder) / en "carpet", de "bald" (soon) / en "bald", en "embarrassed" / es "embarazada" (pregnant), en "become" /
de "bekommen" (receive); and translations with little shared sound (dog / Hund / perro / cane).

Clips are cached as ``<cache>/words/<version>/<lang>/<id>.wav`` (espeak-ng's 22.05 kHz WAV) with ``<cache>`` as
for the demo set (``engine.data.synth.sentences.default_cache_dir``) and ``<version>`` a hash of the words and voice
settings.
Dataset spec: ``words-demo`` (``engine.data.sources.get_source``). Synthetic single words are a smoke test of the
probe, not a benchmark.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pathlib

import soundfile

from engine.data.synth.sentences import BASE_PITCH, SYNTH_WORKERS, default_cache_dir, find_espeak, run_jobs, speak
from engine.data.utterance import Utterance, check_language

WORD_LANGUAGES = ("en", "de", "es", "it")
WORD_SPEED = 140  # words per minute: a word spoken alone, a little slower than the demo sentences

# One entry per concept: {"id": concept, "en": word, "de": ..., ...}; a data file beside this module.
CONCEPTS: tuple[dict[str, str], ...] = tuple(
    json.loads(importlib.resources.files("engine.data.synth").joinpath("probe_words.json").read_text("utf-8"))
)
CONCEPT_IDS = tuple(c["id"] for c in CONCEPTS)


def words_version() -> str:
    payload = json.dumps([CONCEPTS, WORD_LANGUAGES, WORD_SPEED, BASE_PITCH], ensure_ascii=False)
    return "v1-" + hashlib.sha256(payload.encode()).hexdigest()[:10]


class WordsDemoSource:
    """The bundled word set as a ``Source``: languages ``WORD_LANGUAGES``, one clip per concept, id = concept."""

    name = "words-demo"

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, workers: int = SYNTH_WORKERS):
        root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.dir = root.resolve() / "words" / words_version()
        self.workers = max(1, int(workers))

    def languages(self) -> list[str]:
        return list(WORD_LANGUAGES)

    def splits(self) -> list[str]:
        return []

    def clip_path(self, lang: str, concept: str) -> pathlib.Path:
        return self.dir / lang / f"{concept}.wav"

    def synthesize(self, languages: list[str] | None = None) -> int:
        """Synthesises every missing clip of ``languages`` (default: all); returns how many were written."""
        languages = self.languages() if languages is None else list(languages)
        for lang in languages:
            check_language(lang, self.languages(), "the bundled word set")
        todo = [(lang, c) for lang in languages for c in CONCEPTS if not self.clip_path(lang, c["id"]).is_file()]
        if not todo:
            return 0
        espeak = find_espeak()
        for lang in languages:
            (self.dir / lang).mkdir(parents=True, exist_ok=True)
        run_jobs(lambda job: self._synthesize_one(espeak, *job), todo, self.workers)
        return len(todo)

    def _synthesize_one(self, espeak: str, lang: str, concept: dict) -> None:
        target = self.clip_path(lang, concept["id"])
        speak(espeak, lang, concept[lang], WORD_SPEED, BASE_PITCH, target, f"word clip {lang}/{concept['id']}")

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), "the bundled word set")
        self.synthesize([lang])
        out = []
        for concept in CONCEPTS:
            path = self.clip_path(lang, concept["id"])
            out.append(
                Utterance(
                    id=concept["id"],
                    lang=lang,
                    audio=str(path),
                    path=str(path),
                    transcription=concept[lang],
                    raw_transcription=concept[lang],
                    speaker=f"espeak-ng:{lang}",
                    duration_s=soundfile.info(str(path)).duration,
                )
            )
        return out
