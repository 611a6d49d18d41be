"""The manifest of a training checkpoint: ``<step>/checksums.json``, the size and SHA-256 of every file of its
orbax state, hashed after orbax finished (written by ``engine.pipelines.stages.checkpoints``, read by its restore
and by ``babelgrid verify``)::

    {"format": 1, "algorithm": "sha256", "files": {"state/...": {"size": bytes, "sha256": hex}}}

One rule judges a checkpoint against it, whatever reads the files (a local folder, a kvstore): ``problem``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

MANIFEST = "checksums.json"
FORMAT = 1


def listed_files(text: bytes | str) -> dict:
    """The ``files`` of a manifest's text; ValueError (or KeyError, TypeError) when it is not one."""
    files = json.loads(text)["files"]
    if not isinstance(files, dict):
        raise TypeError(f"'files' is a {type(files).__name__}, not an object")
    return files


def hashed(data: bytes) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file's bytes, as ``problem``'s ``digest`` returns them."""
    return len(data), hashlib.sha256(data).hexdigest()


def problem(manifest_text: bytes | str | None, digest: Callable[[str], tuple[int, str] | None]) -> str | None:
    """None when the checkpoint agrees with its manifest (``manifest_text``, None when missing), else what is wrong,
    naming the file. ``digest(name)``: ``(size, sha256 hex)`` of the file ``name`` (relative to the checkpoint
    folder), None when it is missing. Files the manifest does not list are orbax's own bookkeeping, not judged."""
    if manifest_text is None:
        return f"it has no {MANIFEST}, though its state/ folder shows it was written with one"
    try:
        listed = listed_files(manifest_text)
    except (ValueError, KeyError, TypeError) as e:
        return f"its {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if not listed:
        return f"its {MANIFEST} lists no file"
    for name, want in sorted(listed.items()):
        found = digest(name)
        if found is None:
            return f"file '{name}' is missing"
        try:
            size, sha = int(want["size"]), str(want["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"its {MANIFEST} entry of '{name}' is unreadable"
        if found[0] != size:
            return f"file '{name}' has {found[0]} bytes, its manifest says {size}"
        if found[1] != sha:
            return f"file '{name}' does not match its sha256 in {MANIFEST}"
    return None
