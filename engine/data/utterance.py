"""One utterance of a speech dataset, the ``Source`` protocol every dataset follows, and their errors.

Kept apart from ``engine.data.sources`` so that the demo set (a source itself) and the other sources can share
them without importing each other.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.data.audio import SAMPLE_RATE, AudioInfo, load_audio, probe_audio
from engine.errors import AudioError, BabelgridError, LanguageError
from engine.languages import fleurs_to_whisper

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


class DatasetError(BabelgridError, ValueError):
    """A dataset cannot be listed: unknown spec, bad layout, missing columns, unreachable Hub."""


@runtime_checkable
class LazyAudio(Protocol):
    """Encoded audio fetched only when an utterance is loaded (one row of a Parquet file on the Hub, read by range
    requests), so that listing a large corpus downloads no audio."""

    def read(self) -> bytes: ...


AudioRef = str | bytes | memoryview | LazyAudio  # a path, the encoded bytes, or bytes fetched on ``load``


@dataclasses.dataclass(frozen=True, kw_only=True)
class Utterance:
    """One recording of one sentence in one language. The audio is decoded only by ``load``."""

    id: str
    lang: str
    # A path, or the encoded bytes (FLEURS Parquet: a read-only view into the memory-mapped Arrow cache, so that
    # listing a split copies no audio), or a ``LazyAudio`` read on ``load``. Left out of ==, hash and repr: identity
    # is (lang, id, recording, path).
    audio: AudioRef = dataclasses.field(repr=False, compare=False)
    path: str  # for the record: the file path, or the original file name when ``audio`` is bytes
    recording: int = 0
    transcription: str | None = None
    raw_transcription: str | None = None  # FLEURS only: the text as read, cased and punctuated
    # The text in another language, where the dataset pairs the speech with one (CoVoST 2: the target translation).
    translation: str | None = None
    speaker: str | None = None
    gender: str | None = None
    duration_s: float | None = None  # seconds, when the dataset states it; None rather than decoding to find out

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"utterance id must be a non-empty str, got {self.id!r}")
        if not isinstance(self.recording, int) or self.recording < 0:
            raise ValueError(f"utterance {self.lang}/{self.id}: recording must be an int >= 0, got {self.recording!r}")

    @property
    def whisper_lang(self) -> str | None:
        """Whisper's code for ``lang`` (``en_us`` -> ``en``), or None when Whisper has no such language."""
        try:
            return fleurs_to_whisper(self.lang)
        except LanguageError:
            return None

    @property
    def key(self) -> tuple[str, str, int]:
        """(lang, id, recording): unique within one split of one source."""
        return (self.lang, self.id, self.recording)

    def load(self, sample_rate: int = SAMPLE_RATE, *, allow_silent: bool = False) -> np.ndarray:
        """Decodes the audio: f32[samples] mono at ``sample_rate``. Raises ``AudioError`` subclasses naming ``path``."""
        return load_audio(self._named_audio(), sample_rate=sample_rate, allow_silent=allow_silent)

    def probe(self) -> AudioInfo:
        """The audio's header (rate, channels, frames) without decoding; ``AudioError`` subclasses name ``path``."""
        return probe_audio(self._named_audio())

    def _named_audio(self) -> str | io.BytesIO:
        if isinstance(self.audio, str):
            return self.audio
        # engine.data.audio names bytes "<bytes>"; a named file object makes its errors name the clip instead.
        stream = io.BytesIO(self.audio.read() if isinstance(self.audio, LazyAudio) else self.audio)
        stream.name = self.path
        return stream

    def validate(self, *, allow_silent: bool = False) -> AudioError | None:
        """The ``AudioError`` that ``load`` would raise (missing, corrupt, empty, silent, ...), or None if it loads."""
        try:
            self.load(allow_silent=allow_silent)
        except AudioError as e:
            return e
        return None


@runtime_checkable
class Source(Protocol):
    """A dataset: languages, splits, and per (language, split) a deterministic list of utterances.

    The order of ``utterances`` is the store's utterance index: the same files give the same order on every call.
    """

    name: str

    def languages(self) -> list[str]: ...

    def splits(self) -> list[str]:
        """Split names; empty for sources without splits, whose ``utterances`` ignore ``split``."""
        ...

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]: ...


def check_language(lang: str, available: Sequence[str], where: str) -> None:
    if lang not in available:
        raise LanguageError(f"{where} has no language {lang!r}; available: {', '.join(available) or '(none)'}")


def number_recordings(rows: Iterable[dict[str, Any]]) -> list[Utterance]:
    """Utterances from keyword dicts in file order, with ``recording`` counting earlier rows of the same (lang, id)."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    out = []
    for row in rows:
        key = (row["lang"], row["id"])
        out.append(Utterance(recording=seen[key], **row))
        seen[key] += 1
    return out


def text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_text(path: str | os.PathLike, what: str, *, encoding: str = "utf-8") -> str:
    """The text of a dataset's file (a manifest, a transcript, a TSV); one that is not UTF-8 (Latin-1, UTF-16) is a
    DatasetError naming the file, the line and the byte, never a traceback of the whole job."""
    data = pathlib.Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{what} {str(path)!r} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (byte {e.start}) "
            "cannot be decoded; save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT` for Latin-1 text)"
        ) from None


def is_audio(path: pathlib.Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")
