"""The encode pipeline: every encoder layer of every utterance into a layer store, resumably.

Stages, overlapped so that the accelerator never waits on the host:

1. host threads decode audio and compute log-mel windows ahead of the device (``prefetch``);
2. the encoder step runs on every local device (``engine.parallel.ShardedEncoder``) over
   fixed-size batches of 30 s windows (the last one padded, so one program is compiled and every
   window's result is bitwise independent of what shares its batch);
3. while batch ``i+1`` computes, batch ``i``'s states are copied to the host and handed to the
   store, whose writes stay in flight (``LanguageArrays.write_utterance``); an utterance is marked
   done only after its states are committed.

Multi-host: with ``jax.distributed`` initialised, process ``p`` of ``P`` takes its own contiguous
share of each language's utterances (``engine.stores.layers.utterance_range``, aligned to the store's
``LENGTHS_CHUNK`` so that no two processes ever write the same chunk); every process uses only its
local devices, so processes wait on each other only at the barriers after the store and each
language's arrays are created.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.data.features import features_for_audio
from engine.data.sources import get_source
from engine.data.utterance import Utterance
from engine.dtypes import DTYPES
from engine.errors import AudioError, LanguageError
from engine.parallel import ShardedEncoder, data_mesh
from engine.runs import RunSummary, check_choice, process_zero_first, progress_bar, writer_lease
from engine.stores.kv import StoreError
from engine.stores.language import StatesRejectedError, utterance_range
from engine.stores.layers import LayerStore
from engine.stores.schema import DTYPES as STORAGE_DTYPES
from engine.stores.schema import StoreInfo, UtteranceRow, check_language_code
from engine.whisper.languages import fleurs_to_whisper
from engine.whisper.loaded import LoadedWhisper, load_whisper

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
    out: str  # store URL: a local path or any TensorStore kvstore URL (gs://, s3://, memory://)
    model: str | None = None  # checkpoint source; None = the packaged whisper-base
    dataset: str = "demo"  # see engine.data.sources.get_source
    langs: tuple[str, ...] | None = None  # None = every language of the dataset
    split: str = "test"
    layers: tuple[int, ...] | None = None  # None = every layer 0..L+1
    dtype: str = "float32"  # storage dtype
    compute_dtype: str = "float32"  # weights and activations on the device
    batch_size: int = 8  # 30 s windows per encoder step (all devices together)
    long_audio: str = "window"  # or "truncate"
    prefetch: int = 4  # host threads decoding audio and computing log-mel ahead of the device
    break_lease: bool = False  # take over another run's unexpired writer lease (its holder is known to be dead)
    progress: bool | None = True  # None: only when stderr is a terminal

    def __post_init__(self):
        check_choice("dtype", self.dtype, STORAGE_DTYPES)
        check_choice("compute_dtype", self.compute_dtype, DTYPES)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_choice("long_audio", self.long_audio, audio_lib.LONG_AUDIO_MODES)


@dataclasses.dataclass
class EncodeSummary(RunSummary):
    done: int = 0  # utterances written in this run
    already_done: int = 0  # found complete in the store and skipped
    audio_seconds: float = 0.0
    windows: int = 0
    bytes_written: int = 0

    def report(self) -> str:
        lines = [
            f"encoded {self.done} utterances ({self.audio_seconds:.1f} s of audio, {self.windows} windows) "
            f"in {self.seconds:.1f} s: {self.done / max(self.seconds, 1e-9):.2f} utt/s, "
            f"{self.audio_seconds / max(self.seconds, 1e-9):.1f} audio-s/s, "
            f"{self.bytes_written / max(self.seconds, 1e-9) / 1e6:.1f} MB/s written",
            f"already complete: {self.already_done}; skipped: {self.n_skipped}",
        ]
        return "\n".join(lines + self.skip_lines())


@dataclasses.dataclass(frozen=True)
class _Task:
    """One utterance to encode: where it comes from and where its states go."""

    lang: str
    index: int  # utterance index in the language's store arrays
    utt: Utterance
    row: UtteranceRow
    arrays: object  # engine.stores.layers.LanguageArrays of ``lang``


@dataclasses.dataclass
class _Prepared:
    """One utterance, decoded and turned into log-mel windows on a host thread."""

    task: _Task
    mel: np.ndarray | None  # f32[window, n_mels, 3000]
    frames: np.ndarray | None  # i32[window] valid encoder frames per window
    seconds: float = 0.0
    error: str | None = None  # why it is skipped
    reason: str | None = None  # the error's class name: the skip count's key


def expected_frames(n_samples: int, sample_rate: int, long_audio: str) -> int:
    """Valid encoder frames of an utterance of ``n_samples`` at ``sample_rate``, before decoding."""
    # soxr's output length is the input length times the rate ratio, rounded to nearest.
    n = int(n_samples * audio_lib.SAMPLE_RATE / sample_rate + 0.5)
    if long_audio == "truncate":
        n = min(n, audio_lib.N_SAMPLES)
    full, rest = divmod(n, audio_lib.N_SAMPLES)
    return full * audio_lib.N_ENCODER_FRAMES + (int(audio_lib.encoder_frames(rest)) if rest else 0)


def _prepare(task: _Task, n_mels: int, long_audio: str) -> _Prepared:
    try:
        samples = task.utt.load()
        mel, frames = features_for_audio(samples, n_mels, long_audio)
        return _Prepared(task, mel, frames, len(samples) / audio_lib.SAMPLE_RATE)
    except AudioError as e:
        return _Prepared(task, None, None, error=str(e), reason=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - one clip's unforeseen failure is that clip's skip, not the batch's end
        log.exception("unexpected error preparing %s/%s (%s)", task.lang, task.utt.id, task.utt.path)
        return _Prepared(task, None, None, error=f"{type(e).__name__}: {e}", reason=type(e).__name__)


def _probe_rows(utts: Sequence[Utterance], long_audio: str) -> list[UtteranceRow]:
    """The store's utterance table, from headers only (no decoding): frames known before encoding."""
    rows = []
    for utt in utts:
        n_frames, n_windows, duration = 0, 0, 0.0
        try:
            info = utt.probe()
            duration = info.duration_s
            n_frames = expected_frames(info.frames, info.sample_rate, long_audio)
            n_windows = max(1, -(-n_frames // audio_lib.N_ENCODER_FRAMES))  # as split_windows will cut it
        except AudioError:
            pass  # reported (and counted once) when the encoder stage tries to decode it
        rows.append(
            UtteranceRow(
                id=utt.id,
                lang=utt.lang,
                path=utt.path,
                transcription=utt.transcription,
                raw_transcription=utt.raw_transcription,
                duration_s=duration,
                n_frames=n_frames,
                n_windows=n_windows,
                recording=utt.recording,
                speaker=utt.speaker,
                gender=utt.gender,
            )
        )
    return rows


def _batches(prepared: Iterator[_Prepared], batch_size: int, summary: EncodeSummary):
    """Group prepared utterances into batches of at most ``batch_size`` windows.

    Yields (mel f32[batch_size, n_mels, 3000] padded with silence, [(prepared, first window row)]).
    An utterance with more windows than a batch holds is split over several batches.
    """
    pending: list[tuple[_Prepared, int, int]] = []  # (prepared, first window, n windows) in this batch
    rows = 0
    for p in prepared:
        if p.error is not None:
            t = p.task
            summary.skip(p.reason, t.lang, t.utt.id)
            log.warning("skipping %s/%s (%s): %s: %s", t.lang, t.utt.id, t.utt.path, p.reason, p.error)
            continue
        start = 0
        while start < len(p.mel):
            take = min(len(p.mel) - start, batch_size - rows)
            pending.append((p, start, take))
            rows += take
            start += take
            if rows == batch_size:
                yield _assemble(pending, batch_size)
                pending, rows = [], 0
    if pending:
        yield _assemble(pending, batch_size)


def _assemble(pending, batch_size):
    first = pending[0][0].mel
    mel = np.zeros((batch_size, *first.shape[1:]), np.float32)
    # Padding rows hold log-mel of silence rather than zeros, so they look like real (empty) input.
    mel[:] = first.min()
    parts, row = [], 0
    for p, start, take in pending:
        mel[row : row + take] = p.mel[start : start + take]
        parts.append((p, start, take, row))
        row += take
    return mel, parts


class _Assembler:
    """Collects the windows of each utterance (possibly over several batches) and emits whole utterances."""

    def __init__(self):
        self.partial: dict[tuple[str, int], list[np.ndarray]] = collections.defaultdict(list)

    def add(self, states: np.ndarray, parts) -> Iterator[tuple[_Prepared, np.ndarray]]:
        # states: [layer, batch, 1500, embed]
        for p, start, take, row in parts:
            for w in range(take):
                n = int(p.frames[start + w])
                self.partial[p.task.lang, p.task.index].append(states[:, row + w, :n])
            if start + take == len(p.mel):
                yield p, np.concatenate(self.partial.pop((p.task.lang, p.task.index)), axis=1)


def run_encode(config: EncodeConfig, *, whisper: LoadedWhisper | None = None) -> EncodeSummary:
    """Encode ``config.dataset`` into the layer store at ``config.out``; returns the summary.

    The run holds the store's writer lease (``engine.stores.lease``): a second run on the same store is refused.
    """
    t0 = time.perf_counter()
    whisper = whisper or load_whisper(config.model, dtype=jnp.dtype(config.compute_dtype))
    source = get_source(config.dataset)
    langs = list(config.langs) if config.langs else source.languages()
    _check_languages(langs, whisper)  # before anything is created, the lease included
    with writer_lease(config.out, "encode", config.break_lease) as lease:
        summary = _encode(config, whisper, source, langs, lease)
    summary.seconds = time.perf_counter() - t0
    return summary


def _encode(config: EncodeConfig, whisper: LoadedWhisper, source, langs: list[str], lease) -> EncodeSummary:
    dims = whisper.dims
    layers = tuple(range(dims.n_audio_layer + 2)) if config.layers is None else tuple(config.layers)
    info = StoreInfo(
        model_name=whisper.checkpoint.name,
        checkpoint_sha256=whisper.checkpoint.sha256,
        dims=dims,
        layers=layers,
        dtype=config.dtype,
        compute_dtype=config.compute_dtype,
        long_audio=config.long_audio,
    )
    pid, n_proc = jax.process_index(), jax.process_count()
    creation = {"dataset": config.dataset, "split": config.split}
    store = process_zero_first(
        "babelgrid-store-created", lambda: LayerStore.create_or_open(config.out, info, creation=creation)
    )

    encoder = ShardedEncoder(
        whisper.model, data_mesh(jax.local_devices()), layers=layers, out_dtype=jnp.dtype(config.dtype)
    )
    local_batch = math.ceil(config.batch_size / encoder.local_multiple) * encoder.local_multiple
    summary = EncodeSummary()
    bytes_per_frame = len(layers) * dims.n_audio_state * jnp.dtype(config.dtype).itemsize
    progress = _Progress(config.progress)

    # Tables and arrays for every language first, then one stream of batches across languages, so
    # that only the very last batch of the run is padded.
    tasks: list[_Task] = []
    opened = []
    for lang in langs:
        utts = source.utterances(lang, config.split)
        if not utts:
            log.warning("no utterances for language %s in split %s", lang, config.split)
            continue
        # Every process builds the same table from the same headers (deterministic), and only
        # process 0 creates the arrays; the others open them after the barrier.
        rows = _probe_rows(utts, config.long_audio)
        arrays = process_zero_first(f"babelgrid-lang-{lang}", lambda rows=rows, lang=lang: store.language(lang, rows))
        opened.append(arrays)
        mine = utterance_range(len(utts), pid, n_proc)
        done = arrays.done()
        todo = [i for i in mine if not done[i]]
        summary.already_done += len(mine) - len(todo)
        tasks += [_Task(lang, i, utts[i], rows[i], arrays) for i in todo]
    # Few-window utterances together, many-window ones together: fewer utterances split over batches.
    tasks.sort(key=lambda t: t.row.n_windows)
    progress.start(len(tasks))

    with concurrent.futures.ThreadPoolExecutor(max(1, config.prefetch)) as pool:
        prepared = _prefetched(pool, tasks, dims.n_mels, config.long_audio, config.prefetch * 4)
        assembler = _Assembler()
        in_flight = None  # (device result, parts) of the batch dispatched last
        for mel, parts in _batches(prepared, local_batch, summary):
            lease.check()  # another run broke the lease: stop before writing more
            result = encoder(mel)  # dispatched asynchronously
            if in_flight is not None:
                _drain(in_flight, assembler, summary, progress, bytes_per_frame)
            in_flight = (result, parts)
        if in_flight is not None:
            _drain(in_flight, assembler, summary, progress, bytes_per_frame)
    for arrays in opened:
        arrays.flush()
    progress.close()
    return summary


def _check_languages(langs: Sequence[str], whisper: LoadedWhisper) -> None:
    """Every language code must be able to name a store folder: all the bad ones in one error, before the store is
    touched. A well-formed code Whisper does not know is encoded (the encoder is language-agnostic) with a warning:
    the decoder-based jobs (align, decode) skip it unless told which language token to use."""
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
    if whisper.dims.is_multilingual:
        unknown = [lang for lang in langs if _whisper_code(lang) is None]
        if unknown:
            log.warning(
                "languages %s have no Whisper language code: they are encoded, but align and decode skip them unless "
                "given a language token to use",
                unknown,
            )


def _whisper_code(lang: str) -> str | None:
    try:
        return fleurs_to_whisper(lang)
    except LanguageError:
        return None


def _drain(in_flight, assembler, summary, progress, bytes_per_frame):
    result, parts = in_flight
    states = np.asarray(result)  # waits for this batch only; the next one is already running
    summary.windows += sum(take for _, _, take, _ in parts)
    for p, utt_states in assembler.add(states, parts):
        t = p.task
        if utt_states.shape[1] != t.row.n_frames:
            # The audio decoded to another length than its header announced: the table would lie.
            summary.skip("FrameCountMismatch", t.lang, t.utt.id)
            log.warning(
                "skipping %s/%s: %d frames decoded, the header announced %d",
                t.lang,
                t.utt.id,
                utt_states.shape[1],
                t.row.n_frames,
            )
            continue
        try:
            t.arrays.write_utterance(t.index, utt_states)
        except StatesRejectedError as e:
            # One utterance's states (NaN from a diverged encoder, or beyond float16): skip it, keep the batch going.
            summary.skip(type(e).__name__, t.lang, t.utt.id)
            log.warning("skipping %s/%s (%s): %s", t.lang, t.utt.id, t.utt.path, e)
            continue
        summary.done += 1
        summary.audio_seconds += p.seconds
        summary.bytes_written += utt_states.shape[1] * bytes_per_frame
        progress.update(1, p.seconds)


def _prefetched(pool, tasks: Sequence[_Task], n_mels, long_audio, depth) -> Iterator[_Prepared]:
    """Prepared utterances in ``tasks`` order, at most ``depth`` ahead of the consumer."""
    queue: collections.deque = collections.deque()
    it = iter(tasks)
    for task in it:
        queue.append(pool.submit(_prepare, task, n_mels, long_audio))
        if len(queue) >= depth:
            break
    while queue:
        yield queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(_prepare, nxt, n_mels, long_audio))


class _Progress:
    """The run's progress bar (``engine.runs.progress_bar``), started once the work is known, with audio-s/s."""

    def __init__(self, enabled: bool | None):
        self.enabled = enabled
        self.bar = progress_bar(0, "encode", "utt", False)

    def start(self, total: int):
        self.bar = progress_bar(total, "encode", "utt", self.enabled)
        self.audio, self.t0 = 0.0, time.perf_counter()

    def update(self, n: int, seconds: float):
        self.audio += seconds
        self.bar.update(n)
        if not self.bar.disable:
            self.bar.set_postfix(audio_s_per_s=f"{self.audio / max(time.perf_counter() - self.t0, 1e-9):.1f}")

    def close(self):
        self.bar.close()
