"""Whom the decode job's hypotheses are scored against, and in which language each store language is decoded: the
English references of translate, and the Whisper language code of a store language (``--decode_as`` applied)."""

from __future__ import annotations

from engine.errors import LanguageError
from engine.languages import fleurs_to_whisper
from engine.pipelines.decode.config import DecodeConfig, DecodeError


def english_language(reader) -> str | None:
    """The store's English language (the first whose Whisper code is ``en``), or None."""
    for lang in reader.languages():
        try:
            if fleurs_to_whisper(lang) == "en":
                return lang
        except LanguageError:
            continue
    return None


def english_references(config: DecodeConfig, reader) -> dict[str, str]:
    """id -> English text for translate: ``config.references`` (TSV id<TAB>text), else the store's English
    transcriptions."""
    if config.references is not None:
        refs = {}
        with open(config.references, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                uid, sep, text = line.rstrip("\n").partition("\t")
                if not sep:
                    raise DecodeError(f"{config.references}:{line_no}: expected 'id<TAB>text', got {line[:60]!r}")
                refs[uid] = text
        return refs
    english = english_language(reader)
    rows = reader.arrays(english).rows
    return {r.id: r.transcription for r in reversed(rows) if r.transcription}  # the first recording wins
