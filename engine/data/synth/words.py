"""The bundled word set: about 40 concepts as single words in en, de, es, it, voiced by espeak-ng on first use.

It is the probe's demo and test data (``jobs.probe``): the id of a clip is its concept (``dog``, ``poison``), so the
same id across languages is a pair of cross-lingual synonyms. It holds real false friends, so that generated
near-homophones (the nearest word of another concept by phone distance) include pairs such as en "gift" / de "Gift"
(poison), en "kind" / de "Kind" (child), de "Rat" (advice) / en "rat", it "camera" (room) / en "camera", es "carpeta"
(folder) / en "carpet", de "bald" (soon) / en "bald", en "embarrassed" / es "embarazada" (pregnant), en "become" /
de "bekommen" (receive); and translations with little shared sound (dog / Hund / perro / cane).

Clips are cached as ``<cache>/words/<version>/<lang>/<id>.wav`` (espeak-ng's 22.05 kHz WAV) with ``<cache>`` as
for the demo set (``engine.data.synth.espeak.default_cache_dir``) and ``<version>`` a hash of the words and voice
settings.
Dataset spec: ``words-demo`` (``engine.data.sources.get_source``). Synthetic single words are a smoke test of the
probe, not a benchmark.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json

from engine.data.synth.espeak import BASE_PITCH
from engine.data.synth.source import SynthesisedSource, SynthItem

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


class WordsDemoSource(SynthesisedSource):
    """The bundled word set as a ``Source``: languages ``WORD_LANGUAGES``, one clip per concept, id = concept."""

    name = "words-demo"
    folder = "words"
    what = "the bundled word set"
    clip_kind = "word clip"
    raw_transcription = True

    def languages(self) -> list[str]:
        return list(WORD_LANGUAGES)

    def items(self) -> list[SynthItem]:
        return [SynthItem(c["id"], c, WORD_SPEED, BASE_PITCH) for c in CONCEPTS]

    def version(self) -> str:
        return words_version()
