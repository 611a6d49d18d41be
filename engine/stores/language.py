"""One language's arrays in a layer store: writing utterances by the commit protocol, reading lengths and done.

Commit protocol: ``write_utterance(u, states)`` writes utterance u's whole shard (padding included, so nothing is
read back), waits for it to commit, then writes ``lengths[u]``, the completion marker. Every kvstore write replaces
one key atomically (the file driver writes ``<key>.__lock``, fsyncs it and renames it over ``<key>``; object stores
replace whole objects), so a kill at any moment leaves each utterance either marked done with complete states or
not marked; a resumed job redoes the utterances whose length is -1 (overwriting is idempotent).

Concurrency: processes write disjoint utterances. A state shard belongs to one utterance, so states never conflict.
``lengths`` is chunked by ``LENGTHS_CHUNK`` utterances and a marker rewrites its whole chunk, so the job gives each
process a contiguous utterance range whose bounds are multiples of ``LENGTHS_CHUNK`` (``utterance_range``). (TensorStore
makes that chunk rewrite a conditional read-modify-write on kvstores that support it, file and GCS among them, so
unaligned ranges are not corrupted there; the alignment keeps writers off each other's chunks on every backend.)
Within one process use one ``LanguageArrays`` per language (``LayerStore.language`` returns the same one): it writes
the markers of every utterance whose shard committed meanwhile in one write per chunk.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import operator
import os
import threading

import ml_dtypes
import numpy as np
import tensorstore as ts

from engine.axes import UTTERANCE
from engine.errors import ShapeError, StoreError
from engine.faults import fault_point
from engine.stores.integrity import damage_error, is_damage, repair_hint
from engine.stores.kv import storage_error
from engine.stores.schema import LENGTHS_CHUNK, is_done
from engine.stores.utterances import UtteranceRow, rows_to_table


class StatesRejectedError(StoreError):
    """One utterance's states cannot be stored as they are; nothing was written, the utterance stays not done, and
    a batch job skips it and goes on."""


class NonFiniteStatesError(StatesRejectedError):
    """The states hold NaN or inf."""


class StatesOverflowError(StatesRejectedError):
    """The states exceed the storage dtype's range (float16's 65504)."""


MAX_IN_FLIGHT_BYTES = 1 << 30  # host bytes of shards queued or being written, per LanguageArrays
# Shard writes in flight at once, per LanguageArrays: each writer thread copies its shard into place, hands it to
# TensorStore (which encodes the inner chunks on its data-copy pool, one thread per core) and waits for the commit.
# Two per core keep every core busy while the others wait on the kvstore; never fewer than 8, for object stores'
# latency on small hosts.
WRITE_THREADS = max(8, 2 * (os.cpu_count() or 1))


def utterance_range(n_utterances: int, process_index: int, process_count: int) -> range:
    """The utterances process ``process_index`` of ``process_count`` writes: contiguous, bounds aligned to
    ``LENGTHS_CHUNK`` (so no two processes rewrite one ``lengths`` chunk), as even as that allows; may be empty."""
    if not 0 <= process_index < process_count:
        raise StoreError(f"process_index={process_index} is outside 0..{process_count - 1}")
    n_chunks = -(-n_utterances // LENGTHS_CHUNK)
    start, stop = (n_chunks * i // process_count for i in (process_index, process_index + 1))
    return range(min(start * LENGTHS_CHUNK, n_utterances), min(stop * LENGTHS_CHUNK, n_utterances))


@dataclasses.dataclass(frozen=True)
class WriteHandle:
    """One utterance's write in flight: states shard, then the ``lengths`` marker."""

    utterance: int
    n_frames: int
    future: concurrent.futures.Future

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> None:
        """Waits until the utterance is committed and marked done; raises its error if it failed."""
        self.future.result(timeout)


class LanguageArrays:
    """The ``states`` and ``lengths`` arrays and utterance table of one language. Get it from ``LayerStore.language``.

    Attributes:
      lang: the language folder name.
      rows: the utterance table; ``rows[u]`` describes utterance u.
      layers: stored layer indices (babelgrid indexing), the order of the ``layer`` axis.
      n_utterances, max_frames, n_layers, embed: the array shape ``states: f[n_layers, n_utterances, max_frames,
        embed]``.
    """

    def __init__(self, *, url, lang, rows, layers, states, lengths, writable, max_in_flight_bytes=MAX_IN_FLIGHT_BYTES,
                 write_threads=WRITE_THREADS):  # fmt: skip
        self.url = url
        self.lang = lang
        self.rows: tuple[UtteranceRow, ...] = tuple(rows)
        self.layers: tuple[int, ...] = tuple(layers)
        self._states = states
        self._lengths = lengths
        self._writable = writable
        self.n_layers, self.n_utterances, self.max_frames, self.embed = (int(n) for n in states.shape)
        self.dtype = states.dtype.numpy_dtype
        self._max_in_flight_bytes = int(max_in_flight_bytes)
        self._write_threads = operator.index(write_threads)
        if self._write_threads < 1:
            raise StoreError(f"write_threads must be at least 1, got {write_threads}")
        self._cond = threading.Condition()
        self._in_flight_bytes = 0
        self._pending: set[concurrent.futures.Future] = set()
        self._failure: tuple[int, BaseException] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._marks: dict[int, tuple[int, list[concurrent.futures.Future]]] = {}  # u -> (n_frames, handles)
        self._marking = False  # a marker thread is running
        # Padded shard buffers for reuse, with the frames last written into each: only the frames between two
        # utterances' lengths need zeroing, and no utterance pays for fresh pages.
        self._free: list[tuple[np.ndarray, int]] = []

    def __repr__(self):
        return (
            f"LanguageArrays({self.url!r}, lang={self.lang!r}, states {self.dtype.name}[{self.n_layers}, "
            f"{self.n_utterances}, {self.max_frames}, {self.embed}])"
        )

    @property
    def states_store(self) -> ts.TensorStore:
        """The ``states`` TensorStore, f[layer, utterance, frame, embed]: only frames < lengths[u] are meaningful."""
        return self._states

    @property
    def lengths_store(self) -> ts.TensorStore:
        """The ``lengths`` TensorStore, i32[utterance]."""
        return self._lengths

    def table(self):
        """The utterance table as a ``pyarrow.Table`` (``utterance`` index column, then UtteranceRow's fields)."""
        return rows_to_table(self.rows)

    def lengths(self, index=None) -> np.ndarray:
        """``i32[utterance]``: committed valid frames per utterance (of ``index``, utterance indices, if given),
        ``NOT_DONE`` (-1) where not done. A corrupt ``lengths`` chunk is a DamageError."""
        view = self._lengths if index is None else self._lengths[np.asarray(index, np.int64)]
        try:
            return view.read().result()
        except ValueError as e:
            if not is_damage(e):
                raise storage_error("read", f"{self.lang}/lengths", self.url, e) from None
            what = f"the done markers (lengths) of language {self.lang!r}"
            raise damage_error(e, self.url, what, repair_hint(self.url, "encode")) from None

    def done(self) -> np.ndarray:
        """``bool[utterance]``: the utterances whose states are committed (``schema.is_done``)."""
        return is_done(self.lengths())

    def write_utterance(self, u: int, states, *, lent: bool = False) -> WriteHandle:
        """Queues the write of utterance ``u``; returns at once unless ``max_in_flight_bytes`` are already queued.

        Args:
          u: utterance index, a row of the utterance table.
          states: ``f[n_layers, n_frames, embed]`` host array (any float dtype; cast to the storage dtype), the stored
            layers in ``layers`` order, ``n_frames == rows[u].n_frames``. It is cast into a padded shard buffer (the
            buffers are reused, so queued shards cost no allocation); the caller may change it once this returns.
          lent: the caller leaves ``states`` unchanged until the handle is done (the encode job's read-only host
            copies of device results), so the cast runs on a writer thread: the copies spread over the cores
            instead of holding up the caller. The bytes stored are the same.

        Returns:
          A WriteHandle. A failed write is raised by ``handle.result()``, ``flush()`` and the next
          ``write_utterance``. Bad input (shape, frame count, NaN, values the storage dtype cannot hold) raises here.
        """
        self._raise_failure()
        u, states = self._check(u, states)
        n_frames = states.shape[1]
        nbytes = self.n_layers * self.max_frames * self.embed * self.dtype.itemsize  # the padded shard
        future = concurrent.futures.Future()
        with self._cond:
            while (
                self._failure is None
                and self._in_flight_bytes
                and (self._in_flight_bytes + nbytes > self._max_in_flight_bytes)
            ):
                self._cond.wait()
            self._raise_failure()
            self._in_flight_bytes += nbytes
            self._pending.add(future)
            shard, dirty = self._free.pop() if self._free else (None, 0)
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._write_threads, "babelgrid-store")
        try:
            if lent:
                self._pool.submit(self._commit, u, shard, dirty, states, n_frames, nbytes, future)
            else:
                shard = self._fill(shard, dirty, states)  # the copy that frees the caller's array
                self._pool.submit(self._commit, u, shard, None, None, n_frames, nbytes, future)
        except BaseException:
            with self._cond:
                self._in_flight_bytes -= nbytes
                self._pending.discard(future)
                self._cond.notify_all()
            raise
        return WriteHandle(u, n_frames, future)

    def flush(self) -> None:
        """Waits for every write in flight; raises the first error of any write since this object was made."""
        while True:
            with self._cond:
                pending = list(self._pending)
            if not pending:
                break
            concurrent.futures.wait(pending)
        self._raise_failure()

    def close(self) -> None:
        """``flush()``, then stops the writer threads."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._free.clear()

    def __enter__(self) -> LanguageArrays:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, u, states) -> tuple[int, np.ndarray]:
        """Checks one utterance's index and states, on the caller's thread."""
        if not self._writable:
            raise StoreError(f"store {self.url!r} was opened read-only (LayerStore.open); open it with create_or_open")
        u = operator.index(u)
        if not 0 <= u < self.n_utterances:
            raise StoreError(f"utterance index {u} is outside 0..{self.n_utterances - 1} of language {self.lang!r}")
        states = np.asarray(states)
        expected = self.rows[u].n_frames
        if expected == 0:
            raise StoreError(
                f"utterance {u} (id {self.rows[u].id!r}, {self.rows[u].path!r}) has n_frames=0 in the utterance "
                "table: its audio could not be read when the table was made, so it stays not done"
            )
        if states.ndim != 3 or states.shape[0] != self.n_layers or states.shape[2] != self.embed:
            raise ShapeError(
                f"states of utterance {u} must be f[layer={self.n_layers}, frame={expected}, embed={self.embed}] "
                f"(the stored layers {list(self.layers)}), got shape {states.shape}"
            )
        if states.dtype.kind != "f" and states.dtype.name != "bfloat16":
            raise ShapeError(f"states of utterance {u} must be floating point, got dtype {states.dtype}")
        if states.shape[1] != expected:
            row = self.rows[u]
            raise ShapeError(
                f"states of utterance {u} (id {row.id!r}, {row.path!r}) have {states.shape[1]} frames but the "
                f"utterance table says n_frames={expected}; the frame counts given to LayerStore.language must be "
                "the encoder's"
            )
        largest, top = _max_abs(states), float(ml_dtypes.finfo(self.dtype).max)
        if not np.isfinite(largest):
            raise NonFiniteStatesError(f"states of utterance {u} hold NaN or inf values: the encoder diverged")
        if largest > top:
            raise StatesOverflowError(
                f"states of utterance {u} reach {largest:.4g}, past the {self.dtype.name} maximum {top:.4g}: "
                "store bfloat16 or float32"
            )
        return u, states

    def _fill(self, shard: np.ndarray | None, dirty: int, states: np.ndarray) -> np.ndarray:
        """``states`` cast into the padded ``shard`` (a new one if None), whose frames from ``dirty`` on were written
        before and are zeroed."""
        if shard is None:
            shard = np.zeros((self.n_layers, self.max_frames, self.embed), self.dtype)
        n_frames = states.shape[1]
        # The zeroing goes through an unsigned view: ml_dtypes fills bfloat16 with zeros 5-14x slower than uint16
        # (copies run at the same speed; measured once, 8 x 1000 x 512 and 34 x 1200 x 1280 shards).
        with np.errstate(over="ignore", invalid="ignore"):
            shard[:, :n_frames] = states
        shard.view(f"u{self.dtype.itemsize}")[:, n_frames:dirty] = 0
        return shard

    def _commit(self, u: int, shard, dirty, states, n_frames: int, nbytes: int, future) -> None:
        """Runs on a writer thread: the shard (cast here first if ``states`` is given: a lent write); once it has
        committed, its marker is queued (done => complete states)."""
        try:
            if states is not None:
                shard = self._fill(shard, dirty, states)
                states = None  # the caller's buffer is no longer needed
            self._write_states(u, shard)
        except BaseException as error:
            self._finish([(u, future)], error)
            return
        else:
            fault_point("after_states")
        finally:
            with self._cond:
                self._in_flight_bytes -= nbytes
                if shard is not None:  # TensorStore copied it by the time the write returned
                    # A lent shard that failed before its cast may hold stale frames up to max_frames.
                    self._free.append((shard, n_frames if states is None else self.max_frames))
                self._cond.notify_all()
        with self._cond:
            _, futures = self._marks.setdefault(u, (n_frames, []))
            futures.append(future)
            if not self._marking:
                self._marking = True
                threading.Thread(target=self._mark_loop, name="babelgrid-store-marks").start()

    def _mark_loop(self) -> None:
        """Writes the queued markers, all of them in one write per round, until the queue is empty.

        TensorStore does not merge separate writes into one chunk: each would be its own read-modify-write of the
        `lengths` chunk (a few ms on a local disk, about a second per update of one object on GCS). One write per
        round covers every utterance whose shard committed while the previous round was writing.
        """
        while True:
            with self._cond:
                marks, self._marks = self._marks, {}
                if not marks:
                    self._marking = False
                    return
            index = np.fromiter(marks, np.int64, len(marks))
            values = np.array([n for n, _ in marks.values()], np.int32)
            try:
                self._lengths[ts.d[UTTERANCE][index]].write(values).commit.result()
                error = None
                fault_point("after_marker", len(index))
            except BaseException as e:
                error = e
            self._finish([(u, f) for u, (_, futures) in marks.items() for f in futures], error)

    def _write_states(self, u: int, shard: np.ndarray) -> None:
        """Writes utterance u's whole shard and waits for it to commit; marks nothing."""
        self._states[ts.d[UTTERANCE][u]].write(shard).commit.result()

    def _finish(self, handles: list[tuple[int, concurrent.futures.Future]], error: BaseException | None) -> None:
        with self._cond:
            for u, future in handles:
                self._pending.discard(future)
                if error is not None and self._failure is None:
                    self._failure = (u, error)
            self._cond.notify_all()
        for _, future in handles:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            u, error = self._failure
            raise StoreError(
                f"writing utterance {u} of language {self.lang!r} to {self.url!r} failed: {error}; utterances "
                "without a length stay not done, so rerunning the job redoes them"
            ) from error


def _max_abs(x: np.ndarray) -> float:
    """Largest |x|, NaN if x holds a NaN, in one or two vectorised passes (ml_dtypes' bfloat16 reductions are slow)."""
    if x.dtype.name == "bfloat16":
        bits = (x.view(np.uint16) & 0x7FFF).max()  # |x| orders like its bits; exponent all ones: inf or NaN
        return float(np.array(bits, np.uint16).view(x.dtype))
    high, low = float(x.max()), float(x.min())  # NaN propagates through both
    return high if np.isnan(high) else max(high, -low)
