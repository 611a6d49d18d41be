"""The bundled word set: about 40 concepts as single words in en, de, es, it, voiced by espeak-ng on first use.

It is the probe's demo and test data (``jobs.probe``): the id of a clip is its concept (``dog``, ``poison``), so the
same id across languages is a pair of cross-lingual synonyms. It holds real false friends, so that generated
near-homophones (the nearest word of another concept by phone distance) include pairs such as en "gift" / de "Gift"
(poison), en "kind" / de "Kind" (child), de "Rat" (advice) / en "rat", it "camera" (room) / en "camera", es "carpeta"
(folder) / en "carpet", de "bald" (soon) / en "bald", en "embarrassed" / es "embarazada" (pregnant), en "become" /
de "bekommen" (receive); and translations with little shared sound (dog / Hund / perro / cane).

Clips are cached as ``<cache>/words/<version>/<lang>/<id>.wav`` (espeak-ng's 22.05 kHz WAV) with ``<cache>`` as
for the demo set (``engine.data.demo.default_cache_dir``) and ``<version>`` a hash of the words and voice settings.
Dataset spec: ``words-demo`` (``engine.data.sources.get_source``). Synthetic single words are a smoke test of the
probe, not a benchmark.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.resources
import json
import os
import pathlib
import subprocess
import tempfile

import soundfile

from engine.data.demo import BASE_PITCH, SYNTH_WORKERS, default_cache_dir, find_espeak
from engine.data.utterance import DatasetError, Utterance, check_language

WORD_LANGUAGES = ("en", "de", "es", "it")
WORD_SPEED = 140  # words per minute: a word spoken alone, a little slower than the demo sentences

# One entry per concept: {"id": concept, "en": word, "de": ..., ...}; a data file beside this module.
CONCEPTS: tuple[dict[str, str], ...] = tuple(
    json.loads(importlib.resources.files("engine.data").joinpath("probe_words.json").read_text("utf-8"))
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
        with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
            list(pool.map(lambda job: self._synthesize_one(espeak, *job), todo))
        return len(todo)

    def _synthesize_one(self, espeak: str, lang: str, concept: dict) -> None:
        target = self.clip_path(lang, concept["id"])
        # Temp file then rename, as the demo set does: an interrupted run never leaves half a clip under its name.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".wav.tmp", dir=target.parent)
        os.close(fd)
        try:
            cmd = [espeak, "-b", "1", "-v", lang, "-s", str(WORD_SPEED), "-p", str(BASE_PITCH), "-w", tmp]
            cmd.append(concept[lang])
            result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60)
            if result.returncode != 0 or os.path.getsize(tmp) <= 44:  # a WAV header with no samples
                raise DatasetError(
                    f"espeak-ng failed on word clip {lang}/{concept['id']} (exit {result.returncode}): "
                    f"{result.stderr.strip() or 'no audio written'}; check that `espeak-ng -v {lang} hello` works"
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

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
