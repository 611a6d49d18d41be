"""What ``babelgrid verify`` reads and compares, per kind of output, and what ``--repair`` changes.

- **Layer store** (``engine.stores.layers``): every ``lengths`` chunk; every done utterance's shard, all layers (the
  shard index's and every inner chunk's crc32c); that every done utterance has a shard and the frame count its row says,
  and that its states hold no NaN or inf (the encode job never writes them); the utterance tables; that the arrays'
  shapes agree with the manifest and the table; every language's index key and the roster of languages (their digests,
  and that every language found has its index); each language's skip record (``skipped.json``, its digest). Repair: a
  damaged utterance's ``lengths`` entry becomes -1 (not done), and a damaged ``lengths`` chunk is rebuilt from the
  shards that verify cleanly (a done utterance's length is its row's ``n_frames``), so the encode job redoes exactly
  the damaged utterances; a damaged index, roster or skip record is deleted, which the encode job writes again.
- **Similarity store** (``engine.stores.similarity``): every pair's ``ids.json``, every done marker (digests), and the
  matrix chunk of every done layer of every pair, and that no scored cell is inf. Repair: the damaged pair-layers' done
  markers and damaged ``ids.json`` are deleted, so the seqsim job recomputes and rewrites them. Its staged blocks
  (``engine.pipelines.verify.staged``): each read whole; a damaged one deleted, leftovers of committed pair-layers too.
- **Every file babelgrid wrote** anywhere under the location (job outputs, parts, manifests, checkpoints), and only
  those (``engine.pipelines.verify.files``, ``ownership``): a user's own files are named "not ours" and left alone.
  Repair: a damaged part, merged table or output file is deleted (the job that wrote it redoes the part and rebuilds the
  table or file); a damaged manifest cannot be rebuilt and is only reported.
- **A store inside a store** (a babelgrid manifest below a store's root): reported, not repaired (move it out).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import tensorstore as ts

from engine.axes import UTTERANCE
from engine.errors import BabelgridError, StoreError
from engine.stores.integrity import CODECS_ALTERED, DAMAGE_CODES, NON_FINITE, DamageError, damage_kind, is_damage
from engine.stores.kv import METADATA_DAMAGED, read_json, storage_error
from engine.stores.layers import LayerStore
from engine.stores.pair_roster import ROSTER as PAIRS_ROSTER
from engine.stores.records import json_bytes
from engine.stores.schema import (
    LANG,
    LANGUAGES_DIR,
    LENGTHS,
    LENGTHS_CHUNK,
    NOT_DONE,
    RESERVED_LANGS,
    ROSTER,
    SKIPPED,
    STATES,
    UTTERANCES,
)
from engine.stores.similarity import (
    DONE_DIR,
    IDS,
    MEASURES,
    PAIR_SEPARATOR,
    SimilarityError,
    open_similarity,
)

SHARD = re.compile(r"c\.\d+\.(\d+)\.\d+\.\d+")  # a states shard key: c.<layer>.<utterance>.<frame>.<embed>
READS_IN_FLIGHT = 32  # shards read at once
NOT_REPAIRABLE = "none: restore it from a copy, or write the output again into a new folder"
# job outputs that have a digest file (engine.stores.integrity.write_outputs): one without it is damage
OUTPUTS = (".csv", ".tsv", ".png", ".md", ".txt", ".npz", ".srt", ".vtt")
RERUN = "none needed: rerun the {} job (it writes it again)"  # for something missing
DELETED = "deleted: rerun the {} job (it writes it again)"  # for something damaged


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
    leftover: list[str] = dataclasses.field(default_factory=list)  # keys nothing reads, which the repair deletes

    def count(self, name: str, n: int = 1) -> None:
        self.checked[name] = self.checked.get(name, 0) + n


def _problem(error: BaseException) -> str:
    """A damaged thing's problem in a few words, from the error's kind (``integrity.damage_kind``)."""
    return damage_kind(error) or "unreadable: " + str(error).splitlines()[0][:160]


def layer_store(url: str, keys: list[str], writable: bool, findings: Findings, bar) -> None:
    """Checks every language of the layer store at ``url``, whose keys are ``keys`` (see the module docstring)."""
    store = LayerStore.open(url)
    if writable:
        store = LayerStore.create_or_open(url, store.info)  # the same manifest: only to write lengths
    for lang in _languages(store, keys, findings):
        table_key = f"{lang}/{UTTERANCES}"
        metadata = [k for k in keys if k.startswith(f"{lang}/") and k.endswith("/zarr.json")]  # the arrays' own
        findings.keys_done.update([table_key, *metadata])
        try:
            arrays = store.language(lang, indexed=False)
        except DamageError as e:
            if e.problem in (CODECS_ALTERED, METADATA_DAMAGED):  # an array's zarr.json: the language written again
                _language_arrays(store, lang, e.problem, findings)
                continue
            repair = "deleted: rerun the encode job with the same dataset (it writes the table again)"
            fix = _delete(store._kv, table_key)
            findings.damage.append(Damage(f"{lang} utterance table", table_key, _problem(e), repair, fix, "encode"))
            continue
        except StoreError as e:
            # The arrays cannot be opened as the table says: the language is written again whole by the encode rerun
            _language_arrays(store, lang, _short(e), findings)
            continue
        skipped = _skip_record(store, lang, keys, findings)
        prefix = f"{lang}/{STATES}"
        shards = {int(m.group(1)) for k in keys if k.startswith(prefix) and (m := SHARD.fullmatch(k[len(prefix) :]))}
        _language(store._kv, arrays, lang, shards, skipped, findings, bar)


def _language_arrays(store: LayerStore, lang: str, problem: str, findings: Findings) -> None:
    repair = ("the language's arrays, table and index deleted (files of yours in its folder kept): rerun the encode "
              "job (it writes the language again)")  # fmt: skip
    fix = _delete_language(store._kv, lang)
    findings.damage.append(Damage(f"{lang} arrays", f"{lang}/", problem, repair, fix, "encode"))


def _skip_record(store: LayerStore, lang: str, keys: list[str], findings: Findings) -> dict[int, str]:
    """The utterances ``<lang>/skipped.json`` says the encode job skipped, and why: a damaged one is deleted by the
    repair, and the encode rerun, which tries the skipped utterances again (they are not done), writes it again."""
    key = f"{lang}/{SKIPPED}"
    if key not in keys:
        return {}
    findings.keys_done.add(key)
    try:
        skipped = {u: entry["reason"] for u, entry in store.skipped(lang).items()}
        findings.count("JSON files")
        return skipped
    except (DamageError, StoreError) as e:
        repair, fix = DELETED.format("encode"), _delete(store._kv, key)
        findings.damage.append(Damage(f"{lang} skip record", key, _problem(e), repair, fix, "encode"))
        return {}


def language_folders(keys: list[str]) -> set[str]:
    """The folders among a layer store's ``keys`` that hold a language: its utterance table or its lengths array."""
    return {k.split("/", 1)[0] for k in keys if k.endswith((f"/{UTTERANCES}", f"/{LENGTHS}zarr.json"))}


def _languages(store: LayerStore, keys: list[str], findings: Findings) -> list[str]:
    """The languages of the store, from its keys (index keys and language folders), each index key and the roster
    checked: a damaged one is deleted by the repair and a missing one left, for the encode job to write again."""
    indexed = {k[len(LANGUAGES_DIR) : -len(".json")] for k in keys if k.startswith(LANGUAGES_DIR)}
    folders = language_folders(keys)
    found = sorted(lang for lang in indexed | folders if LANG.fullmatch(lang) and lang not in RESERVED_LANGS)
    roster: list[str] = []
    if store.sealed:
        findings.keys_done.add(ROSTER)
        try:
            roster = store.roster() or []
            if ROSTER not in keys and found:
                findings.damage.append(Damage("language roster", ROSTER, "missing", RERUN.format("encode"), _nothing,
                                              "encode"))  # fmt: skip
        except DamageError as e:
            repair, fix = DELETED.format("encode"), _delete(store._kv, ROSTER)
            findings.damage.append(Damage("language roster", ROSTER, _problem(e), repair, fix, "encode"))
    for lang in sorted(set(roster) - set(found)):  # listed, but its folder and index are gone: as readers say
        repair = "none needed: rerun the encode job with the same dataset (it writes the language again)"
        findings.damage.append(Damage(f"{lang} language (folder and index)", f"{lang}/", "missing", repair, _nothing,
                                      "encode"))  # fmt: skip
    for lang in found:
        key = f"{LANGUAGES_DIR}{lang}.json"
        findings.keys_done.add(key)
        try:
            if store.index(lang) is not None or not (lang in roster or _has_done(keys, lang)):
                continue  # whole, or a creation interrupted before its index: the encode job finishes it
            problem, repair, fix = "missing", RERUN.format("encode"), _nothing
        except DamageError as e:
            problem, repair, fix = _problem(e), DELETED.format("encode"), _delete(store._kv, key)
        findings.damage.append(Damage(f"{lang} language index", key, problem, repair, fix, "encode"))
    return found


def _has_done(keys: list[str], lang: str) -> bool:
    """Whether any ``lengths`` chunk of ``lang`` was written (an utterance was done once)."""
    return any(k.startswith(f"{lang}/{LENGTHS}c.") for k in keys)


def _nothing() -> None:
    """The repair of something missing that the rerun writes again: nothing to change."""


def _language(kv, arrays, lang: str, shards: set[int], skipped: dict[int, str], findings: Findings, bar) -> None:
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
                shard = future.result()
            except ValueError as e:
                if not is_damage(e):  # unreachable or forbidden: not a verdict on the shard
                    raise storage_error("read", f"{lang}/{STATES}c.0.{u}.0.0", arrays.url, e) from None
                bad[u] = _problem(e)
                continue
            if not np.isfinite(shard).all():  # the encode job never writes them: put there past the checksums
                bad[u] = NON_FINITE
        findings.count("shards", len(batch))
        bar.update(len(batch))
    orphans = sum(1 for u in shards if u < n and lengths[u] < 0 and u not in unknown)
    if orphans:
        findings.notes.append(
            f"{lang}: {orphans} utterances have states but no done marker (an interrupted run): the encode job "
            "redoes them"
        )
    in_bad = {int(u) for index, _ in bad_chunks for u in index}
    waiting = [int(u) for u in np.flatnonzero(lengths < 0) if int(u) not in in_bad]
    if waiting:  # not damage, but a store a reader would take for complete (newcomer probe)
        passed = sum(1 for u in waiting if u in skipped)
        why = [f"{len(waiting) - passed} not reached (an encode run stopped before them)"] * (passed < len(waiting))
        why += [f"{passed} skipped by the encode job ({lang}/{SKIPPED} says why)"] * (passed > 0)
        capped = sum(1 for u in waiting if skipped.get(u) == "LongAudioError")  # over the store's cap: skipped again
        again = f", but for the {capped} over the --max_seconds the store was made with" if capped else ""
        again = f" (it tries the skipped ones again{again})" if passed else ""
        findings.notes.append(f"{lang}: {len(waiting)} of {n} utterances not done: {', '.join(why)}; rerun the "
                              f"encode job to finish{again}")  # fmt: skip
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
    """Checks every pair's ids.json, done markers and done layers' chunks of the similarity store at ``url``: from
    its keys, so that a pair whose ids.json is gone is checked (and named) too."""
    reader = open_similarity(url)
    fix_rerun = RERUN.format("seqsim")
    _pair_roster(reader, keys, kv, findings)
    done = {}  # (measure, pair) -> its layers done; one not done that another has: a stopped run's or a repair's
    for measure in MEASURES:
        folders = sorted({k[len(measure) + 1 :].split("/", 1)[0] for k in keys if k.startswith(f"{measure}/")})
        for folder in (f for f in folders if f.count(PAIR_SEPARATOR) == 1):
            key = f"{measure}/{folder}/"
            markers = [k for k in keys if k.startswith(key + DONE_DIR) and k.endswith(".json")]
            done[measure, folder] = {int(n) for m in markers if (n := m[len(key + DONE_DIR) : -len(".json")]).isdigit()}
            findings.keys_done.update([key + IDS, *markers])
            try:
                if reader._ids(key) is None and markers:
                    findings.damage.append(Damage(f"{measure} {folder} ids", key + IDS, "missing", fix_rerun,
                                                  _nothing, "seqsim"))  # fmt: skip
            except DamageError as e:
                repair, fix = DELETED.format("seqsim"), _delete(kv, key + IDS)
                findings.damage.append(Damage(f"{measure} {folder} ids", key + IDS, _problem(e), repair, fix, "seqsim"))
            if markers and not _pair_array(reader, kv, key, keys, f"{measure} {folder}", findings):
                bar.update(len(markers))
                continue
            for marker_key in markers:
                _pair_layer(reader, kv, key, marker_key, findings)
                bar.update(1)
    asked = set().union(*done.values())  # every run into a store computes the same layers (its manifest's)
    waiting = [f"{m} {f} layer {la}" for (m, f), have in done.items() for la in sorted(asked - have)]
    if waiting:  # retrieval refuses such a store
        shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
        findings.notes.append(f"{len(waiting)} of {len(asked) * len(done)} (measure, pair, layer) not done ({shown}): "
                              "rerun seqsim with the same flags to finish")  # fmt: skip


def _pair_roster(reader, keys: list[str], kv, findings: Findings) -> None:
    """The roster of pairs (similarity store version 4) against the pair folders there: a listed pair whose folder is
    gone is named (the seqsim rerun computes it again); a missing or damaged roster is rebuilt from the folders."""
    if not reader.rostered:
        return
    findings.keys_done.add(PAIRS_ROSTER)
    # A folder with any key is there (its lost ids.json or markers are named apart); the roster names those gone whole
    present = {m: sorted({k[len(m) + 1 :].split("/", 1)[0] for k in keys if k.startswith(f"{m}/")}) for m in MEASURES}
    present = {m: folders for m, folders in present.items() if folders}

    def rebuild():
        kv.write(PAIRS_ROSTER, json_bytes({"pairs": dict(sorted(present.items()))})).result()

    try:
        listed = reader.roster()
    except DamageError as e:
        rebuilt = "rebuilt from the pair folders"
        findings.damage.append(Damage("pairs roster", PAIRS_ROSTER, _problem(e), rebuilt, rebuild, "seqsim"))
        return
    if listed is None:
        if present:
            rebuilt = "rebuilt from the pair folders"
            findings.damage.append(Damage("pairs roster", PAIRS_ROSTER, "missing", rebuilt, rebuild, "seqsim"))
        return
    for measure, folders in sorted(listed.items()):
        for folder in sorted(set(folders) - set(present.get(measure, ()))):
            findings.damage.append(Damage(f"{measure} {folder} (the whole pair)", f"{measure}/{folder}/", "missing",
                                          RERUN.format("seqsim"), _nothing, "seqsim"))  # fmt: skip


def _pair_array(reader, kv, key: str, keys: list[str], what: str, findings: Findings) -> bool:
    """Whether a pair's matrix opens as the format writes it. One whose zarr.json is gone, or lists altered codecs
    (``integrity.check_codecs``), is named, and the repair deletes the matrix and its done markers, keeping its ids:
    the seqsim rerun creates the matrix again and computes every layer of it."""
    findings.keys_done.add(f"{key}zarr.json")  # checked here: the files' pass listed it again, "restore from a copy"
    try:
        reader._open_array(key, writable=False)
        return True
    except (DamageError, SimilarityError) as e:
        missing = f"{key}zarr.json" not in keys
        if not (isinstance(e, DamageError) or missing or any(f"{code}:" in str(e) for code in DAMAGE_CODES)):
            raise  # not damage (a network failure, a permission): nothing is deleted for it
        doomed = [k for k in keys if k.startswith(key) and k != key + IDS]
        repair = "the matrix and its done markers deleted: rerun the seqsim job (it computes the pair again)"
        problem = e.problem if isinstance(e, DamageError) else "missing" if missing else _short(e)
        findings.damage.append(Damage(f"{what} matrix", f"{key}zarr.json", problem, repair, _delete(kv, *doomed),
                                      "seqsim"))  # fmt: skip
        return False


def _pair_layer(reader, kv, key: str, marker_key: str, findings: Findings) -> None:
    """One done marker and the matrix chunk it stands for."""
    layer = marker_key[len(key + DONE_DIR) : -len(".json")]
    what = f"{key.replace('/', ' ').strip()} layer {layer}"
    repair = "marked not done: rerun the seqsim job"
    try:
        marker = read_json(kv, marker_key, reader.url, sealed=reader.sealed) or {}
        position = reader.layer_position(int(layer))
    except (DamageError, SimilarityError, ValueError) as e:
        findings.damage.append(Damage(what, marker_key, _problem(e), repair, _delete(kv, marker_key), "seqsim"))
        return
    try:
        scores = reader._open_array(key, writable=False)[position].read().result()
        findings.count("pair-layers")
    except ValueError as e:
        if not is_damage(e):
            raise storage_error("read", f"{key}c.{position}.0.0", reader.url, e) from None
        findings.damage.append(Damage(what, f"{key}c.{position}.0.0", _problem(e), repair, _delete(kv, marker_key),
                                      "seqsim"))  # fmt: skip
        return
    # inf is no measure's score (NaN is: the rows and columns not scored, and what ot could not measure, which
    # retrieval tells apart by measure)
    if "rows" in marker and np.isinf(scores[np.ix_(marker["rows"], marker["cols"])]).any():
        findings.damage.append(Damage(what, f"{key}c.{position}.0.0", NON_FINITE, repair, _delete(kv, marker_key),
                                      "seqsim"))  # fmt: skip


def _short(error: Exception) -> str:
    """An error's first sentence, for the table's problem column."""
    return str(error).split(": ", 1)[-1].split(". ", 1)[0][:160]


def _delete_prefix(kv, prefix: str, *keys: str) -> Callable[[], None]:
    """A repair: every key under ``prefix`` deleted, then ``keys``."""

    def fix():
        kv.delete_range(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()
        for key in keys:
            kv.write(key, None).result()

    return fix


def _delete_language(kv, lang: str) -> Callable[[], None]:
    """A repair: what the encode job writes of ``lang`` deleted (its arrays, tables and index key), and nothing else
    of its folder: a user's notes beside the arrays stay (verify's rule for files it did not write)."""
    states = _delete_prefix(kv, f"{lang}/{STATES}")
    index = f"{LANGUAGES_DIR}{lang}.json"
    rest = _delete_prefix(kv, f"{lang}/{LENGTHS}", f"{lang}/{UTTERANCES}", f"{lang}/{SKIPPED}", index)

    def fix():
        states()
        rest()

    return fix


def _delete(kv, *keys: str) -> Callable[[], None]:
    def fix():
        for key in keys:
            kv.write(key, None).result()  # None deletes

    return fix


def nested_stores(url: str, keys: list[str], kv, findings: Findings) -> None:
    """A babelgrid store or job output inside this store (a ``manifest.json`` of a babelgrid format below its root,
    as ``seqsim --out S/en`` made before outputs were kept apart from their inputs) is named: never one clean store."""
    for key in (k for k in keys if k.endswith("/manifest.json")):
        try:
            nested = (read_json(kv, key, url) or {}).get("format")
        except (StoreError, BabelgridError):
            continue  # files() names a damaged one
        if isinstance(nested, str) and nested.startswith("babelgrid-"):
            where = key[: -len("manifest.json")]
            repair = "none: move it out of the store (outputs never nest in the stores they read)"
            findings.damage.append(Damage(f"a {nested} in {where}", key, "another store inside this one", repair))
