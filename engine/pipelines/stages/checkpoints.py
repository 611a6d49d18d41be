"""Training checkpoints (the finetune and sae jobs'): orbax state and a sha256 manifest, written in a temporary
folder, then renamed.

Layout of ``OUT/checkpoints/``:

- ``<step>/state/``: the orbax checkpoint (``StandardCheckpointer``) of ``{"step", "params", "opt_state"}``;
- ``<step>/checksums.json``: ``{"format": 1, "algorithm": "sha256", "files": {"state/...": {"size": bytes,
  "sha256": hex}}}``, every file under ``state/``, hashed after orbax finished;
- ``<step>.partial/``: a save in progress. Both parts are written there and the folder is renamed to ``<step>`` last,
  so that a kill leaves either no ``<step>`` or one with its manifest. A later start removes what a kill left;
- ``<step>.damaged/``: a checkpoint that failed verification, moved aside when the run fell back past it (the run
  recomputes its steps); delete it when done looking;
- ``<step>/default/`` without a manifest: written before checkpoints carried one (orbax's ``CheckpointManager``
  layout); restored with a warning that it cannot be verified.

Before a restore, checkpoints are verified newest first (every listed file present, with its size and sha256; files
the manifest does not list are not read by orbax, whose index files are listed, and are ignored). The first good one
is restored and each damaged newer one is named in a warning, then moved aside; when none is good,
``CorruptCheckpointError`` names them all. One process writes (as the rest of the job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil

import jax

from engine.errors import CheckpointError
from engine.stores import checkpoint_manifest
from engine.stores.checkpoint_manifest import FORMAT, MANIFEST

log = logging.getLogger(__name__)
KEEP = 2  # checkpoints kept: the newest and one to fall back to
STATE = "state"
LEGACY_ITEM = "default"  # orbax CheckpointManager's folder for its one unnamed item
_BLOCK = 1 << 20  # bytes read at a time while hashing


class CorruptCheckpointError(CheckpointError):
    """Every checkpoint of a run failed verification, so there is nothing trustworthy to resume from."""


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def manifest(folder: pathlib.Path) -> dict:
    """The manifest of every file under ``folder/state`` (paths relative to ``folder``, ``/``-separated, sorted)."""
    files = sorted(p for p in (folder / STATE).rglob("*") if p.is_file())
    return {"format": FORMAT, "algorithm": "sha256",
            "files": {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                      for p in files}}  # fmt: skip


def verify(folder: pathlib.Path) -> str | None:
    """None when ``folder`` (a ``<step>`` checkpoint) agrees with its manifest, else what is wrong, naming the file
    (``checkpoint_manifest.problem``, the rule ``babelgrid verify`` applies too)."""
    path = folder / MANIFEST
    try:
        text = path.read_bytes() if path.is_file() else None
    except OSError as e:
        return f"its {MANIFEST} is unreadable ({type(e).__name__}: {e})"

    def digest(name: str) -> tuple[int, str] | None:
        file = folder / name
        return (file.stat().st_size, _sha256(file)) if file.is_file() else None

    return checkpoint_manifest.problem(text, digest)


def steps(root: pathlib.Path) -> list[int]:
    """The steps of the complete checkpoints under ``root``, newest first."""
    if not root.is_dir():
        return []
    return sorted((int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)


def _orbax():
    import orbax.checkpoint as ocp  # lazy: orbax is slow to import and only the finetune job needs it

    return ocp


def _checkpointer():
    return _orbax().StandardCheckpointer()


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def clean(root: pathlib.Path) -> None:
    """Remove what a killed save left: ``<step>.partial`` folders and orbax's own temporary folders."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.endswith(".partial") or ".orbax-checkpoint-tmp" in p.name:
                _remove(p)


def save(root: pathlib.Path, step: int, state, keep: int = KEEP) -> pathlib.Path:
    """Write ``state`` as checkpoint ``root/<step>`` (state, then manifest, then the rename); keep the newest
    ``keep``. Returns the checkpoint's folder."""
    root = root.resolve()  # orbax wants absolute paths
    partial, final = root / f"{step}.partial", root / str(step)
    _remove(partial)
    partial.mkdir(parents=True)
    with _checkpointer() as checkpointer:
        checkpointer.save(partial / STATE, state)
        checkpointer.wait_until_finished()
    tmp = partial / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest(partial), indent=1))
    _fsync(tmp)
    tmp.replace(partial / MANIFEST)
    _remove(final)  # only a checkpoint this run is about to rewrite anyway: restore moved damaged ones aside
    partial.replace(final)
    _fsync(root)
    for old in steps(root)[keep:]:
        _remove(root / str(old))
    return final


def _restore_legacy(folder: pathlib.Path, abstract):
    log.warning("checkpoint '%s' was written before checkpoints carried checksums: it cannot be verified; "
                "restoring it as it is (the next checkpoint this run writes has them)", folder)  # fmt: skip
    with _checkpointer() as checkpointer:
        return checkpointer.restore(folder / LEGACY_ITEM, abstract)


def restore(root: pathlib.Path, template) -> tuple[int, object]:
    """``(step, state)`` of the newest good checkpoint under ``root``, ``(0, None)`` when there is none.

    ``template``: a state of the same tree, shapes, dtypes and shardings (the initial one). Damaged checkpoints
    newer than the one restored are named in a warning and moved to ``<step>.damaged``; when there are checkpoints
    and none is good, raises ``CorruptCheckpointError`` naming each and what is wrong with it.
    """
    root = root.resolve()
    clean(root)
    abstract = jax.tree.map(_orbax().utils.to_shape_dtype_struct, template)
    damaged: list[tuple[pathlib.Path, str]] = []
    found = None
    for step in steps(root):
        folder = root / str(step)
        if (folder / STATE).is_dir() or (folder / MANIFEST).exists():
            problem = verify(folder)
            if problem is None:
                with _checkpointer() as checkpointer:
                    found = step, checkpointer.restore(folder / STATE, abstract)
                break
            damaged.append((folder, problem))
        elif (folder / LEGACY_ITEM).is_dir():
            try:
                found = step, _restore_legacy(folder, abstract)
                break
            except Exception as e:  # orbax raises many kinds; any of them means this one cannot be resumed from
                damaged.append((folder, f"orbax cannot read it ({type(e).__name__}: {e})"))
        else:
            damaged.append((folder, f"it holds neither {STATE}/ nor orbax's {LEGACY_ITEM}/"))
    if found is None:
        if damaged:
            what = "; ".join(f"'{folder}': {problem}" for folder, problem in damaged)
            raise CorruptCheckpointError(
                f"no checkpoint of this run can be trusted: {what}. Delete the damaged checkpoints "
                f"(rm -r {' '.join(str(f) for f, _ in damaged)}) to train again from step 0 with the same flags, "
                "or rerun with another --out"
            )
        return 0, None
    for folder, problem in damaged:
        aside = folder.with_name(f"{folder.name}.damaged")
        log.warning("checkpoint '%s' is damaged: %s. Resuming from step %d instead and recomputing the steps after "
                    "it (bitwise as before); moved the damaged one to '%s' (delete it when done looking)",
                    folder, problem, found[0], aside)  # fmt: skip
        _remove(aside)
        folder.replace(aside)
    return found
