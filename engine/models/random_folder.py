"""Small random-weight model folders of every family, in the layout the hub gives, written without torch or the hub:
what ``babelgrid random-model`` writes, to try any family's jobs where its weights cannot be downloaded.

    from engine.models.random_folder import write_random_folder
    written = write_random_folder("parakeet", "/tmp/parakeet")      # layers, width, heads: the kind's defaults
    print(written.report())                                        # then: python -m jobs.encode --model /tmp/parakeet

The kinds are the registry's (``engine.models.family.FAMILIES``, each entry's ``random_kinds``); every family writes
its own files in its own ``random_folder`` module (``engine.models.common.random_weights`` says how the weights are
drawn). A folder is written beside ``out`` first, checked to be recognised as its family, then moved into place:
``out`` must not exist or be empty, or, with ``force``, be a folder this module wrote before (it holds ``MARKER``),
which is then replaced; any other folder is never touched.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import shutil
import tempfile

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, write_json
from engine.models.family import FAMILIES, Family, detect_family

MARKER = "random_model.json"  # what the folder was written as: kind, sizes, seed


@dataclasses.dataclass(frozen=True)
class Written:
    """A random folder written: its kind, family, where it is, its sizes and seed, and its files with their sizes."""

    kind: RandomKind
    family: str
    folder: pathlib.Path
    sizes: Sizes
    seed: int
    files: tuple[tuple[str, int], ...]  # (path relative to the folder, bytes)

    def encode_command(self) -> str:
        """The command that encodes the demo set with the folder (its store beside it)."""
        model, out = shlex.quote(str(self.folder)), shlex.quote(f"{self.folder}-layers")
        return f"python -m jobs.encode --model {model} --out {out}"

    def report(self) -> str:
        lines = [
            f"wrote a random-weight {self.kind.name} ({self.family} family; {self.kind.imitates}'s layout; "
            f"{self.sizes.text()}; seed {self.seed}) to {self.folder}"
            + (f": {self.kind.note}" if self.kind.note else ""),
            *(f"  {name}  {_size(n)}" for name, n in self.files),
            f"next: {self.encode_command()}",
        ]
        return "\n".join(lines)


def kinds() -> dict[str, tuple[Family, RandomKind]]:
    """Every kind by its name, in the registry's order."""
    return {kind.name: (family, kind) for family in FAMILIES.values() for kind in family.random_kinds}


def find_kind(name: str) -> tuple[Family, RandomKind]:
    """The family and kind ``name`` names; a ValueError listing the kinds otherwise."""
    found = kinds().get(name)
    if found is not None:
        return found
    raise ValueError(f"kind {name!r} is none of babelgrid's random-model kinds: {', '.join(kinds())}")


def write_random_folder(
    kind: str,
    out: str | os.PathLike,
    *,
    layers: int | None = None,
    width: int | None = None,
    heads: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> Written:
    """Write a random-weight folder of ``kind`` at ``out`` (the module docstring); sizes left None are the kind's
    defaults. ``ValueError`` for an unknown kind or unusable sizes, ``FileExistsError`` for an ``out`` it may not
    write."""
    family, random_kind = find_kind(kind)
    given = {"layers": layers, "width": width, "heads": heads}
    sizes = dataclasses.replace(random_kind.sizes, **{k: v for k, v in given.items() if v is not None})
    folder = pathlib.Path(out).expanduser().absolute()
    _check_out(folder, force)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        random_kind.write(staging, sizes, np.random.default_rng(seed))
        found = detect_family(staging).name
        if found != family.name:  # a writer that does not give its family's layout: a bug, named before any move
            raise RuntimeError(f"the {random_kind.name} folder written reads as a {found} model, not {family.name}")
        record = {"written_by": "babelgrid random-model", "kind": random_kind.name, "imitates": random_kind.imitates}
        write_json(staging / MARKER, {**record, **dataclasses.asdict(sizes), "seed": seed})
        if folder.exists():
            _check_out(folder, force)  # again: nothing may have appeared in it meanwhile
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return Written(random_kind, family.name, folder, sizes, seed, tuple(files))


def _check_out(folder: pathlib.Path, force: bool) -> None:
    """Refuses an ``out`` that is a file, or a folder with files in it unless ``force`` and this module wrote it."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--out {str(folder)!r} is a file; give a new folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not force:
        raise FileExistsError(
            f"--out {str(folder)!r} is not empty; give a new folder, or --force to replace a folder random-model wrote"
        )
    if not (folder / MARKER).is_file():
        raise FileExistsError(
            f"--out {str(folder)!r} holds files random-model did not write (it has no {MARKER}); --force replaces only "
            "folders random-model wrote: give a new folder"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"
