"""What ``babelgrid verify`` reads and compares, per kind of output, and what ``--repair`` changes.

- **Layer store** (``engine.stores.layers``): every ``lengths`` chunk; every done utterance's shard, all layers (the
  shard index's and every inner chunk's crc32c); that every done utterance has a shard and the frame count its row
  says; the utterance tables; that the arrays' shapes agree with the manifest and the table. Repair: a damaged
  utterance's ``lengths`` entry becomes -1 (not done), and a damaged ``lengths`` chunk is rebuilt from the shards
  that verify cleanly (a done utterance's length is its row's ``n_frames``), so the encode job redoes exactly the
  damaged utterances.
- **Similarity store** (``engine.stores.similarity``): every done marker, and the matrix chunk of every done layer
  of every pair. Repair: the damaged pair-layers' done markers are deleted, so the seqsim job recomputes them.
- **Every Parquet and JSON file** anywhere under the location (job outputs, parts, manifests): read with page CRCs,
  parsed. Repair: a damaged part or merged table is deleted (the job that wrote it redoes the part and rebuilds the
  table); a damaged manifest or utterance table cannot be rebuilt and is only reported.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable

import numpy as np
import tensorstore as ts

from engine.axes import UTTERANCE
from engine.errors import BabelgridError
from engine.stores.integrity import DamageError, read_parquet
from engine.stores.kv import StoreError, read_value
from engine.stores.layers import LayerStore
from engine.stores.schema import LENGTHS_CHUNK, NOT_DONE, STATES, UTTERANCES
from engine.stores.similarity import DONE_DIR, MEASURES, SimilarityError, open_similarity, pair_key

SHARD = re.compile(r"c\.\d+\.(\d+)\.\d+\.\d+")  # a states shard key: c.<layer>.<utterance>.<frame>.<embed>
READS_IN_FLIGHT = 32  # shards read at once
NOT_REPAIRABLE = "none: restore it from a copy, or write the output again into a new folder"


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged thing: what it is, the key, what is wrong, and what ``--repair`` does (or did) about it."""

    what: str  # "de utterance 3 (id '1234')", "seqsim de__en layer 4", "de/parts/00000000.parquet"
    key: str
    problem: str
    repair: str
    fix: Callable[[], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    job: str = "the job that wrote it"  # what to rerun after the repair


@dataclasses.dataclass
class Findings:
    damage: list[Damage] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    checked: dict[str, int] = dataclasses.field(default_factory=dict)
    keys_done: set[str] = dataclasses.field(default_factory=set)  # keys a store check read already

    def count(self, name: str, n: int = 1) -> None:
        self.checked[name] = self.checked.get(name, 0) + n


def _problem(error: BaseException) -> str:
    text = str(error)
    if "NOT_FOUND" in text or "is missing" in text:
        return "missing"
    if "Digest mismatch" in text or "checksum" in text.lower() or "CRC" in text:
        return "checksum mismatch"
    return "unreadable: " + text.splitlines()[0][:160]


def layer_store(url: str, keys: list[str], writable: bool, findings: Findings, bar) -> None:
    """Checks every language of the layer store at ``url``, whose keys are ``keys`` (see the module docstring)."""
    store = LayerStore.open(url)
    if writable:
        store = LayerStore.create_or_open(url, store.info)  # the same manifest: only to write lengths
    for lang in store.languages():
        table_key = f"{lang}/{UTTERANCES}"
        findings.keys_done.add(table_key)
        try:
            arrays = store.language(lang)
        except DamageError as e:
            repair = "deleted: rerun the encode job with the same dataset (it writes the table again)"
            fix = _delete(store._kv, table_key)
            findings.damage.append(Damage(f"{lang} utterance table", table_key, _problem(e), repair, fix, "encode"))
            continue
        except StoreError as e:
            findings.damage.append(Damage(f"{lang} arrays", f"{lang}/", str(e)[:200], NOT_REPAIRABLE))
            continue
        prefix = f"{lang}/{STATES}"
        shards = {int(m.group(1)) for k in keys if k.startswith(prefix) and (m := SHARD.fullmatch(k[len(prefix) :]))}
        _language(store._kv, arrays, lang, shards, findings, bar)


def _language(kv, arrays, lang: str, shards: set[int], findings: Findings, bar) -> None:
    n, rows = arrays.n_utterances, arrays.rows
    lengths = np.full(n, NOT_DONE, np.int32)
    bad_chunks = []
    for first in range(0, n, LENGTHS_CHUNK):
        index = np.arange(first, min(first + LENGTHS_CHUNK, n))
        findings.count("lengths chunks")
        try:
            lengths[index] = arrays.lengths(index)
        except DamageError as e:
            bad_chunks.append((index, e))
    # Utterances whose shard must be read: the done ones, and those of a damaged lengths chunk that have a shard.
    unknown = {int(u) for index, _ in bad_chunks for u in index if int(u) in shards}
    to_read = sorted({int(u) for u in np.flatnonzero(lengths >= 0)} | unknown)
    bad: dict[int, str] = {}
    for u in to_read:
        if u not in shards:
            bad[u] = "missing"
        elif lengths[u] >= 0 and lengths[u] != rows[u].n_frames:
            bad[u] = f"done marker says {lengths[u]} frames, the utterance table {rows[u].n_frames}"
    readable = [u for u in to_read if u not in bad]
    for start in range(0, len(readable), READS_IN_FLIGHT):
        batch = readable[start : start + READS_IN_FLIGHT]
        futures = [arrays.states_store[ts.d[UTTERANCE][u]].read() for u in batch]
        for u, future in zip(batch, futures, strict=True):
            try:
                future.result()
            except ValueError as e:
                bad[u] = _problem(e)
        findings.count("shards", len(batch))
        bar.update(len(batch))
    orphans = sum(1 for u in shards if u < n and lengths[u] < 0 and u not in unknown)
    if orphans:
        findings.notes.append(
            f"{lang}: {orphans} utterances have states but no done marker (an interrupted run): the encode job "
            "redoes them"
        )
    prefix = f"{lang}/{STATES}"
    for u, problem in sorted(bad.items()):
        if u in unknown:
            continue  # reported with its lengths chunk
        what = f"{lang} utterance {u} (id {rows[u].id!r})"
        repair = "marked not done: rerun the encode job"
        findings.damage.append(Damage(what, f"{prefix}c.0.{u}.0.0", problem, repair, _undo(arrays, [u]), "encode"))
    for index, error in bad_chunks:
        rebuilt = np.array(
            [rows[u].n_frames if int(u) in shards and int(u) not in bad else NOT_DONE for u in index], np.int32
        )
        lost = [int(u) for u in index if int(u) in bad]
        what = f"{lang} done markers of utterances {index[0]}..{index[-1]}"
        repair = f"rebuilt from the {int((rebuilt >= 0).sum())} shards that verify"
        if lost:
            repair += f"; {len(lost)} damaged utterances ({', '.join(rows[u].id for u in lost[:5])}) marked not done"
        key = f"{lang}/lengths/c.{index[0] // LENGTHS_CHUNK}"
        fix = _rebuild(kv, key, arrays, index, rebuilt)
        findings.damage.append(Damage(what, key, _problem(error), repair, fix, "encode"))


def _undo(arrays, utterances: list[int]) -> Callable[[], None]:
    def fix():
        arrays.lengths_store[ts.d[UTTERANCE][np.asarray(utterances, np.int64)]].write(NOT_DONE).result()

    return fix


def _rebuild(kv, key: str, arrays, index: np.ndarray, values: np.ndarray) -> Callable[[], None]:
    def fix():
        # Deleted first, so that the write never reads the damaged chunk (a chunk past the array's end is partial,
        # and a partial write reads what is there); a kill in between leaves its utterances not done: safe.
        kv.write(key, None).result()  # None deletes
        arrays.lengths_store[int(index[0]) : int(index[-1]) + 1].write(values).result()

    return fix


def similarity_store(url: str, keys: list[str], kv, findings: Findings, bar) -> None:
    """Checks every done marker and done layer's chunk of the similarity store at ``url``."""
    reader = open_similarity(url)
    for measure in MEASURES:
        for a, b in reader.pairs(measure):
            key = pair_key(measure, a, b)
            findings.keys_done.add(key + "ids.json")
            markers = [k for k in keys if k.startswith(key + DONE_DIR) and k.endswith(".json")]
            for marker_key in markers:
                findings.keys_done.add(marker_key)
                layer = marker_key[len(key + DONE_DIR) : -len(".json")]
                what = f"{measure} {a}__{b} layer {layer}"
                repair = "marked not done: rerun the seqsim job"
                try:
                    _json(kv, marker_key, url)
                    reader.matrix(measure, a, b, int(layer))
                    findings.count("pair-layers")
                except DamageError as e:
                    fix = _delete(kv, marker_key)
                    chunk = f"{key}c.{reader.layers.index(int(layer))}.0.0"
                    findings.damage.append(Damage(what, chunk, _problem(e), repair, fix, "seqsim"))
                except (SimilarityError, StoreError, ValueError) as e:
                    problem = "unreadable: " + str(e)[:160]
                    findings.damage.append(Damage(what, marker_key, problem, repair, _delete(kv, marker_key), "seqsim"))
                bar.update(1)


def _delete(kv, key: str) -> Callable[[], None]:
    def fix():
        kv.write(key, None).result()  # None deletes

    return fix


def _json(kv, key: str, url: str) -> dict:
    value = read_value(kv, key, url)
    if value.state != "value":
        raise StoreError(f"{key} is missing")
    return json.loads(bytes(value.value))


def files(url: str, keys: list[str], kv, findings: Findings, bar) -> None:
    """Reads every Parquet and JSON file among ``keys`` that a store check did not read already."""
    for key in (k for k in keys if k.endswith((".parquet", ".json")) and k not in findings.keys_done):
        if key.endswith(".json"):
            try:
                _json(kv, key, url)
                findings.count("JSON files")
            except (ValueError, StoreError, BabelgridError) as e:
                findings.damage.append(Damage(key, key, "unreadable JSON: " + str(e)[:120], NOT_REPAIRABLE))
            bar.update(1)
            continue
        try:
            read_parquet(read_value(kv, key, url).value, key, url, fix="")
            findings.count("Parquet files")
        except DamageError as e:
            repair = "deleted: rerun the job that wrote it (it redoes a part, and rebuilds a merged table)"
            findings.damage.append(Damage(key, key, _problem(e), repair, _delete(kv, key)))
        bar.update(1)
