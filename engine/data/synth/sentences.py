"""The demo set: 30 everyday sentences in 8 languages, synthesised with espeak-ng on first use.

It exists so that a fresh checkout can run every job end to end with no download: the sentences are parallel (the
i-th sentence of every language is a translation of the same English sentence, id ``demo-NNN``), so cross-lingual
comparisons have something to find. Synthetic speech is not a benchmark; use FLEURS for numbers you report.

Clips are cached as ``<cache>/demo/<version>/<lang>/<id>.wav`` (``engine.data.synth.source``). ``<cache>`` is the
``cache_dir`` argument, else ``$BABELGRID_CACHE``, else ``$XDG_CACHE_HOME/babelgrid``, else ``~/.cache/babelgrid``.
``<version>`` hashes the sentences and voice settings.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json

from engine.data.synth.espeak import BASE_PITCH
from engine.data.synth.source import SynthesisedSource, SynthItem

DEMO_LANGUAGES = ("en", "de", "es", "it", "pl", "sv", "tr", "ru")  # voices espeak-ng 1.51 speaks well
BASE_SPEED = 150  # words per minute; espeak-ng's default, 175, runs words together at sentence ends

# Per sentence (the same in every language, so a sentence keeps its rhythm across translations): speed 150-170 wpm,
# pitch 42-58. Deterministic, so every machine synthesises the same durations from the same espeak-ng version.
_SPEED_STEPS = (0, 10, 5, 20, 15)
_PITCH_STEPS = (0, 8, -8, 4, -4, 6, -6)

# One entry per sentence id, a data file beside this module; every entry translates the English one. Numbers are
# partly digits, partly words, so the set exercises both.
SENTENCES: tuple[dict[str, str], ...] = tuple(
    json.loads(importlib.resources.files("engine.data.synth").joinpath("demo_sentences.json").read_text("utf-8"))
)

DEMO_IDS = tuple(f"demo-{i:03d}" for i in range(len(SENTENCES)))


def voice_settings(index: int) -> tuple[int, int]:
    """(speed in words per minute, pitch 0-99) of sentence ``index``, the same in every language."""
    return BASE_SPEED + _SPEED_STEPS[index % len(_SPEED_STEPS)], BASE_PITCH + _PITCH_STEPS[index % len(_PITCH_STEPS)]


def demo_version() -> str:
    """The cache folder name: a hash of everything that shapes the audio except espeak-ng's own version."""
    payload = json.dumps(
        [SENTENCES, DEMO_LANGUAGES, [voice_settings(i) for i in range(len(SENTENCES))]], ensure_ascii=False
    )
    return "v1-" + hashlib.sha256(payload.encode()).hexdigest()[:10]


class DemoSource(SynthesisedSource):
    """The demo set as a ``Source``: ``languages()`` are ``DEMO_LANGUAGES``, ids ``demo-000`` ..., no splits."""

    name = "demo"
    folder = "demo"
    what = "the demo set"
    clip_kind = "demo clip"

    def languages(self) -> list[str]:
        return list(DEMO_LANGUAGES)

    def items(self) -> list[SynthItem]:
        return [SynthItem(DEMO_IDS[i], s, *voice_settings(i)) for i, s in enumerate(SENTENCES)]

    def version(self) -> str:
        return demo_version()
