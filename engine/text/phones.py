"""Words to IPA phones (phonemizer's espeak-ng backend) and a normalised phone distance between two words.

Phones: each word is phonemised alone by espeak-ng in its own language, without stress, then cleaned to IPA
segments that panphon knows (``ipa_segments``): espeak writes a few non-IPA symbols (``ᵻ``, ``ɚ``, ASCII ``g``) that
are mapped to their IPA equivalents, and anything else panphon cannot segment (stress, tie marks, language-switch
flags) is dropped.

Distance: panphon's feature edit distance over the segments (substituting two segments costs the fraction of
their 24 articulatory features that differ; inserting or deleting one costs about 1, panphon's weights), divided
by the longer word's segment count, so 0 = the same phones and 1 = nothing in common. Chosen over a plain
Levenshtein on phone symbols (rapidfuzz) because espeak's voices spell near-identical sounds with different
symbols across languages (German ``ʊ`` and Italian ``u``, Spanish ``o`` and German ``oː``): plain Levenshtein
counts those as wholly different, the feature distance as a small step, and cross-lingual "sounds alike" is what
the measure is for.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil

from engine.errors import BabelgridError, LanguageError
from engine.languages import language_key

# espeak-ng voice for a language code where the code itself is not a voice (or not the usual one).
ESPEAK_VOICES = {"en": "en-us", "zh": "cmn", "yue": "yue", "fa": "fa", "no": "nb", "nb": "nb"}
# espeak-ng symbols outside IPA (or outside panphon's table) and their IPA equivalents.
ESPEAK_TO_IPA = {"ᵻ": "ɨ", "ɚ": "ər", "ɝ": "ɜr", "g": "ɡ", "ɬ": "ɬ", "r̝": "r"}


class PhonesError(BabelgridError, RuntimeError):
    """espeak-ng or phonemizer is missing or cannot phonemise."""


def espeak_voice(lang: str) -> str:
    """The espeak-ng voice for a language code: the regional voice where espeak-ng has it (FLEURS ``pt_br`` ->
    ``pt-br``, ``es_419`` -> ``es-419``), else ``ESPEAK_VOICES`` or the code itself (``de_de`` -> ``de``), else the
    language's own-country voice (``fr`` -> ``fr-fr``: espeak-ng has no plain ``fr``), else the same for the
    language's Whisper code (ISO 639-3 ``fra_Latn`` -> ``fr-fr``). Without espeak-ng, the ``ESPEAK_VOICES`` / code
    guess (``_backend`` then says espeak-ng is missing)."""
    code = lang.strip().lower().replace("-", "_")
    first = code.split("_", 1)[0]
    guess = ESPEAK_VOICES.get(first, first)
    voices = _voices()
    regional = code.replace("_", "-")
    key = language_key(lang)  # an ISO 639-3 code's Whisper code ("eng_Latn" -> "en"): espeak-ng's voice names
    candidates = (ESPEAK_VOICES.get(regional), regional if "_" in code else None, guess, f"{first}-{first}",
                  ESPEAK_VOICES.get(key, key), f"{key}-{key}")  # fmt: skip
    for voice in candidates:
        if voice is not None and voice in voices:
            return voice
    return guess


@functools.cache
def _voices() -> frozenset[str]:
    """espeak-ng's voices as phonemizer names them; empty without espeak-ng."""
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        return frozenset()
    from phonemizer.backend import EspeakBackend

    return frozenset(EspeakBackend.supported_languages())


@functools.cache
def _feature_table():
    import panphon

    return panphon.FeatureTable()


@functools.cache
def _distance():
    import panphon.distance

    return panphon.distance.Distance()


def ipa_segments(text: str) -> tuple[str, ...]:
    """IPA segments panphon knows in espeak's output ``text`` (after ``ESPEAK_TO_IPA``); the rest is dropped."""
    for old, new in ESPEAK_TO_IPA.items():
        text = text.replace(old, new)
    return tuple(_feature_table().ipa_segs(text))


@functools.cache
def _backend(voice: str):
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        raise PhonesError(
            "espeak-ng is not installed (phonemizer's backend): `make espeak`, or apt-get install espeak-ng "
            "(brew install espeak-ng on macOS)"
        )
    from phonemizer.backend import EspeakBackend

    if voice not in _voices():
        raise LanguageError(f"espeak-ng has no voice {voice!r}; add the language's voice to ESPEAK_VOICES")
    # remove-flags: a foreign word gets espeak's other-language pronunciation without the "(en)" markers in the text.
    # The quiet logger: phonemizer warns when espeak splits a word in two ("o'clock"), which one word a line
    # makes harmless.
    quiet = logging.getLogger("babelgrid.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(
        voice, preserve_punctuation=False, with_stress=False, language_switch="remove-flags", logger=quiet
    )


def covers(lang: str) -> bool:
    """Whether espeak-ng has a voice for ``lang``."""
    try:
        _backend(espeak_voice(lang))
    except LanguageError:
        return False
    return True


def phonemize_words(lang: str, words: list[str]) -> list[tuple[str, ...]]:
    """IPA segments of each word (a word alone, in language ``lang``); an empty tuple where espeak gives none."""
    if not words:
        return []
    from phonemizer.separator import Separator

    backend = _backend(espeak_voice(lang))
    # One call for all words: espeak starts once. The word separator keeps words apart; there is one word per line.
    text = backend.phonemize(list(words), separator=Separator(phone="", word=" ", syllable=""), strip=True, njobs=1)
    return [ipa_segments(t.replace(" ", "")) for t in text]


# A phone-recognition model's output (POWSM's ``<pr>`` task): every phone a ``/.../`` token, word breaks dropped.
_PHONE_TOKEN = re.compile(r"/([^/]+)/")


def phone_tokens(text: str) -> tuple[str, ...]:
    """The IPA segments of a phone recogniser's output (``/pʰ//ɔ//s/`` -> ``pʰ ɔ s``): each ``/.../`` token cleaned
    to panphon's segments as espeak's are (``ipa_segments``), so that both sides of a phone error rate spell a sound
    alike; text outside the slashes is dropped."""
    return tuple(seg for phone in _PHONE_TOKEN.findall(text) for seg in ipa_segments(phone))


def sentence_phones(lang: str, words: list[str]) -> tuple[str, ...]:
    """The IPA segments of a sentence's words (``phonemize_words``) in order, word breaks dropped: the reference of a
    phone error rate."""
    return tuple(seg for word in phonemize_words(lang, words) for seg in word)


def phone_distance(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Feature edit distance of two segment sequences over the longer one's length: 0 same, 1 nothing shared;
    NaN when either is empty."""
    if not a or not b:
        return float("nan")
    return float(_distance().feature_edit_distance("".join(a), "".join(b))) / max(len(a), len(b))
