"""The similarity store: all-pairs similarity matrices per measure, language pair and layer (format version 4).

Written by ``engine.pipelines.seqsim.run.run_similarity`` (the ``seqsim`` job), read with ``open_similarity``::

    OUT/manifest.json                        layer store URL, model, checkpoint, layers; written once
    OUT/pairs.json                           the roster: every pair created, per measure (version 4), digest
    OUT/<measure>/<a>__<b>/zarr.json         zarr3 f32[layer, utterance_a, utterance_b], NaN = not computed,
    OUT/<measure>/<a>__<b>/c.<l>.0.0         one zstd chunk per layer position l, with a crc32c digest (version 2)
    OUT/<measure>/<a>__<b>/ids.json          row_ids, col_ids (str), row_recording, col_recording (int), digest
    OUT/<measure>/<a>__<b>/done/<layer>.json completion marker of one babelgrid layer, written after its chunk

Every JSON object carries the digest of its content (version 3, ``engine.stores.records.json_bytes``): a marker or id
list altered into other valid JSON is a DamageError, as a pair whose ids.json is gone while its markers remain. The
roster (version 4) lists every pair a run created: a pair folder deleted whole is a DamageError, never a pair missing.

Rows and columns are the layer store's utterance indices of languages ``a`` and ``b``; utterances not done in the
layer store are NaN rows/columns. ``docs/similarity.md`` describes the format for analysts::

    from engine.stores.similarity import open_similarity
    sim = open_similarity("/data/sim")
    scores, row_ids, col_ids = sim.matrix("seqsim", "de", "en", layer=4)   # transposes en__de if only it is stored
"""

from __future__ import annotations

import datetime
import os
import socket

import numpy as np
import tensorstore as ts

from engine.axes import LAYER, UTTERANCE
from engine.errors import BabelgridError, DamageError
from engine.listing import Listing
from engine.stores import integrity, provenance
from engine.stores.integrity import CHECKED_READS, CRC32C, damage_error, is_damage, repair_hint
from engine.stores.kv import context, create_or_compare, open_kvstore, read_json, write_value
from engine.stores.pair_roster import check_listed, enrol, read_roster, refuse_lost_pairs
from engine.stores.records import json_bytes, where_instead
from engine.stores.schema import LANG

FORMAT_NAME = "babelgrid-similarity"
# 2: crc32c on every chunk (engine.stores.integrity); 3: a digest in every JSON object; 4: the pairs roster
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)  # 1 to 3 read, with one warning naming the checks they lack (integrity.UNCHECKED)
SEALED_VERSION = 3  # from this version on, every ids.json and done marker must carry its digest
ROSTERED_VERSION = 4  # from this version on, pairs.json lists every pair created (engine.stores.pair_roster)
MANIFEST, IDS = "manifest.json", "ids.json"
DONE_DIR = "done/"
PAIR_SEPARATOR = "__"
ROW_AXIS = f"{UTTERANCE}_a"  # rows: utterances of the first language of the pair
COL_AXIS = f"{UTTERANCE}_b"
AXES = (LAYER, ROW_AXIS, COL_AXIS)
MANIFEST_FIELDS = ("layer_store", "model_name", "checkpoint_sha256", "layers")  # must agree between runs
# And what changes a matrix's bytes: the transforms (absent before them: "none"), the compute dtype, the measures'
# settings (``ot``: the Sinkhorn options but their iteration limit), SeqSim's precision with its fp8 scale (absent
# before the option: "dtype", None), the layer store's identity (``provenance``: its path may hold a store encoded
# again) and float32 products' precision: compared on every resume and every worker join, live lease or not.
COMPARED_FIELDS = (*MANIFEST_FIELDS, "remove_language", "dimensions", "dtype", "ot", "seqsim_precision",
                   "seqsim_fp8_scale", "layer_store_identity", "matmul_precision")  # fmt: skip
UNRECORDED_FIELDS = ("dtype", "ot", "layer_store_identity", "matmul_precision")  # absent in older stores: not compared
NAME = LANG  # language codes and measure names: the layer store's language-code rule
# Symmetric measures: matrix(b, a) is matrix(a, b).T. Directional ones: the transpose of one direction is the other.
MEASURES = ("seqsim", "seqsim_a2b", "seqsim_b2a", "mean", "centre", "duration", "dtw", "ot")
NAN_MEASURES = frozenset({"ot"})  # may write NaN for a score it could not measure (seqsim's registry: nan_scores)
REVERSED_MEASURE = {"seqsim_a2b": "seqsim_b2a", "seqsim_b2a": "seqsim_a2b"}
# zstd level 1 costs far less than the kernel that produced a chunk and shrinks what is very redundant: float32
# scores in [-1, 1] share exponent bytes, NaN rows of undone utterances and the duration baseline's few values.
MATRIX_CODECS = (
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd", "configuration": {"level": 1}},
    CRC32C,
)


class SimilarityError(BabelgridError, ValueError):
    """A similarity store cannot be opened, created, written or read as asked."""


class SimilarityMismatchError(SimilarityError):
    """An existing similarity store was computed from another layer store, model or layer set."""


def check_name(kind: str, value: str) -> str:
    """``value`` if it can name a folder (letters, digits, '_', '-', no '__'), else a SimilarityError."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or PAIR_SEPARATOR in value:
        raise SimilarityError(
            f"{kind} {value!r} cannot name a similarity store folder: use 1-64 letters, digits, '_' or '-', starting "
            f"with a letter or digit, without {PAIR_SEPARATOR!r} (it separates the two languages of a pair)"
        )
    return value


def check_measure(measure: str) -> str:
    check_name("measure", measure)
    if measure not in MEASURES:
        raise SimilarityError(f"unknown measure {measure!r}; choose from {', '.join(MEASURES)}")
    return measure


def pair_key(measure: str, lang_a: str, lang_b: str) -> str:
    """``<measure>/<a>__<b>/``: the folder of one pair's array, ids and markers."""
    check_measure(measure)
    return f"{measure}/{check_name('language', lang_a)}{PAIR_SEPARATOR}{check_name('language', lang_b)}/"


def normalize_url(url: str) -> str:
    """Local paths as absolute paths, so that one layer store has one name in the manifest."""
    url = os.fspath(url)
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def matrix_spec(kvstore: dict, *, n_layers: int, n_rows: int, n_cols: int) -> dict:
    """TensorStore spec of one pair's f32[layer, utterance_a, utterance_b], one chunk [1, N, M] per layer."""
    return {
        "driver": "zarr3",
        "kvstore": kvstore,
        **CHECKED_READS,
        "metadata": {
            "shape": [n_layers, n_rows, n_cols],
            "data_type": "float32",
            "fill_value": "NaN",
            "dimension_names": list(AXES),
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, max(n_rows, 1), max(n_cols, 1)]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "codecs": [dict(c) for c in MATRIX_CODECS],
        },
    }


def done_marker(rows, cols) -> dict:
    """The part of a layer's done marker that says which utterances its matrix scored: ``rows`` and ``cols`` are
    the utterance indices (of the pair's first and second language) that were done in the layer store. Readers take
    what was scored from here, never from the NaN that fills the other rows and columns."""
    rows, cols = [int(u) for u in rows], [int(u) for u in cols]
    return {"rows_done": len(rows), "cols_done": len(cols), "rows": rows, "cols": cols}


def new_manifest(*, layer_store: str, model_name: str, checkpoint_sha256: str, layers, remove_language: str = "none",
                 dimensions: str = "none", dtype: str | None = None, ot: dict | None = None,
                 seqsim_precision: str = "dtype", seqsim_fp8_scale: str | None = None,
                 layer_store_identity: dict | None = None, matmul_precision: str | None = None) -> dict:  # fmt: skip
    """``dtype``: the states' compute dtype; ``ot``: the ``ot`` measure's Sinkhorn options that change its scores
    (``OtConfig`` as a dict), recorded whatever the run's measures, so that every matrix of a store shares them (None:
    not recorded); ``seqsim_precision``: ``"dtype"`` or ``"fp8"`` (``SimilarityConfig.seqsim_precision``), with
    ``seqsim_fp8_scale`` its scale (None unless fp8), recorded whatever the measures as well."""
    return {
        "layer_store_identity": layer_store_identity,
        "matmul_precision": matmul_precision,
        "remove_language": remove_language,
        "dimensions": dimensions,
        "dtype": dtype,
        "ot": ot,
        "seqsim_precision": seqsim_precision,
        "seqsim_fp8_scale": seqsim_fp8_scale,
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "layer_store": normalize_url(layer_store),
        "model_name": model_name,
        "checkpoint_sha256": checkpoint_sha256,
        "layers": [int(x) for x in layers],
        "axes": list(AXES),
        "created": {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
        },
    }


def _check_manifest(manifest: dict, url: str) -> dict:
    if manifest.get("format") != FORMAT_NAME:
        raise SimilarityError(f"{MANIFEST} in {url!r} is not a babelgrid similarity store manifest (format "
                              f"{manifest.get('format')!r}){where_instead(url, FORMAT_NAME, manifest)}")  # fmt: skip
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise SimilarityError(
            f"similarity store {url!r} has format version {version!r}; this babelgrid reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Use the babelgrid version that wrote it, or compute into a "
            "new folder"
        )
    if version < FORMAT_VERSION:
        integrity.warn_unchecked(url, "similarity store", version)
    missing = [f for f in MANIFEST_FIELDS if f not in manifest]
    if missing:
        raise SimilarityError(f"{MANIFEST} in {url!r} lacks {missing}: it is damaged; compute into a new folder")
    # Stores written before these options: no transform, SeqSim in the compute dtype (fp8 was not offered).
    before = {"remove_language": "none", "dimensions": "none", "seqsim_precision": "dtype", "seqsim_fp8_scale": None}
    return {**manifest, **{k: manifest.get(k, v) for k, v in before.items()}}


class _Store:
    """Shared by writer and reader: the kvstore, manifest and per-pair keys."""

    def __init__(self, url: str, kvstore: dict, kv: ts.KvStore, manifest: dict):
        self.url, self.manifest, self._kvstore, self._kv = url, manifest, kvstore, kv
        self.sealed = manifest.get("format_version", 1) >= SEALED_VERSION  # ids and markers carry digests
        self.rostered = manifest.get("format_version", 1) >= ROSTERED_VERSION  # pairs.json lists every pair
        self._fix = repair_hint(url, "seqsim")

    @property
    def layers(self) -> tuple[int, ...]:
        """Babelgrid layer indices in the order of the arrays' ``layer`` axis."""
        return tuple(self.manifest["layers"])

    def layer_position(self, layer: int) -> int:
        if isinstance(layer, bool) or layer not in self.layers:
            raise SimilarityError(
                f"layer {layer!r} is not in similarity store {self.url!r}; its arrays hold layers {list(self.layers)}"
            )
        return self.layers.index(layer)

    def _child(self, key: str) -> dict:
        return {**self._kvstore, "path": self._kvstore.get("path", "") + key}

    def _ids(self, key: str) -> dict | None:
        return read_json(self._kv, key + IDS, self.url, sealed=self.sealed, fix=self._fix)

    def _open_array(self, key: str, writable: bool) -> ts.TensorStore:
        try:
            spec = {"driver": "zarr3", "kvstore": self._child(key), **CHECKED_READS}
            array = ts.open(spec, open=True, context=context(), read=True, write=writable).result()
        except ValueError as e:
            raise SimilarityError(f"cannot open the matrix {key!r} of similarity store {self.url!r}: {e}") from None
        if self.manifest.get("format_version", 1) < 2:  # version 1 wrote no checksums (integrity.UNCHECKED)
            return array
        return integrity.check_codecs(array, list(MATRIX_CODECS), f"{key} of similarity store {self.url!r}", self._fix)

    def _done_markers(self, key: str) -> dict[int, dict]:
        """Layer -> marker of every ``done/<layer>.json`` of one pair."""
        prefix = key + DONE_DIR
        keys = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0"), len(prefix)).result()
        out = {}
        for k in keys:
            name = k.decode()
            if name.endswith(".json") and name[: -len(".json")].isdigit():
                marker = read_json(self._kv, prefix + name, self.url, sealed=self.sealed, fix=self._fix)
                if marker is not None:
                    out[int(name[: -len(".json")])] = marker
        return out

    def _stored_pairs(self, measure: str) -> list[tuple[str, str]]:
        """Pairs of ``measure`` whose ids.json exists (the pair was created completely). A pair folder with done
        markers but no ids.json lost it: a DamageError, never a pair silently missing."""
        check_measure(measure)
        prefix = f"{measure}/"
        keys = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0"), len(prefix)).result()
        found: dict[str, bool] = {}  # pair folder -> whether its ids.json is there
        seen = set()  # every pair folder with any key (one a run began to create counts: it completes it)
        for folder, _, name in (k.decode().partition("/") for k in keys):
            seen.add(folder)
            if name == IDS or name.startswith(DONE_DIR):
                found[folder] = found.get(folder, False) or name == IDS
        lost = sorted(f"{prefix}{folder}/{IDS}" for folder, has_ids in found.items() if not has_ids)
        if lost:
            raise DamageError(f"similarity store {self.url!r} has done layers but no {lost}: deleted. {self._fix}",
                              "missing")  # fmt: skip
        if self.rostered:
            check_listed(self._kv, self.url, self._fix, measure, seen, bool(found))
        pairs = (tuple(folder.split(PAIR_SEPARATOR)) for folder, has_ids in found.items() if has_ids)
        return sorted(p for p in pairs if len(p) == 2 and all(NAME.fullmatch(x) for x in p))

    def roster(self) -> dict[str, list[str]] | None:
        """measure -> the pair folders ever created (version 4, ``engine.stores.pair_roster``); None: no roster."""
        return read_roster(self._kv, self.url, self._fix)


class SimilarityStore(_Store):
    """Write access to a similarity store; get it from ``create_or_open``."""

    @classmethod
    def create_or_open(cls, url: str, manifest: dict) -> SimilarityStore:
        """Opens the store at ``url`` to write, creating its manifest from ``manifest`` (see ``new_manifest``).

        Raises SimilarityMismatchError when the store was computed from another layer store, model, checkpoint,
        layer list, transform, dtype, OT options or SeqSim precision (``COMPARED_FIELDS``), naming each differing
        field with both values; a DamageError when its manifest is gone but its pairs are there."""
        kvstore, kv = _open(url)
        check = lambda m: _check_manifest(provenance.same_layer_store(m, manifest, what="similarity store", url=url,
                                                                      error=SimilarityMismatchError), url)  # fmt: skip
        stored = create_or_compare(kv, MANIFEST, manifest, url, fields=COMPARED_FIELDS, error=SimilarityMismatchError,
                                   what="similarity store", check=check, unrecorded=UNRECORDED_FIELDS,
                                   before_create=lambda: refuse_lost_pairs(kv, url, MANIFEST, MEASURES))  # fmt: skip
        return cls(url, kvstore, kv, stored)

    def create_pair(self, measure: str, lang_a: str, lang_b: str, ids: dict) -> ts.TensorStore:
        """Opens (creating if needed) the array of one pair; ``ids`` has row_ids, col_ids, row_recording,
        col_recording. An existing pair must have the same ids (else SimilarityMismatchError)."""
        key = pair_key(measure, lang_a, lang_b)
        n_rows, n_cols = len(ids["row_ids"]), len(ids["col_ids"])
        spec = matrix_spec(self._child(key), n_layers=len(self.layers), n_rows=n_rows, n_cols=n_cols)
        try:
            array = ts.open(spec, create=True, open=True, context=context()).result()
        except ValueError as e:
            raise SimilarityMismatchError(
                f"pair {key!r} of similarity store {self.url!r} exists with another shape or format ({e}); "
                "compute into a new output folder"
            ) from None
        stored = self._ids(key)
        if self.rostered:
            enrol(self._kv, self.url, self._fix, measure, f"{lang_a}{PAIR_SEPARATOR}{lang_b}")  # before ids.json
        if stored is None:
            write_value(self._kv, key + IDS, json_bytes(ids), self.url)  # after the array: it marks the pair listed
        elif stored != ids:
            raise SimilarityMismatchError(
                f"pair {key!r} of similarity store {self.url!r} was computed for other utterances (its {IDS} "
                "differs from the layer store's tables); compute into a new output folder"
            )
        return array

    def done_markers(self, measure: str, lang_a: str, lang_b: str) -> dict[int, dict]:
        return self._done_markers(pair_key(measure, lang_a, lang_b))

    def write_layer(self, array: ts.TensorStore, measure, lang_a, lang_b, layer: int, scores, marker: dict) -> None:
        """Writes f32[N, M] ``scores`` of ``layer``, then (only once committed) its done marker."""
        key = pair_key(measure, lang_a, lang_b)
        position = self.layer_position(layer)
        scores = np.asarray(scores, np.float32)
        if scores.shape != tuple(array.shape[1:]):
            raise SimilarityError(f"scores of {key!r} must be f32{list(array.shape[1:])}, got {scores.shape}")
        array[position].write(scores).result()
        write_value(self._kv, f"{key}{DONE_DIR}{layer}.json", json_bytes({"layer": int(layer), **marker}), self.url)


class SimilarityReader(_Store):
    """Read access to a similarity store; see the module docstring."""

    def __init__(self, url: str, kvstore: dict, kv: ts.KvStore, manifest: dict):
        super().__init__(url, kvstore, kv, manifest)
        self._arrays: dict[str, ts.TensorStore] = {}  # opened once: a pair's metadata does not change
        self._ids_read: dict[str, dict] = {}  # ids.json of each pair found: written once, at the pair's creation
        self._last_read: tuple[str, int, np.ndarray] | None = None  # (key, layer position, scores)
        self._markers: dict[str, dict[int, dict]] = {}  # done markers of each pair, read once by ``scored``

    def __repr__(self):
        return f"SimilarityReader({self.url!r}, {self.manifest['model_name']}, layers {list(self.layers)})"

    @property
    def measures(self) -> Listing:
        """Measures with at least one stored pair (an attribute, as ``layers``: engine.listing)."""
        return Listing(m for m in MEASURES if self._stored_pairs(m))

    def pairs(self, measure: str) -> list[tuple[str, str]]:
        """Stored (lang_a, lang_b) pairs of ``measure``; ``matrix`` also serves each reversed."""
        return self._stored_pairs(measure)

    def done(self, measure: str, lang_a: str, lang_b: str) -> list[int]:
        """Layers (babelgrid indices) whose matrix for (a, b), or for the reverse pair, is complete."""
        key = self._locate(measure, lang_a, lang_b)[0]
        return sorted(self._done_markers(key))

    def scored(self, measure: str, lang_a: str, lang_b: str, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(bool[N_a], bool[N_b])``: the rows and columns that ``matrix`` scored at ``layer`` (utterances done in
        the layer store then), oriented like ``matrix``; None for a marker written before babelgrid recorded them."""
        key, transposed = self._locate(measure, lang_a, lang_b)
        marker = self._markers[key].get(layer) if key in self._markers else self._refresh_markers(key).get(layer)
        if marker is None:
            raise SimilarityError(f"layer {layer} of {measure!r} {lang_a}/{lang_b} is not done in {self.url!r}")
        if "rows" not in marker:
            return None
        ids = self._ids(key)
        masks = []
        for name, n in (("rows", len(ids["row_ids"])), ("cols", len(ids["col_ids"]))):
            mask = np.zeros(n, bool)
            mask[np.asarray(marker[name], np.int64)] = True
            masks.append(mask)
        return (masks[1], masks[0]) if transposed else (masks[0], masks[1])

    def matrix(self, measure: str, lang_a: str, lang_b: str, layer: int) -> tuple[np.ndarray, list[str], list[str]]:
        """(scores f32[N_a, N_b], row_ids, col_ids) of one layer; rows are utterances of ``lang_a``.

        Returns the stored array of (a, b), or the transpose of (b, a) when only that is stored (for the directional
        measures, the transpose of the other direction). NaN marks utterances not done and layers not computed. A
        computed layer whose chunk is missing or fails its checksum raises a DamageError naming it.
        """
        key, transposed = self._locate(measure, lang_a, lang_b)
        position = self.layer_position(layer)
        ids = self._ids(key)
        if self._last_read is not None and self._last_read[:2] == (key, position):
            scores = self._last_read[2]  # the other direction of the same stored matrix: read once
        elif layer not in self._markers.get(key, {}) and layer not in self._refresh_markers(key):
            # Not computed: no chunk to read (the arrays are opened with fill_missing_data_reads off).
            scores = np.full((len(ids["row_ids"]), len(ids["col_ids"])), np.nan, np.float32)
        else:
            if key not in self._arrays:
                self._arrays[key] = self._open_array(key, writable=False)
            try:
                scores = np.asarray(self._arrays[key][position].read().result())
            except ValueError as e:
                if not is_damage(e):
                    raise
                what = f"the {measure!r} matrix of {key.rstrip('/')} at layer {layer}"
                raise damage_error(e, self.url, what, repair_hint(self.url, "seqsim")) from None
            self._last_read = (key, position, scores)
        if transposed:
            return np.ascontiguousarray(scores.T), list(ids["col_ids"]), list(ids["row_ids"])
        return scores, list(ids["row_ids"]), list(ids["col_ids"])

    def _refresh_markers(self, key: str) -> dict[int, dict]:
        self._markers[key] = self._done_markers(key)
        return self._markers[key]

    def ids(self, measure: str, lang_a: str, lang_b: str) -> dict:
        """The pair's ids.json, oriented so that rows are ``lang_a``."""
        key, transposed = self._locate(measure, lang_a, lang_b)
        ids = self._ids(key)
        if not transposed:
            return ids
        swap = {f"row_{part}": f"col_{part}" for part in ("ids", "recording")}
        return {name: ids[source] for name, source in {**swap, **{b: a for a, b in swap.items()}}.items()}

    def _ids(self, key: str) -> dict | None:
        if key not in self._ids_read:
            ids = super()._ids(key)
            if ids is None:
                return None  # not (yet) stored: asked again next time
            self._ids_read[key] = ids
        return self._ids_read[key]

    def _locate(self, measure: str, lang_a: str, lang_b: str) -> tuple[str, bool]:
        """(pair key, whether it must be transposed) of the stored matrix that answers (measure, a, b)."""
        key = pair_key(measure, lang_a, lang_b)
        if self._ids(key) is not None:
            return key, False
        reverse = pair_key(REVERSED_MEASURE.get(measure, measure), lang_b, lang_a)
        if self._ids(reverse) is not None:
            return reverse, True
        stored, fix = self.pairs(measure), f"--pairs {lang_a}:{lang_b}"  # or the measure, when it has no pair of it
        fix = fix if stored else f"--measure {measure} (it has {list(self.measures())})"
        raise SimilarityError(
            f"similarity store {self.url!r} has no {measure!r} matrix for {lang_a}/{lang_b} in either order; it has "
            f"{[f'{a}{PAIR_SEPARATOR}{b}' for a, b in stored][:20]}. Run the seqsim job with {fix}"
        )


def _open(url: str) -> tuple[dict, ts.KvStore]:
    try:
        return open_kvstore(url)
    except BabelgridError as e:
        raise SimilarityError(str(e)) from None


def open_similarity(url: str) -> SimilarityReader:
    """Opens the similarity store at ``url`` to read (SimilarityError if there is none)."""
    kvstore, kv = _open(url)
    manifest = read_json(kv, MANIFEST, url)
    if manifest is None:
        raise SimilarityError(f"no similarity store at {url!r}: it has no {MANIFEST}. Check the path (the seqsim "
                              f"job writes them){where_instead(url, FORMAT_NAME)}")  # fmt: skip
    return SimilarityReader(url, kvstore, kv, _check_manifest(manifest, url))
