"""Writing and opening layer stores: every stored encoder layer of every utterance, one folder per language.

``engine.stores.schema`` defines the format (keys, array specs, manifest, utterance table); ``engine.stores.kv`` the
keys and arrays underneath; ``engine.stores.reader`` is the analysts' read API. A job writes a store like this::

    store = LayerStore.create_or_open(out, StoreInfo(model_name, sha256, dims, layers, "bfloat16"))
    arrays = store.language("de", rows)            # rows: UtteranceRow per utterance, n_frames known up front
    for u in todo:                                 # e.g. np.flatnonzero(~arrays.done()) within this process's range
        arrays.write_utterance(u, states_u)        # f[layer, n_frames, embed]; returns at once (backpressure aside)
    arrays.flush()

The commit protocol and concurrency rules of a language's arrays are in ``engine.stores.language``.

Arrays are sized once, when a language is created, and never resized: shrinking deletes chunks one by one and a
stale handle may write out of bounds after another process shrank the array.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence

import numpy as np
import tensorstore as ts

from engine.axes import EMBED, FRAME, LAYER, UTTERANCE
from engine.errors import DamageError, StoreError
from engine.stores.integrity import CHECKED_READS, check_codecs, repair_hint
from engine.stores.kv import (
    create_key,
    create_or_compare,
    create_or_open_array,
    keys_under,
    open_array,
    open_kvstore,
    read_json,
    refuse_lost_manifest,
    refuse_missing_bucket,
    update_json,
)
from engine.stores.language import MAX_IN_FLIGHT_BYTES, WRITE_THREADS, LanguageArrays
from engine.stores.records import LAYER_STORE_FORMAT, json_bytes, where_instead
from engine.stores.schema import (
    INFO_FIELDS,
    LANG,
    LANGUAGES_DIR,
    LENGTHS,
    MANIFEST,
    ROSTER,
    SEALED_VERSION,
    SKIPPED,
    STATES,
    UNRECORDED_FIELDS,
    UTTERANCES,
    StoreInfo,
    check_language_code,
    info_from_manifest,
    language_index,
    lengths_spec,
    new_manifest,
    states_spec,
)
from engine.stores.utterances import (
    StoreMismatchError,
    UtteranceRow,
    check_rows,
    check_same_rows,
    read_rows,
    rows_to_parquet,
)

# The codecs every array of a language is written with (schema's specs; chunk shapes aside): compared on every open.
FORMAT_CODECS = {
    STATES: states_spec({}, n_layers=1, n_utterances=1, max_frames=1, embed=1, dtype="float32")["metadata"]["codecs"],
    LENGTHS: lengths_spec({}, n_utterances=1)["metadata"]["codecs"],
}


class LayerStore:
    """A layer store at one kvstore location. Get it from ``create_or_open`` (to write) or ``open`` (to read)."""

    def __init__(self, *, url: str, info: StoreInfo, manifest: dict, kvstore: dict, kv: ts.KvStore, writable: bool):
        self.url = url
        self.info = info
        self.manifest = manifest
        self._kvstore = kvstore
        self._kv = kv
        self._writable = writable
        self._languages: dict[str, LanguageArrays] = {}
        self._lock = threading.Lock()
        # Version 3 on: every JSON object carries its digest, and the roster lists every language created.
        self.sealed = manifest.get("format_version", 1) >= SEALED_VERSION

    def __repr__(self):
        return f"LayerStore({self.url!r}, {self.info.model_name}, layers {list(self.info.layers)}, {self.info.dtype})"

    @classmethod
    def create_or_open(cls, url: str, info: StoreInfo, *, creation: dict | None = None) -> LayerStore:
        """Opens the store at ``url`` to write, creating its manifest if there is none.

        Raises StoreMismatchError if the store was written with another model, checkpoint, dimensions, layer set,
        dtype, frame rate or batch size (``INFO_FIELDS``), naming each differing field with both values.
        """
        kvstore, kv = open_kvstore(url)
        manifest = create_or_compare(
            kv,
            MANIFEST,
            new_manifest(info, creation),
            url,
            fields=INFO_FIELDS,
            error=StoreMismatchError,
            what="layer store",
            check=lambda m: info_from_manifest(m, url).to_dict(),
            unrecorded=UNRECORDED_FIELDS,
            before_create=lambda: _refuse_lost_manifest(kv, url),
        )
        stored = info_from_manifest(manifest, url)
        store = cls(url=url, info=stored, manifest=manifest, kvstore=kvstore, kv=kv, writable=True)
        if store.sealed and not store._listed():
            create_key(kv, ROSTER, json_bytes({"languages": []}), url)  # a new store: its roster, empty
        return store

    @classmethod
    def open(cls, url: str) -> LayerStore:
        """Opens an existing store to read (writing through it raises StoreError)."""
        kvstore, kv = open_kvstore(url)
        manifest = read_json(kv, MANIFEST, url)
        if manifest is None:
            refuse_missing_bucket(kv, url)
            raise StoreError(
                f"no babelgrid store at {url!r}: it has no {MANIFEST}. Check the path (stores are written by the "
                f"encode job, or LayerStore.create_or_open){where_instead(url, LAYER_STORE_FORMAT)}"
            )
        return cls(
            url=url, info=info_from_manifest(manifest, url), manifest=manifest, kvstore=kvstore, kv=kv, writable=False
        )

    def languages(self) -> list[str]:
        """Language folders whose arrays and utterance table are complete, sorted. A language the roster lists
        whose ``languages/<lang>.json`` is gone is a DamageError: never a language silently missing."""
        listed = self._listed()
        if not self.sealed:
            return listed
        roster = self.roster()
        if roster is None:
            if listed:
                raise DamageError(
                    f"layer store {self.url!r} has no {ROSTER} (the list of its languages) but languages "
                    f"{listed}: it was deleted. {self._fix}",
                    "missing",
                )
            return []
        lost = sorted(set(roster) - set(listed))
        if lost:
            keys = ", ".join(f"{LANGUAGES_DIR}{lang}.json" for lang in lost)
            raise DamageError(
                f"layer store {self.url!r} lists languages {lost} in {ROSTER}, but their index ({keys}) is "
                f"missing: it was deleted. {self._fix}",
                "missing",
            )
        return listed

    def roster(self) -> list[str] | None:
        """The languages ``languages.json`` lists (version 3 on; None where there is none)."""
        roster = read_json(self._kv, ROSTER, self.url, sealed=True, fix=self._fix)
        return None if roster is None else list(roster.get("languages", []))

    @property
    def _fix(self) -> str:
        return repair_hint(self.url, "encode")

    def _listed(self) -> list[str]:
        """The languages whose index key exists."""
        # Keys from "languages/" up to "languages0" ('0' follows '/'): only the index folder is listed, never the
        # shards, so this stays cheap for millions of utterances.
        key_range = ts.KvStore.KeyRange(LANGUAGES_DIR, LANGUAGES_DIR[:-1] + "0")
        keys = self._kv.list(key_range, len(LANGUAGES_DIR)).result()
        names = (k.decode() for k in keys)
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and LANG.fullmatch(n[: -len(".json")]))

    def language(
        self,
        lang: str,
        utterances: Sequence[UtteranceRow] | None = None,
        max_frames: int | None = None,
        *,
        max_in_flight_bytes: int = MAX_IN_FLIGHT_BYTES,
        indexed: bool = True,
        write_threads: int = WRITE_THREADS,
    ) -> LanguageArrays:
        """The arrays of language ``lang``.

        Args:
          lang: language folder name (see ``check_language_code``).
          utterances: the language's utterance table, row u = utterance u. Given: creates the arrays and
            ``utterances.parquet`` if missing, else checks that the stored table is the same (StoreMismatchError if
            not: never mix two tables in one language). None: opens the existing language.
          max_frames: frame axis length, at least the largest ``n_frames`` (its default). An existing language keeps
            its own, which must be at least this.
          max_in_flight_bytes: host bytes of shards a writer may queue before ``write_utterance`` blocks.
          indexed: the language's index key must be there and whole (False: verify, which checks it apart).
          write_threads: shard writes in flight at once (``language.WRITE_THREADS``: derived from the core count).
            The bytes stored do not depend on it. An open language keeps the count it was first opened with.
        """
        check_language_code(lang)
        with self._lock:
            arrays = self._languages.get(lang)
            if utterances is None:
                if max_frames is not None:
                    raise StoreError("max_frames is only used with utterances, to create a language")
                if arrays is None:
                    arrays = self._open_language(lang, max_in_flight_bytes, indexed, write_threads)
            else:
                rows = check_rows(utterances, lang)
                needed = max(1, max(r.n_frames for r in rows))  # n_frames 0: unreadable audio, never written
                max_frames = needed if max_frames is None else operator.index(max_frames)
                if max_frames < needed:
                    longest = int(np.argmax([r.n_frames for r in rows]))
                    raise StoreError(
                        f"max_frames={max_frames} is shorter than utterance {longest} of {lang!r} "
                        f"({needed} frames, id {rows[longest].id!r}); pass the largest n_frames, or leave it out"
                    )
                if arrays is None:
                    arrays = self._create_language(lang, rows, max_frames, max_in_flight_bytes, write_threads)
                else:
                    check_same_rows(arrays.rows, rows, lang, self.url)
                    _check_fits(arrays, max_frames)
            self._languages[lang] = arrays
            return arrays

    # -- language creation and opening --------------------------------------------------------------------------

    def _child(self, key: str) -> dict:
        return {**self._kvstore, "path": self._kvstore.get("path", "") + key}

    def _open_language(self, lang: str, max_in_flight_bytes: int, indexed: bool, write_threads: int
                       ) -> LanguageArrays:  # fmt: skip
        if indexed and self.index(lang) is None:
            raise StoreError(f"store {self.url!r} has no language {lang!r}; it has {self.languages()}")
        rows = read_rows(self._kv, f"{lang}/{UTTERANCES}", self.url)
        states = open_array(self._child(f"{lang}/{STATES}"), self.url, self._writable, CHECKED_READS)
        lengths = open_array(self._child(f"{lang}/{LENGTHS}"), self.url, self._writable)
        arrays = self._arrays(lang, rows, states, lengths, max_in_flight_bytes, write_threads)
        _check_fits(arrays, max(r.n_frames for r in rows))
        return arrays

    def _create_language(self, lang: str, rows, max_frames: int, max_in_flight_bytes: int, write_threads: int
                         ) -> LanguageArrays:  # fmt: skip
        table_key = f"{lang}/{UTTERANCES}"
        stored_rows = read_rows(self._kv, table_key, self.url, missing_ok=True)
        if stored_rows is not None:
            check_same_rows(stored_rows, rows, lang, self.url)
        if not self._writable:
            raise StoreError(f"store {self.url!r} was opened read-only (LayerStore.open); open it with create_or_open")
        info = self.info
        states = create_or_open_array(
            states_spec(
                self._child(f"{lang}/{STATES}"),
                n_layers=len(info.layers),
                n_utterances=len(rows),
                max_frames=max_frames,
                embed=info.embed,
                dtype=info.dtype,
            ),
            self.url,
        )
        lengths = create_or_open_array(lengths_spec(self._child(f"{lang}/{LENGTHS}"), n_utterances=len(rows)), self.url)
        arrays = self._arrays(lang, rows, states, lengths, max_in_flight_bytes, write_threads)
        _check_fits(arrays, max_frames)
        # The table, then the index key, then the roster: a language is listed only once all its parts exist.
        if stored_rows is None and not create_key(self._kv, table_key, rows_to_parquet(rows), self.url):
            check_same_rows(read_rows(self._kv, table_key, self.url), rows, lang, self.url)
        if self.index(lang) is None:  # a damaged index is a DamageError here: verify --repair rebuilds it
            create_key(self._kv, f"{LANGUAGES_DIR}{lang}.json", json_bytes(language_index(lang, len(rows),
                       arrays.max_frames)), self.url)  # fmt: skip
        if self.sealed:
            self._enrol(lang)
        return arrays

    def index(self, lang: str) -> dict | None:
        """``languages/<lang>.json`` (None if there is none); a damaged one is a DamageError."""
        return read_json(self._kv, f"{LANGUAGES_DIR}{lang}.json", self.url, sealed=self.sealed, fix=self._fix)

    def skipped(self, lang: str) -> dict[int, dict]:
        """What the encode job could not encode in ``lang`` and why (``<lang>/skipped.json``): {utterance index:
        {"id", "reason", "message"}}, for the utterances that are still not done (an entry of one a later run encoded
        is stale, and left out). Empty where nothing was skipped; a damaged record is a DamageError."""
        record = read_json(self._kv, f"{lang}/{SKIPPED}", self.url, sealed=self.sealed, fix=self._fix)
        if not record:
            return {}
        done = self.language(lang).done()
        entries = {int(e["utterance"]): e for e in record.get("utterances", [])}
        return {
            u: {k: e[k] for k in ("id", "reason", "message")}
            for u, e in sorted(entries.items())
            if 0 <= u < len(done) and not done[u]
        }

    def record_skips(self, lang: str, attempted: Sequence[int], skips: dict[int, dict]) -> None:
        """Rewrites ``<lang>/skipped.json`` after a work unit: the entries of the ``attempted`` utterances are
        replaced by ``skips`` ({utterance: {"id", "reason", "message"}}: those of them it could not encode). A
        read-modify-write (``update_json``): processes ending units of one language at once all keep theirs."""
        attempted = {int(u) for u in attempted}

        def change(record: dict | None) -> dict | None:
            old = [] if record is None else list(record.get("utterances", []))
            kept = [e for e in old if int(e["utterance"]) not in attempted]
            new = [{"utterance": int(u), **{k: skips[u][k] for k in ("id", "reason", "message")}} for u in skips]
            entries = sorted(kept + new, key=lambda e: e["utterance"])
            return None if entries == old or (record is None and not entries) else {"utterances": entries}

        update_json(self._kv, f"{lang}/{SKIPPED}", self.url, change, fix=self._fix)

    def _enrol(self, lang: str) -> None:
        """Adds ``lang`` to the roster (``update_json``: several processes may add theirs at once)."""

        def add(roster: dict | None) -> dict | None:
            langs = [] if roster is None else list(roster.get("languages", []))
            return None if lang in langs else {"languages": sorted({*langs, lang})}

        update_json(self._kv, ROSTER, self.url, add, fix=self._fix)

    def _arrays(self, lang, rows, states, lengths, max_in_flight_bytes, write_threads) -> LanguageArrays:
        info = self.info
        if self.manifest.get("format_version", 1) >= 2:  # version 1 wrote no checksums (integrity.UNCHECKED)
            for name, array in ((STATES, states), (LENGTHS, lengths)):
                check_codecs(array, FORMAT_CODECS[name], f"{lang}/{name} of layer store {self.url!r}", self._fix)
        expected = [len(info.layers), len(rows), None, info.embed]
        shape = list(states.shape)
        if (
            len(shape) != 4
            or any(e is not None and e != s for e, s in zip(expected, shape, strict=True))
            or list(states.domain.labels) != [LAYER, UTTERANCE, FRAME, EMBED]
            or states.dtype.name != info.dtype
            or list(lengths.shape) != [len(rows)]
            or lengths.dtype.name != "int32"
        ):
            raise StoreMismatchError(
                f"arrays of {lang!r} in {self.url!r} do not fit the manifest and utterance table: states "
                f"{states.dtype.name}{shape} labelled {list(states.domain.labels)}, lengths {list(lengths.shape)}; "
                f"expected {info.dtype}[{len(info.layers)}, {len(rows)}, frames, {info.embed}] and "
                f"[{len(rows)}]. An interrupted creation with another table? Delete the folder {lang}/ and rerun"
            )
        return LanguageArrays(
            url=self.url,
            lang=lang,
            rows=rows,
            layers=info.layers,
            states=states,
            lengths=lengths,
            writable=self._writable,
            max_in_flight_bytes=max_in_flight_bytes,
            write_threads=write_threads,
        )


def _check_fits(arrays: LanguageArrays, max_frames: int) -> None:
    if arrays.max_frames < max_frames:
        raise StoreMismatchError(
            f"language {arrays.lang!r} in {arrays.url!r} holds at most {arrays.max_frames} frames per utterance, "
            f"{max_frames} are needed; arrays are never resized: use a new output folder"
        )


def _refuse_lost_manifest(kv: ts.KvStore, url: str) -> None:
    """A store whose manifest is gone but whose languages are there (its roster, a language index) is refused
    (``kv.refuse_lost_manifest``). Called where the manifest was found missing (``create_or_compare``'s
    ``before_create``)."""
    indexed = [k[len(LANGUAGES_DIR) :].removesuffix(".json") for k in keys_under(kv, LANGUAGES_DIR, url)]
    held = [f"languages ({', '.join(indexed[:5])})"] if indexed else keys_under(kv, ROSTER, url)
    fix = "Restore the manifest from a copy, or encode into a new folder"
    refuse_lost_manifest(kv, MANIFEST, url, held, what="layer store", fix=fix)
