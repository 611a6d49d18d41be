"""A dataset's revision: the string a store records (``created.dataset_revision``) so that a resume against a changed
dataset is refused.

A Hub dataset's revision is its commit. A local dataset's is a digest of the files its listing reads, named relative
to its root (so that moving the folder keeps it): the whole content of the small ones (TSV and JSON lists, manifests,
transcripts, ``state.json``), the size and last ``TAIL_BYTES`` of the large ones (Arrow and Parquet data, where a
Parquet file keeps its footer of row groups and offsets), and only the name and size of each audio clip. Hashing
every clip of a corpus would read it all before the first utterance is encoded; a clip changed in place to the same
size goes unnoticed, a changed list or transcript, an added, removed or renamed clip do not.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Iterable

WHOLE_BYTES = 1 << 20  # files up to this size are hashed whole
TAIL_BYTES = 1 << 16  # of larger files: their size and this many bytes at the end


def files_revision(
    root: str | os.PathLike, files: Iterable[str | os.PathLike], clips: Iterable[str | os.PathLike] = ()
) -> str:
    """``files-sha256:<hex>`` over each file's name relative to ``root``, size and content (or tail), and each
    clip's name and size; sorted by name."""
    root = pathlib.Path(root)
    digest = hashlib.sha256()
    entries = [(pathlib.Path(f), True) for f in files] + [(pathlib.Path(f), False) for f in clips]
    for path, read in sorted(entries):
        size = path.stat().st_size
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = path.name
        digest.update(f"{name}\0{size}\0".encode())
        if read:
            with path.open("rb") as f:
                if size > WHOLE_BYTES:
                    f.seek(size - TAIL_BYTES)
                digest.update(f.read())
    return f"files-sha256:{digest.hexdigest()}"


def texts_revision(parts: Iterable[str]) -> str:
    """``sha256:<hex>`` of strings (a listing already read: names, texts), in the order given."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return f"sha256:{digest.hexdigest()}"


def source_revision(source) -> str | None:
    """The revision of a source that states one (``source.revision()``), else None (the demo sets: synthesised)."""
    revision = getattr(source, "revision", None)
    return revision() if callable(revision) else None
