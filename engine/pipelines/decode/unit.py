"""What every decode path computes of a hypothesis or a skip the same way: Whisper's compression ratio of a text,
and the skip reason of audio that cannot be decoded."""

from __future__ import annotations

import zlib

from engine.data.audio import AudioNotFoundError, EmptyAudioError, SilentAudioError
from engine.errors import AudioError


def compression_ratio(text: str) -> float:
    """Whisper's ``compression_ratio``: UTF-8 bytes over their zlib-compressed size (its gzip ratio)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def audio_skip_reason(error: AudioError) -> str:
    """The skip reason of audio that cannot be decoded: ``audio_missing``, ``empty_audio`` (0 bytes or 0 samples),
    ``silent_audio`` (digital silence, which the encode job refuses) or ``audio_unreadable`` (anything else)."""
    if isinstance(error, AudioNotFoundError):
        return "audio_missing"
    if isinstance(error, EmptyAudioError):
        return "empty_audio"
    if isinstance(error, SilentAudioError):
        return "silent_audio"
    return "audio_unreadable"
