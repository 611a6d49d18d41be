"""What every decode path computes of a hypothesis the same way: Whisper's compression ratio of a text (the skip
reason of audio that cannot be decoded is ``engine.pipelines.stages.windows.audio_skip_reason``)."""

from __future__ import annotations

import zlib


def compression_ratio(text: str) -> float:
    """Whisper's ``compression_ratio``: UTF-8 bytes over their zlib-compressed size (its gzip ratio)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
