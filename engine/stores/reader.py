"""Reading a layer store, for analysts::

    from engine.stores.reader import open_store
    s = open_store("gs://bucket/run1")            # a local path, file://, gs://, s3://, memory://
    s.info                                        # StoreInfo: model, checkpoint sha256, dims, stored layers, dtype
    s.languages                                   # ['de', 'en', ...]
    df = s.utterances("de")                       # pandas DataFrame, one row per utterance index
    s.lookup("de", "1234")                        # utterance indices whose id is "1234" (one per recording)
    x = s.states("de", 17, layer=4)               # f[frames, embed] of utterance 17, valid frames only
    x = s.states("de", "1234", layer=4)           # the same by id, when the id names one utterance
    X, n = s.language_layer("de", layer=4)        # f[utterance, max_frames, embed] zero-padded, i32[utterance]
    s.skipped("de")                               # what the encode job could not encode, and why (a DataFrame)

``layer`` is babelgrid's encoder layer index (0 = conv stem + positions, 1..L = block outputs, L+1 = ``ln_post``
output), not a position in the array; asking for a layer the store does not hold is an error that lists the ones it
does. Arrays come back in the storage dtype (``ml_dtypes.bfloat16`` for bfloat16 stores) unless ``dtype`` is given,
e.g. ``dtype=np.float32``. An utterance is readable once its encoding committed (``done``); ``lengths`` is -1 before.

``utterances`` needs pandas (not a babelgrid dependency); ``utterances_table`` returns the same as a pyarrow Table.
"""

from __future__ import annotations

import collections
import operator
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import tensorstore as ts

from engine.errors import StoreError
from engine.listing import Listing
from engine.stores.integrity import NON_FINITE, DamageError, chunk_key, damage_error, is_damage, repair_hint
from engine.stores.kv import storage_error
from engine.stores.language import LanguageArrays
from engine.stores.layers import LayerStore
from engine.stores.records import parse_record
from engine.stores.schema import StoreInfo


def open_store(url: str) -> StoreReader:
    """Opens the layer store at ``url`` to read (StoreError if there is none, or of another format version)."""
    return StoreReader(LayerStore.open(url))


class StoreReader:
    """Read access to one layer store; see the module docstring."""

    def __init__(self, store: LayerStore):
        self._store = store
        self._ids: dict[str, dict[str, list[int]]] = {}

    def __repr__(self):
        return f"StoreReader({self.url!r}, {self.info.model_name}, layers {list(self.info.layers)}, {self.info.dtype})"

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def info(self) -> StoreInfo:
        return self._store.info

    @property
    def manifest(self) -> dict:
        """``manifest.json`` as a dict (StoreInfo fields, creation info, layout)."""
        return self._store.manifest

    @property
    def languages(self) -> Listing:
        """The store's complete languages, sorted (an attribute, as ``info``: engine.listing)."""
        return Listing(self._store.languages())

    def arrays(self, lang: str) -> LanguageArrays:
        """The language's arrays (``states_store``, ``lengths_store`` TensorStores) and utterance rows."""
        return self._store.language(lang)

    def utterances_table(self, lang: str) -> pa.Table:
        """The utterance table of ``lang``: row u = utterance u (columns in docs/store.md)."""
        return self.arrays(lang).table()

    def utterances(self, lang: str):
        """The utterance table of ``lang`` as a pandas DataFrame indexed by utterance."""
        return _by_utterance(self.utterances_table(lang), "utterances")

    def lookup(self, lang: str, id: str | int) -> list[int]:
        """Utterance indices of ``lang`` whose id is ``id`` (several when a sentence has several recordings)."""
        if lang not in self._ids:
            ids: dict[str, list[int]] = {}
            for u, row in enumerate(self.arrays(lang).rows):
                ids.setdefault(row.id, []).append(u)
            self._ids[lang] = ids
        return list(self._ids[lang].get(str(id), []))

    def lengths(self, lang: str) -> np.ndarray:
        """``i32[utterance]``: valid frames per utterance, -1 where not done."""
        return self.arrays(lang).lengths()

    def skipped_records(self, lang: str) -> dict[int, dict]:
        """``skipped_table``'s rows as {utterance: {"id", "reason", "message"}}."""
        return self._store.skipped(lang)

    def skipped_table(self, lang: str) -> pa.Table:
        """What the encode job could not encode in ``lang``, and why: one row per utterance it skipped that is still
        not done (``utterance``, ``id``, ``reason``: the error's kind, e.g. ``SilentAudioError``, ``message``). Empty
        where it skipped nothing; utterances it has not reached yet are not done but not listed."""
        entries = self.skipped_records(lang)
        return pa.table(
            {
                "utterance": pa.array(list(entries), pa.int64()),
                **{k: pa.array([e[k] for e in entries.values()], pa.string()) for k in ("id", "reason", "message")},
            }
        )

    def skipped(self, lang: str):
        """``skipped_table`` as a pandas DataFrame indexed by utterance."""
        return _by_utterance(self.skipped_table(lang), "skipped")

    def skips_named(self, langs: Sequence[str]) -> tuple[int, str]:
        """How many utterances of ``langs`` the encode job skipped (still not done), and what a person reads of them:
        "AudioDecodeError 1, SilentAudioError 2, named in de/skipped.json, en/skipped.json" ("" where none). The
        utterances not done that it did not skip are unfinished work, which a rerun adds; these it skips again."""
        reasons = {lang: [e["reason"] for e in self.skipped_records(lang).values()] for lang in sorted(langs)}
        counts = collections.Counter(r for rs in reasons.values() for r in rs)
        if not counts:
            return 0, ""
        files = ", ".join(f"{lang}/skipped.json" for lang, rs in reasons.items() if rs)
        return counts.total(), ", ".join(
            f"{reason} {n}" for reason, n in sorted(counts.items())
        ) + f", named in {files}"

    def done(self, lang: str) -> np.ndarray:
        """``bool[utterance]``: utterances whose states are committed."""
        return self.arrays(lang).done()

    def layer_position(self, layer: int) -> int:
        """Position on the ``layer`` axis of babelgrid layer index ``layer``."""
        layers = self.info.layers
        if isinstance(layer, bool) or layer not in layers:
            raise StoreError(
                f"layer {layer!r} is not in store {self.url!r}; it holds layers {list(layers)} of its "
                f"{self.info.family} model ({self.info.layer_meaning})"
            )
        return layers.index(layer)

    def utterance_index(self, lang: str, utterance: int | str) -> int:
        """Index of ``utterance``: an int is an index, a str an id that must name exactly one utterance."""
        arrays = self.arrays(lang)
        if isinstance(utterance, str):
            found = self.lookup(lang, utterance)
            if len(found) != 1:
                raise StoreError(
                    f"id {utterance!r} names {len(found)} utterances of {lang!r} ({found[:10]}): pass one index"
                    if found
                    else f"{lang!r} has no utterance with id {utterance!r}; see utterances({lang!r})"
                )
            return found[0]
        u = operator.index(utterance)
        if not 0 <= u < arrays.n_utterances:
            raise StoreError(f"utterance index {u} is outside 0..{arrays.n_utterances - 1} of {lang!r}")
        return u

    def states(self, lang: str, utterance: int | str, layer: int, dtype=None) -> np.ndarray:
        """``f[frames, embed]``: layer ``layer`` of one utterance, its valid frames only."""
        arrays = self.arrays(lang)
        u = self.utterance_index(lang, utterance)
        position = self.layer_position(layer)
        n_frames = int(arrays.lengths([u])[0])
        if n_frames < 0:
            skip = self.skipped_records(lang).get(u)
            why = (
                f"the encode job skipped it ({skip['reason']}: {skip['message']}); a rerun on this store skips it "
                "again (the dataset with its audio fixed is another revision of it, to encode into a new store)"
                if skip
                else "its states were never committed; rerun the encode job on this store to finish it"
                + _writing(self._store)
            )
            raise StoreError(f"utterance {u} (id {arrays.rows[u].id!r}) of {lang!r} is not done: {why}")
        out = _read(arrays.states_store[position, u, :n_frames], arrays, layer)
        _check_finite(out[None], np.asarray([u]), arrays, layer)
        return out if dtype is None else out.astype(dtype)

    def language_layer(
        self,
        lang: str,
        layer: int,
        utterances: Sequence[int] | None = None,
        dtype=None,
        *,
        frames: int | None = None,
        zero_padding: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer of a whole language (or of ``utterances``, indices), as one padded array, read in one pass.

        Args:
          dtype: the dtype to read into (TensorStore casts while reading: no second copy); default the stored one.
          frames: read only the first ``frames`` frames of each utterance (default ``max_frames``): a caller that
            knows the longest length it needs skips the 30 s windows' padding.
          zero_padding: zero every frame past an utterance's length. A kernel that masks by length itself passes
            False and gets the frames as stored (zeros there too, unless written otherwise). Utterances not done read
            as zeros either way: their chunks are never read.

        Returns:
          states: ``f[utterance, frames, embed]``.
          lengths: ``i32[utterance]``, valid frames, -1 for utterances not done.

        A done utterance whose chunk is missing or fails its checksum, or whose states hold NaN or inf (which the
        encode job never writes), raises a DamageError naming it.
        """
        arrays = self.arrays(lang)
        position = self.layer_position(layer)
        frames = arrays.max_frames if frames is None else int(frames)
        if not 0 <= frames <= arrays.max_frames:
            raise StoreError(f"frames must be in 0..{arrays.max_frames} for {lang!r}, got {frames}")
        view = arrays.states_store[position, :, :frames]
        if dtype is not None:
            view = ts.cast(view, ts.dtype(np.dtype(dtype).name))
        if utterances is None:
            lengths = arrays.lengths()
            index = None
        else:
            index = np.asarray(utterances, np.int64).reshape(-1)
            if index.size and (index.min() < 0 or index.max() >= arrays.n_utterances):
                bad = index[(index < 0) | (index >= arrays.n_utterances)]
                raise StoreError(f"utterances must be indices in 0..{arrays.n_utterances - 1} of {lang!r} (it has "
                                 f"{arrays.n_utterances}); got {bad.size} outside, e.g. {int(bad[0])}")  # fmt: skip
            lengths = arrays.lengths(index)
        done = lengths >= 0
        if done.all():  # one read of everything asked for: the common case
            states = _read(view if index is None else view[index], arrays, layer)
        else:
            # Chunks of utterances not done do not exist (the arrays are opened with fill_missing_data_reads off).
            states = np.zeros((len(lengths), frames, arrays.embed), view.dtype.numpy_dtype)
            wanted = np.flatnonzero(done) if index is None else index[done]
            if wanted.size:
                states[done] = _read(view[wanted], arrays, layer)
        _check_finite(states, np.arange(arrays.n_utterances) if index is None else index, arrays, layer)
        if zero_padding:
            states[np.arange(frames) >= np.maximum(lengths, 0)[:, None]] = 0
        return states, lengths


def _check_finite(states: np.ndarray, index: np.ndarray, arrays: LanguageArrays, layer: int) -> None:
    """A DamageError naming the first utterance of ``states`` (``f[utterance, frame, embed]``, utterance indices
    ``index``) that holds NaN or inf: the encode job refuses to write them (``NonFiniteStatesError``), so a stored
    one was put there since, past the chunk checksums (which a rewrite with valid codecs recomputes)."""
    if np.isfinite(states).all():
        return
    row = int(np.flatnonzero(~np.isfinite(states).all(axis=tuple(range(1, states.ndim))))[0])
    u = int(index[row])
    raise DamageError(
        f"damaged data in {arrays.url!r}: layer {layer} of language {arrays.lang!r}, utterance {u} (id "
        f"{arrays.rows[u].id!r}, {arrays.rows[u].path!r}) holds NaN or inf, which the encode job never writes. "
        f"{repair_hint(arrays.url, 'encode')}",
        NON_FINITE,
    )


def _read(view: ts.TensorStore, arrays: LanguageArrays, layer: int) -> np.ndarray:
    """``view.read()``, a missing or corrupt chunk as a DamageError naming the language, layer and utterance."""
    try:
        return view.read().result()
    except ValueError as e:
        if not is_damage(e):
            raise storage_error("read", f"{arrays.lang}/states", arrays.url, e) from None
        key = chunk_key(e)
        what = f"layer {layer} of language {arrays.lang!r}"
        if key is not None:
            u = int(key.rsplit("/", 1)[-1].split(".")[2])  # c.<layer chunk>.<utterance>.<frame chunk>.<embed chunk>
            if 0 <= u < arrays.n_utterances:
                what += f", utterance {u} (id {arrays.rows[u].id!r}, {arrays.rows[u].path!r})"
        raise damage_error(e, arrays.url, what, repair_hint(arrays.url, "encode")) from None


def _by_utterance(table: pa.Table, method: str):
    """``table`` as a pandas DataFrame indexed by its ``utterance`` column (pandas is not a babelgrid dependency)."""
    try:
        import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
    except ImportError:
        raise StoreError(f"{method}() needs pandas: pip install pandas, or use {method}_table()") from None
    return table.to_pandas().set_index("utterance")


def _writing(store: LayerStore) -> str:
    """``" (a run writes it now: ...)"`` when the store's writer lease is unexpired (``engine.runtime.lease``'s
    record, read here without it), else "": an utterance not done yet is not one to rerun for (analyst probe)."""
    found = store._kv.read("lease.json").result()
    if found.state != "value":
        return ""
    holder = parse_record(bytes(found.value))
    if not isinstance(holder.get("expires_unix"), (int, float)) or holder["expires_unix"] <= time.time():
        return ""
    return f" (a run writes it now: {holder.get('job')} on host {holder.get('host')!r}, pid {holder.get('pid')})"
