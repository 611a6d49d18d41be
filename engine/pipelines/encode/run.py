"""The encode pipeline: every encoder layer of every utterance into a layer store, resumably.

Stages, overlapped so that the accelerator never waits on the host:

1. host threads decode audio and compute the model's input windows ahead of the device (``prefetch``);
2. the encoder step runs on every local device (the family's ``Encoder.sharded``: for Whisper
   ``engine.models.common.parallel.ShardedEncoder``) over fixed-size batches of windows of at most 30 s (the last one
   padded, so every window's result is independent of what shares its batch);
3. when batch ``i`` is dispatched, the copy of its states into pinned host memory is queued behind it
   (``transfers.start_to_host``); while batch ``i+1`` computes, batch ``i``'s host buffers are handed to the store
   as views, whose writes stay in flight on its writer threads (``LanguageArrays.write_utterance``, lent: the casts
   into shards run there too) while batch ``i-1``'s commit; an utterance is marked done only after its states are
   committed.

Multi-host: with ``jax.distributed`` initialised, the processes share the work through claim keys in the store
(``engine.runtime.claims``): a work unit is a block of ``claim_utterances`` utterances of one language, and each
process takes the next block nobody holds, so faster hosts take more and a dead host's blocks are taken by the
others once its claims expire. Every process uses only its local devices; processes wait on each other only at the
barriers after the store and each language's arrays are created, never after the work starts. Two processes may
mark utterances of one ``lengths`` chunk: TensorStore rewrites a chunk as a conditional read-modify-write, retried
on a conflict, on every kvstore that honours conditional writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.data.pairing import check_listing, pairing_lines, shared_after_skips
from engine.data.revision import source_revision
from engine.data.sources import get_source
from engine.data.utterance import Source, Utterance
from engine.errors import DamageError, StoreError
from engine.models.common.parallel import data_mesh
from engine.models.family import load_encoder
from engine.models.interface import Encoder
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.transfers import start_to_host
from engine.pipelines.stages.memory import check_batch_size
from engine.pipelines.stages.windows import Assembler, Task, batches, padding_note, prefetched, probe_rows
from engine.runtime.parallel import is_process_zero
from engine.runtime.runs import RunSummary, job_lease, process_zero_first, progress_bar, work_claims
from engine.runtime.transfers import guarded_loop
from engine.runtime.units import UnitLoop
from engine.stores.language import StatesRejectedError
from engine.stores.layers import LayerStore
from engine.stores.schema import StoreInfo, check_language_code
from engine.stores.utterances import StoreMismatchError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EncodeSummary(RunSummary):
    done: int = 0  # utterances written in this run
    already_done: int = 0  # found complete in the store and skipped
    audio_seconds: float = 0.0
    windows: int = 0
    bytes_written: int = 0
    shared_ids: dict = dataclasses.field(default_factory=dict)  # (a, b) -> ids the two languages share
    shared_stored: dict = dataclasses.field(default_factory=dict)  # the same without what this run skipped

    def report(self) -> str:
        lines = [
            f"encoded {self.done} utterances ({self.audio_seconds:.1f} s of audio, {self.windows} windows) "
            f"in {self.seconds:.1f} s: {self.done / max(self.seconds, 1e-9):.2f} utt/s, "
            f"{self.audio_seconds / max(self.seconds, 1e-9):.1f} audio-s/s, "
            f"{self.bytes_written / max(self.seconds, 1e-9) / 1e6:.1f} MB/s written",
            f"already complete: {self.already_done}; skipped: {self.n_skipped}",
            self.work_line("utterance blocks"),
            *pairing_lines(self.shared_ids),
        ]
        if self.skipped and self.shared_stored != self.shared_ids:  # a skipped clip leaves its pairs without it
            lines += pairing_lines(self.shared_stored, f"shared ids without the {self.n_skipped} skipped utterances")
        if self.skipped:
            langs = sorted({lang for items in self.skipped.values() for lang, _ in items})
            lines.append(
                f"skipped utterances are named, with why, in the store ({', '.join(f'{x}/skipped.json' for x in langs)}"
                "; reader.skipped(lang)); a rerun skips them again, so seqsim needs --allow_partial to score the rest "
                "(the other jobs that read the store read its done utterances, and say so)"
            )
        return "\n".join(lines + self.skip_lines())


def run_encode(config: EncodeConfig, *, encoder: Encoder | None = None) -> EncodeSummary:
    """Encode ``config.dataset`` into the layer store at ``config.run.out``; returns the summary.

    The model is ``config.model`` of any family (``engine.models.family``), or ``encoder``, one already loaded (any
    family's ``Encoder``, as ``engine.models.family.load_encoder`` returns it). The run holds the store's writer lease
    (``engine.runtime.lease``): a second run on the same store is refused.
    """
    t0 = time.perf_counter()
    if encoder is None:
        encoder = load_encoder(
            config.model, adapter=config.adapter, dtype=jnp.dtype(config.compute_dtype), output=config.tower_output
        )
    source = dataset_source(config)
    langs = list(config.langs) if config.langs else source.languages()
    check_languages(langs, encoder)  # before anything is created, the lease included
    # The store keeps its layers in increasing order: --layers 7,3,0 asks for the same three as 0,3,7.
    layers = tuple(range(encoder.n_layers_out)) if config.layers is None else tuple(sorted(config.layers))
    bad = [layer for layer in layers if not 0 <= layer < encoder.n_layers_out]
    if bad:  # refused here, not by the store's schema under the lease (which had made the output folder)
        raise StoreError(f"--layers {bad} are not layers of {encoder.name} (0..{encoder.n_layers_out - 1}: "
                         f"{encoder.layer_meaning}); nothing was written")  # fmt: skip
    check_batch_size(encoder, layers, config.compute_dtype, config.batch_size)  # as is --batch_size
    listing = {lang: source.utterances(lang, config.split) for lang in langs}
    shared = check_listing(
        listing, f"dataset {config.dataset!r} split {config.split!r}", allow_empty=config.allow_empty,
        allow_unpaired=config.allow_unpaired,
    )  # fmt: skip
    if is_process_zero():
        for line in pairing_lines(shared):
            log.info("%s", line)
    revision = source_revision(source)
    with job_lease(config, "encode") as lease:
        # A source without splits (a folder, a manifest without a split column) has no split to record or caption
        summary = _encode(config, encoder, layers, listing, lease, revision, config.split if source.splits() else None)
    summary.shared_ids = shared
    summary.shared_stored = shared_after_skips(listing, summary.skipped)
    summary.seconds = time.perf_counter() - t0
    return summary


def dataset_source(config: EncodeConfig) -> Source:
    """The dataset an encode config names, with its options (flat folder language, hf: column mapping)."""
    return get_source(config.dataset, lang=config.lang, audio_column=config.audio_column,
                      text_column=config.text_column, id_column=config.id_column,
                      lang_column=config.lang_column)  # fmt: skip


def _check_revision(store: LayerStore, revision: str | None, url: str) -> None:
    """A resume must list the same data: the revision the store recorded (hub commit or file digest) against this
    run's. Stores written before revisions were recorded, and sources that state none, are not compared."""
    stored = store.manifest.get("created", {}).get("dataset_revision")
    if stored is not None and revision is not None and stored != revision:
        raise StoreMismatchError(
            f"layer store {url!r} was written from another revision of its dataset: dataset_revision (stored "
            f"{stored!r}, now {revision!r}). The dataset changed since: write to a new output folder, or restore the "
            "dataset the store was written from"
        )


def _encode(
    config: EncodeConfig, model: Encoder, layers: tuple[int, ...], listing: dict[str, list[Utterance]], lease,
    revision: str | None, split: str | None,
) -> EncodeSummary:  # fmt: skip
    info = StoreInfo(
        model_name=model.name,
        checkpoint_sha256=model.sha256,
        dims=model.store_dims,
        layers=layers,
        dtype=config.dtype,
        frame_rate=model.frame_rate,
        compute_dtype=config.compute_dtype,
        long_audio=config.long_audio,
        features=model.features,
        family=model.family,
        layer_meaning=model.layer_meaning,
        batch_size=config.batch_size,  # changes bytes (schema.StoreInfo): compared on every resume and worker join
        matmul_precision=config.run.matmul_precision,  # as does this, on accelerators (runs.job_lease applies it)
    )
    creation = {"dataset": config.dataset, "split": split, "dataset_revision": revision}
    claims = work_claims(config.run, "encode")

    def create() -> LayerStore:
        store = LayerStore.create_or_open(config.run.out, info, creation=creation)
        _check_revision(store, revision, config.run.out)
        if lease.opener:  # the settings agree: nothing is touched before. Under the lease, before any process claims
            claims.clear(keep_live=lease.shared)
        return store

    store = process_zero_first("babelgrid-store-created", create)
    try:
        others = sorted(set(store.languages()) - set(listing))
    except DamageError:  # an index verify --repair deleted: this run writes it again, and names nothing here
        others = []
    if others and is_process_zero():  # a study whose --langs narrowed still scored them downstream (newcomer probe)
        log.warning("the store %r also holds %s, encoded by an earlier run: the jobs that read it see every language "
                    "it holds (give them --langs), or encode into a new --out", config.run.out, others)  # fmt: skip

    encoder = model.sharded(data_mesh(jax.local_devices()), layers, jnp.dtype(config.dtype))
    local_batch = math.ceil(config.batch_size / encoder.local_multiple) * encoder.local_multiple
    summary = EncodeSummary()
    bytes_per_frame = len(layers) * model.embed * jnp.dtype(config.dtype).itemsize
    progress = _Progress(config.run.progress)

    # Tables and arrays for every language first, then the work units: blocks of claim_utterances utterances.
    units: dict[str, tuple] = {}  # name -> (arrays, utts, rows, utterance indices)
    opened, blocks = [], 0
    recorded: set[str] = set()  # languages whose skipped.json names utterances not done (_UnitTracker)
    for lang, utts in listing.items():
        if not utts:
            log.warning("no utterances for language %s in split %s", lang, config.split)
            continue
        # Every process builds the same table from the same headers (deterministic), and only
        # process 0 creates the arrays; the others open them after the barrier.
        rows = probe_rows(utts, config.long_audio, model, config.max_seconds)
        note = padding_note(lang, rows)
        if note and is_process_zero():
            log.warning("%s", note)
        arrays = process_zero_first(f"babelgrid-lang-{lang}", lambda rows=rows, lang=lang: store.language(lang, rows))
        opened.append(arrays)
        if store.skipped(lang):
            recorded.add(lang)
        done = arrays.done()
        blocks += math.ceil(len(utts) / config.claim_utterances)
        for start in range(0, len(utts), config.claim_utterances):
            block = range(start, min(start + config.claim_utterances, len(utts)))
            if done[block.start : block.stop].all():
                summary.already_done += len(block) if is_process_zero() else 0
            else:
                units[f"{lang}/{start:09d}"] = (arrays, utts, rows, block)
    lease.open()  # every language's arrays exist: workers waiting to join go on
    progress.start(sum(len(u[3]) for u in units.values()))

    def is_done(name: str) -> bool:
        arrays, _, _, block = units[name]
        return bool(arrays.done()[block.start : block.stop].all())

    with UnitLoop(claims, lease, summary, progress) as loop:
        what = f"blocks of up to {config.claim_utterances} utterances of one language"
        for claimed in loop.rounds(list(units), is_done, total=blocks, weight=lambda n: len(units[n][3]), what=what):
            tracker = _UnitTracker(loop, summary, store, recorded, progress)
            tasks = tracker.tasks(claimed, units)
            _run_pipeline(
                config, model, encoder, tasks, local_batch, tracker, summary, progress, bytes_per_frame, lease
            )
            for arrays in opened:
                arrays.flush()
            tracker.close()
    return summary


def _run_pipeline(config, model, encoder, tasks, local_batch, tracker, summary, progress, bytes_per_frame, lease):
    """Encodes ``tasks`` (an iterator: claims are taken as the prefetching threads need more)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, config.prefetch)) as pool:
        depth = config.prefetch * 4
        prepared = prefetched(
            pool,
            tasks,
            model,
            config.long_audio,
            depth,
            allow_silent=config.allow_silent,
            max_seconds=config.max_seconds,
        )
        assembler = Assembler()
        in_flight = None  # (device result, parts) of the batch dispatched last
        for batch, parts in batches(prepared, local_batch, summary, tracker, model.collate):
            lease.check()  # another run broke the lease: stop before writing more
            with guarded_loop("the encode job's batch"):  # implicit host-to-device copies refused: it puts its batch
                result = start_to_host(encoder(*batch))  # both dispatched asynchronously: compute, then the copy
            if in_flight is not None:
                _drain(in_flight, assembler, summary, progress, bytes_per_frame, tracker)
                tracker.release_finished()
            in_flight = (result, parts)
        if in_flight is not None:
            _drain(in_flight, assembler, summary, progress, bytes_per_frame, tracker)


class _UnitTracker:
    """The claimed units of one round: which of their utterances are resolved (written or skipped), so that a unit's
    claim is released as soon as its writes are committed, or finished with the utterances it had to skip. What it
    skipped, and why, goes into the language's ``skipped.json`` (``LayerStore.record_skips``) as the unit ends: read
    where the store is read (``reader.skipped``, seqsim's refusal of a partial store), long after the log is gone.
    ``recorded``: the languages whose record has entries (read once per run), whose unit ends rewrite it even when
    they skipped nothing (a clip a rerun encodes, e.g. with --allow_silent, is named no more)."""

    def __init__(self, loop: UnitLoop, summary: EncodeSummary, store: LayerStore, recorded: set[str], progress):
        self.loop, self.summary, self.store, self.recorded = loop, summary, store, recorded
        self.progress = progress  # counts every utterance of a claimed unit once resolved: done, written or skipped
        self.open: dict[str, dict] = {}  # unit -> {"claim", "lang", "todo", "left", "handles", "skipped"}
        self.uncounted: list[tuple] = []  # (write, audio seconds) queued, not yet counted: the bar counts commits

    def tasks(self, claimed, units) -> Iterator[Task]:
        for claim in claimed:
            arrays, utts, rows, block = units[claim.unit]
            done = arrays.done()
            todo = [i for i in block if not done[i]]
            self.summary.already_done += len(block) - len(todo)
            self.progress.update(len(block) - len(todo), 0.0)
            self.open[claim.unit] = {"claim": claim, "lang": arrays.lang, "todo": list(todo), "left": len(todo),
                                     "handles": [], "skipped": {}}  # fmt: skip
            # Few-window utterances together, many-window ones together: fewer utterances split over batches.
            todo.sort(key=lambda i: rows[i].n_windows)
            yield from (Task(arrays.lang, i, claim.unit, utts[i], rows[i], arrays) for i in todo)

    def written(self, task: Task, handle, seconds: float) -> None:
        unit = self.open[task.unit]
        unit["left"] -= 1
        unit["handles"].append(handle)
        self.uncounted.append((handle, seconds))

    def count_committed(self) -> None:
        """Advances the bar by the queued writes that have committed since: a write that fails is never counted (a
        bar at 60/60 before the error said the failed writes were done)."""
        ok = [h.done() and h.future.exception() is None for h, _ in self.uncounted]
        if any(ok):
            self.progress.update(sum(ok), sum(s for (_, s), good in zip(self.uncounted, ok, strict=True) if good))
            self.uncounted = [pair for pair, good in zip(self.uncounted, ok, strict=True) if not good]

    def skipped(self, task: Task, reason: str, message: str) -> None:
        unit = self.open[task.unit]
        unit["left"] -= 1
        unit["skipped"][task.index] = {"id": str(task.utt.id), "reason": reason, "message": message}
        self.progress.update(1, 0.0)  # a resume of a store whose clips were all skipped ended its bar at 0/15

    def release_finished(self) -> None:
        """Releases every unit whose utterances are all resolved and committed (it never waits)."""
        self.count_committed()
        for name, unit in list(self.open.items()):
            if unit["left"] == 0 and all(h.done() for h in unit["handles"]):
                self._close(name)

    def close(self) -> None:
        """The end of a round, after every language's flush: releases (or finishes) every unit left."""
        for name in list(self.open):
            self._close(name)

    def _close(self, name: str) -> None:
        unit = self.open.pop(name)
        concurrent.futures.wait([handle.future for handle in unit["handles"]])
        self.count_committed()  # what did commit, before a failed write's error
        for handle in unit["handles"]:
            handle.result()  # a failed write raises here: the claim stays, and expires, for another try
        skipped, lang = unit["skipped"], unit["lang"]
        if skipped or lang in self.recorded:
            self.store.record_skips(lang, unit["todo"], skipped)
            self.recorded.add(lang)
        ids = [s["id"] for s in skipped.values()]
        self.loop.done(unit["claim"], progress=0, finished={"skipped": ids} if ids else None)


def check_languages(langs: Sequence[str], model: Encoder) -> None:
    """Every language code must be able to name a store folder: all the bad ones in one error, before the store is
    touched. A well-formed code the model's decoder has no language token for is encoded (the encoder is
    language-agnostic) with a warning: the decoder-based jobs (align, decode) skip it unless told which token to use."""
    bad = []
    for lang in langs:
        try:
            check_language_code(lang)
        except StoreError:
            bad.append(lang)
    if bad:
        raise StoreError(
            f"language codes {bad} cannot name store folders: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit (no '/', '.' or spaces). Rename them in the dataset (manifest 'lang' column or folder "
            "names); nothing was written"
        )
    unknown = model.languages_without_token(langs)
    if unknown:
        log.warning(
            "languages %s have no language token in this %s model: they are encoded, but align and decode skip them "
            "unless given a language token to use",
            unknown,
            model.family,
        )


def _drain(in_flight, assembler, summary, progress, bytes_per_frame, tracker):
    result, parts = in_flight
    states = np.asarray(result)  # waits for this batch's copy only (a view of it); the next one is already running
    summary.windows += sum(take for _, _, take, _ in parts)
    for p, utt_states in assembler.add(states, parts):
        t = p.task
        if utt_states.shape[1] != t.row.n_frames:
            # The audio decoded to another length than its header announced: the table would lie.
            message = f"{utt_states.shape[1]} frames decoded, the header announced {t.row.n_frames}"
            summary.skip("FrameCountMismatch", t.lang, t.utt.id)
            tracker.skipped(t, "FrameCountMismatch", message)
            log.warning("skipping %s/%s: %s", t.lang, t.utt.id, message)
            continue
        try:
            # Lent: the batch's host buffer is read-only and held until every write of it has cast its shard.
            tracker.written(t, t.arrays.write_utterance(t.index, utt_states, lent=True), p.seconds)
        except StatesRejectedError as e:
            # One utterance's states (NaN from a diverged encoder, or beyond float16): skip it, keep the batch going.
            summary.skip(type(e).__name__, t.lang, t.utt.id)
            tracker.skipped(t, type(e).__name__, str(e))
            log.warning("skipping %s/%s (%s): %s", t.lang, t.utt.id, t.utt.path, e)
            continue
        summary.done += 1
        summary.audio_seconds += p.seconds
        summary.bytes_written += utt_states.shape[1] * bytes_per_frame


class _Progress:
    """The run's progress bar (``engine.runtime.runs.progress_bar``), started once the work is known, with audio-s/s."""

    def __init__(self, enabled: bool | None):
        self.enabled = enabled
        self.bar = progress_bar(0, "encode", "utt", False)

    def start(self, total: int):
        self.bar = progress_bar(total, "encode", "utt", self.enabled)
        self.audio, self.t0 = 0.0, time.perf_counter()

    def update(self, n: int, seconds: float = 0.0):  # seconds: of audio encoded here (none for others' units)
        self.audio += seconds
        if not self.bar.disable:  # before update, which may print: the first status line said 0.0 (a probe's)
            self.bar.set_postfix(audio_s_per_s=f"{self.audio / max(time.perf_counter() - self.t0, 1e-9):.1f}")
        self.bar.update(n)

    def close(self):
        self.bar.close()
