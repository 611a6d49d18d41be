"""Whom the decode job's translate hypotheses are scored against: English references, from ``--references`` or the
store's English language."""

from __future__ import annotations

from engine.languages import is_english
from engine.pipelines.decode.config import DecodeConfig, DecodeError


def english_language(reader) -> str | None:
    """The store's English language (the first that ``is_english``), or None."""
    return next((lang for lang in reader.languages() if is_english(lang)), None)


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
