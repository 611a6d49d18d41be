"""Staged blocks of a similarity store: a pair-layer scored in utterance blocks, perhaps by several processes, is
staged block by block and committed whole.

A pair too large for one work unit, or for the memory budget, is scored in blocks of rows x columns
(``engine.pipelines.seqsim.tiling.tiles``), which processes claim apart. A block is never written into the pair's
matrix chunk: two processes writing parts of one chunk would each read, modify and write the whole chunk, and one
could lose the other's part. Each block is staged as an object of its own instead::

    OUT/staging/<measure>/<a>__<b>/<layer>/<R>x<C>-<digest>/<i>.<j>.npz    rows, cols: layer-store utterance indices;
                                                                             scores: f32[rows, cols]; extra: JSON

``R x C`` is the pair's grid of blocks; ``digest`` is the job's hash of what the matrix is computed from and with (the
done utterances, the compute dtype, the measure's settings), so that a block staged by a run with other settings or
another grid is never taken for one of this run. Once every block of the grid is staged, one process reads them, writes
the whole matrix (one chunk, ``SimilarityStore.write_layer``, then the done marker) and deletes the pair-layer's staging
folder. Readers read a chunk only under its done marker, so they never see a partial matrix; a kill at any point leaves
staged blocks (a resume computes only the missing ones) or a complete pair-layer. Two processes committing the same
pair-layer write the same bytes. The zip container's CRC-32 is checked on every read: a damaged block is a DamageError
naming it.

The staging folder is not part of the format readers know (``engine.stores.similarity``); a store with no
unfinished split pair has none, and readers ignore it. Blocks staged for a pair-layer that another process committed
meanwhile, with the same digest (a worker of another ``--memory_budget`` plans other blocks), are never read: the run
that finds them after its commit, or at its end (``tidy_staging``), deletes them, and ``babelgrid verify`` names them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import zipfile
from typing import NamedTuple

import numpy as np
import tensorstore as ts

from engine.stores.integrity import DamageError
from engine.stores.kv import read_json, read_value, storage_error, write_value
from engine.stores.similarity import DONE_DIR, SimilarityStore, pair_key

STAGING = "staging/"
# A staged block's key: the pair-layer, its grid and digest, the block (the module docstring)
STAGED_KEY = re.compile(
    rf"{STAGING}(?P<measure>[^/]+)/(?P<pair>[^/]+)/(?P<layer>\d+)/(?P<grid>\d+x\d+)-(?P<digest>[0-9a-f]{{16}})/"
    r"(?P<block>\d+\.\d+)\.npz"
)
NOT_SETTINGS = ("layer", "nonconverged", "fallback")  # done-marker fields that say what came out, not what went in


def settings_digest(settings: dict) -> str:
    """What staged blocks are computed from and with (the done utterances, the measure's settings, the compute
    dtype): 16 hex digits of the SHA-256 of ``settings``' JSON, keys sorted. Staged blocks are keyed by it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def marker_digest(marker: dict) -> str:
    """The digest of the blocks a done marker's matrix was committed from: the marker's fields but those saying
    what came out (``NOT_SETTINGS``) are the settings its blocks were staged with."""
    return settings_digest({k: v for k, v in marker.items() if k not in NOT_SETTINGS})


def parse_block(key: str, data: bytes, url: str) -> StagedBlock:
    """A staged block from its bytes; a DamageError naming ``key`` when they do not read back whole (the zip
    container's CRC-32 is checked as each array is read)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            staged = StagedBlock(z["rows"], z["cols"], z["scores"], json.loads(z["extra"].tobytes()))
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DamageError(
            f"damaged data in {url!r}: the staged block {key} does not read back ({e}); it is deleted, "
            "rerun the seqsim job to compute it again"
        ) from None
    if staged.scores.shape != (len(staged.rows), len(staged.cols)):
        raise DamageError(f"damaged data in {url!r}: the staged block {key} has scores of another shape")
    return staged


class StagedBlock(NamedTuple):
    rows: np.ndarray  # i64[r] layer-store utterance indices of the first language
    cols: np.ndarray  # i64[c] of the second
    scores: np.ndarray  # f32[r, c], NaN where the measure could not measure
    extra: dict  # measure-specific done-marker fields of the block (nonconverged, fallback)


class StagingSimilarityStore(SimilarityStore):
    """A similarity store that also stages blocks of split pair-layers (see the module docstring)."""

    def layer_marker(self, measure: str, a: str, b: str, layer: int) -> dict | None:
        """The done marker of one layer of (measure, a, b), None when not done: one read (``done_markers`` lists and
        reads every layer's)."""
        key = f"{pair_key(measure, a, b)}{DONE_DIR}{int(layer)}.json"
        return read_json(self._kv, key, self.url, sealed=self.sealed, fix=self._fix)

    def _staging(self, measure: str, a: str, b: str, layer: int, grid: tuple[int, int] | None = None, digest=""):
        key = f"{STAGING}{pair_key(measure, a, b)}{int(layer)}/"
        return key if grid is None else f"{key}{grid[0]}x{grid[1]}-{digest}/"

    def stage_block(self, measure, a, b, layer, grid, digest, block: tuple[int, int], staged: StagedBlock) -> None:
        """Writes one block (one object, whole or not at all)."""
        buffer = io.BytesIO()
        extra = np.frombuffer(json.dumps(staged.extra).encode(), np.uint8)
        np.savez(buffer, rows=np.asarray(staged.rows, np.int64), cols=np.asarray(staged.cols, np.int64),
                 scores=np.asarray(staged.scores, np.float32), extra=extra)  # fmt: skip
        key = f"{self._staging(measure, a, b, layer, grid, digest)}{block[0]}.{block[1]}.npz"
        write_value(self._kv, key, buffer.getvalue(), self.url)

    def staged(self, measure, a, b, layer, grid, digest) -> set[tuple[int, int]]:
        """The blocks of this grid and digest that are staged."""
        prefix = self._staging(measure, a, b, layer, grid, digest)
        try:
            keys = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0"), len(prefix)).result()
        except ValueError as e:
            raise storage_error("list the staged blocks", prefix, self.url, e) from None
        out = set()
        for key in keys:
            parts = key.decode().removesuffix(".npz").split(".")
            if key.decode().endswith(".npz") and len(parts) == 2 and all(p.isdigit() for p in parts):
                out.add((int(parts[0]), int(parts[1])))
        return out

    def read_block(self, measure, a, b, layer, grid, digest, block: tuple[int, int]) -> StagedBlock | None:
        """One staged block; None when it is gone (another process committed the pair-layer meanwhile); a
        DamageError naming it when it does not read back whole."""
        key = f"{self._staging(measure, a, b, layer, grid, digest)}{block[0]}.{block[1]}.npz"
        found = read_value(self._kv, key, self.url)
        if found.state != "value":
            return None
        return parse_block(key, bytes(found.value), self.url)

    def committed_staging(self) -> list[str]:
        """The staging folders (``.../<R>x<C>-<digest>/``) of pair-layers whose done marker was committed from blocks
        of that digest: blocks nothing will read (staged by a process that lost the race to commit, or killed before
        it deleted them). One listing of the staging folder and a marker read per staged pair-layer."""
        try:
            keys = [k.decode() for k in self._kv.list(ts.KvStore.KeyRange(STAGING, STAGING[:-1] + "0")).result()]
        except ValueError as e:
            raise storage_error("list the staged blocks", STAGING, self.url, e) from None
        found = {m.group("measure", "pair", "layer", "grid", "digest") for k in keys if (m := STAGED_KEY.fullmatch(k))}
        markers: dict[tuple, str | None] = {}
        out = []
        for measure, pair, layer, grid, digest in sorted(found):
            if (measure, pair, layer) not in markers:
                key = f"{measure}/{pair}/{DONE_DIR}{layer}.json"
                try:
                    marker = read_json(self._kv, key, self.url, sealed=self.sealed, fix=self._fix)
                except DamageError:
                    marker = None  # verify names it; its blocks may be needed again
                markers[measure, pair, layer] = None if marker is None else marker_digest(marker)
            if markers[measure, pair, layer] == digest:
                out.append(f"{STAGING}{measure}/{pair}/{layer}/{grid}-{digest}/")
        return out

    def drop_block(self, measure, a, b, layer, grid, digest, block: tuple[int, int]) -> None:
        key = f"{self._staging(measure, a, b, layer, grid, digest)}{block[0]}.{block[1]}.npz"
        write_value(self._kv, key, None, self.url)

    def drop_staged(self, measure, a, b, layer, grid: tuple[int, int] | None = None, digest="") -> None:
        """Deletes every staged block of one pair-layer (every grid and digest: after its matrix is committed), or
        those of one ``grid`` and ``digest``."""
        prefix = self._staging(measure, a, b, layer, grid, digest)
        try:
            self._kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
        except ValueError as e:
            raise storage_error("delete the staged blocks", prefix, self.url, e) from None

    def tidy_staging(self) -> None:
        """Deletes the blocks staged for pair-layers committed with their digest (``committed_staging``), then the
        empty staging folders a local store keeps (object stores have no folders); blocks of a pair-layer not
        committed, or being computed again with other settings, stay."""
        for prefix in self.committed_staging():
            try:
                self._kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
            except ValueError as e:
                raise storage_error("delete the staged blocks", prefix, self.url, e) from None
        if "://" in self.url and not self.url.startswith("file://"):
            return
        root = pathlib.Path(self.url.removeprefix("file://")) / STAGING
        for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):  # deepest first
            try:
                pathlib.Path(folder).rmdir()  # only when empty
            except OSError:
                pass
