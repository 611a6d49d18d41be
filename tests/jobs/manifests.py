"""Manifests of real FLEURS clips for the jobs' tests (``manifest:<path>`` datasets, one JSON object a line)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence


def write_fleurs_manifest(
    path: pathlib.Path,
    fleurs_dir: pathlib.Path,
    clips: Sequence[str],
    *,
    no_text: str | None = None,
    extra_rows: Iterable[dict] = (),
) -> pathlib.Path:
    """``path`` listing ``fleurs-<clip>.ogg`` for each of ``clips`` (``"de-009"``) with its sidecar transcript, but
    for the clip id ``no_text`` (listed without one), then ``extra_rows`` as they are."""
    rows = []
    for name in clips:
        clip = fleurs_dir / f"fleurs-{name}.ogg"
        row = dict(id=clip.stem, lang=name.split("-")[0], path=str(clip))
        if clip.stem != no_text:
            row["transcription"] = clip.with_suffix(".txt").read_text(encoding="utf-8").strip()
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in [*rows, *extra_rows]))
    return path
