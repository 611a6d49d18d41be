"""The host stage of the jobs that run an encoder over audio (encode, neurons): utterances -> model input windows ->
fixed-size batches, and states -> utterances.

Host threads decode audio and compute each window's model input ahead of the device (``prefetched``, with the
family's ``Encoder.windows``: Whisper's 30 s log-mel windows, the others' raw or fbank windows of at most 30 s);
``batches`` packs them into batches of exactly ``batch_size`` windows (the last padded with empty rows by the family's
``collate``, so that every window's result is independent of what shares its batch); ``Assembler`` joins each
utterance's windows again from the batches' states. ``probe_rows`` builds the store's utterance table from audio
headers before any decoding (``Encoder.expected_frames``). ``audio_skip_reason`` names why audio that cannot be
decoded is skipped (decode, heads).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from engine.data import audio as audio_lib
from engine.data.audio import AudioNotFoundError, EmptyAudioError, LongAudioError, SilentAudioError
from engine.data.utterance import Utterance
from engine.errors import AudioError
from engine.stores.utterances import UtteranceRow

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    """One utterance to encode: where it comes from and where its states go."""

    lang: str
    index: int  # utterance index in the language's store arrays
    unit: str  # the work unit (claim) it belongs to
    utt: Utterance
    row: UtteranceRow
    arrays: object  # engine.stores.layers.LanguageArrays of ``lang``


@dataclasses.dataclass
class Prepared:
    """One utterance, decoded and turned into the model's input windows on a host thread."""

    task: Task
    mel: list | None  # one model input per window (Whisper: f32[n_mels, 3000] log-mel)
    frames: np.ndarray | None  # i32[window] valid encoder frames per window
    seconds: float = 0.0
    error: str | None = None  # why it is skipped
    reason: str | None = None  # the error's class name: the skip count's key


def resampled_samples(n_samples: int, sample_rate: int) -> int:
    """Samples at 16 kHz of ``n_samples`` at ``sample_rate``: soxr's output length, the input's times the rate ratio,
    rounded to nearest."""
    return int(n_samples * audio_lib.SAMPLE_RATE / sample_rate + 0.5)


def over_cap(duration_s: float, long_audio: str, max_seconds: float | None) -> bool:
    """Whether audio of ``duration_s`` is over the encode job's ``--max_seconds`` (None: no cap). Truncated audio is
    never over: its first 30 s are kept."""
    return max_seconds is not None and long_audio == "window" and duration_s > max_seconds


def too_long(task: Task, max_seconds: float) -> LongAudioError:
    """The skip of an utterance over ``--max_seconds``, with why and the ways on."""
    seconds = task.row.duration_s
    return LongAudioError(
        f"audio {task.utt.path!r} is {seconds:.0f} s long, over --max_seconds {max_seconds:g}: a language's layer "
        f"store pads every utterance's shard to its longest, so each utterance of {task.lang!r} would cost "
        f"{seconds:.0f} s of frames to write and to read, and its own shard is compressed and written whole, in host "
        "memory (a 2-hour recording through whisper-base took 23 GB). Split the recording into utterances, keep its "
        "first 30 s with --long_audio truncate, or raise --max_seconds (a new store: the cap decides which utterances "
        "the store's table holds)"
    )


def prepare(task: Task, encoder, long_audio: str, allow_silent: bool = False, max_seconds: float | None = None
            ) -> Prepared:  # fmt: skip
    """``task``'s audio decoded into ``encoder``'s input windows, or the reason it is skipped: audio that cannot be
    decoded, digital silence (unless ``allow_silent``), or a recording over ``max_seconds`` (not decoded at all)."""
    try:
        if max_seconds is not None and over_cap(task.row.duration_s, long_audio, max_seconds):  # neurons: no row
            raise too_long(task, max_seconds)
        samples = task.utt.load(allow_silent=allow_silent)
        mel, frames = encoder.windows(samples, long_audio)
        kept = len(samples)
        if long_audio == "truncate" and kept > audio_lib.N_SAMPLES:  # every family's window is 30 s
            kept = audio_lib.N_SAMPLES
            log.warning("%s/%s (%s): long_audio='truncate' keeps the first %d s of its %.1f s", task.lang, task.utt.id,
                        task.utt.path, audio_lib.CHUNK_LENGTH, len(samples) / audio_lib.SAMPLE_RATE)  # fmt: skip
        return Prepared(task, mel, frames, kept / audio_lib.SAMPLE_RATE)
    except AudioError as e:
        return Prepared(task, None, None, error=str(e), reason=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - one clip's unforeseen failure is that clip's skip, not the batch's end
        log.exception("unexpected error preparing %s/%s (%s)", task.lang, task.utt.id, task.utt.path)
        return Prepared(task, None, None, error=f"{type(e).__name__}: {e}", reason=type(e).__name__)


def probe_rows(utts: Sequence[Utterance], long_audio: str, encoder, max_seconds: float | None = None
               ) -> list[UtteranceRow]:  # fmt: skip
    """The store's utterance table, from headers only (no decoding): frames known before encoding, as ``encoder``
    (an ``engine.models.interface.Encoder``) will cut the audio. A recording over ``max_seconds`` gets no frames, as
    unreadable audio does: it is skipped (``prepare``), and the language's shards are not padded to its length."""
    rows = []
    for utt in utts:
        n_frames, n_windows, duration = 0, 0, 0.0
        try:
            info = utt.probe()
            duration = info.duration_s
            if not over_cap(duration, long_audio, max_seconds):
                n_frames, n_windows = encoder.expected_frames(
                    resampled_samples(info.frames, info.sample_rate), long_audio
                )
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


PADDING_WARNED = 8.0  # a language whose longest utterance has this many times its median's frames is warned of
PADDING_FLOOR = 3000  # frames (60 s of Whisper's): below this, no padding is worth a warning


def padding_note(lang: str, rows: Sequence[UtteranceRow]) -> str | None:
    """What a person should know when one long utterance pads every shard of ``lang``'s store (its chunks hold the
    language's longest utterance's frames): that utterance and the factor, or None where the padding is ordinary.
    ``rows``: the store's table, or anything with its ``id``, ``duration_s`` and ``n_frames`` (the plan's)."""
    framed = [(r.n_frames, r) for r in rows if r.n_frames > 0]
    if not framed:
        return None
    longest, row = max(framed, key=lambda x: x[0])
    median = float(np.median([n for n, _ in framed]))
    if longest < PADDING_FLOOR or longest < PADDING_WARNED * median:
        return None
    return (
        f"{lang}: its longest utterance ({row.id}, {row.duration_s:.0f} s) pads every shard of the language to "
        f"{longest} frames, {longest / median:.0f}x its median utterance's {median:.0f}: writing and reading "
        f"{lang} cost that much more than its states (zstd shrinks the zeros on disk, not the work); --max_seconds "
        "skips recordings longer than it asks"
    )


class NoClaims:
    """The tracker ``batches`` reports skips to, for jobs that claim no work units (they count the skip as done on
    their progress bar)."""

    def __init__(self, progress):
        self.progress = progress

    def skipped(self, task, reason: str, message: str) -> None:
        self.progress.update(1)


def batches(prepared: Iterator[Prepared], batch_size: int, summary, tracker, collate):
    """Group prepared utterances into batches of at most ``batch_size`` windows.

    Yields (the encoder's arguments for ``batch_size`` rows, from ``collate``: Whisper's mel f32[batch_size, n_mels,
    3000] padded with silence; [(prepared, first window, windows, row)]).
    An utterance with more windows than a batch holds is split over several batches.
    """
    pending: list[tuple[Prepared, int, int]] = []  # (prepared, first window, n windows) in this batch
    rows = 0
    for p in prepared:
        if p.error is not None:
            t = p.task
            summary.skip(p.reason, t.lang, t.utt.id)
            tracker.skipped(t, p.reason, p.error)
            log.warning("skipping %s/%s (%s): %s: %s", t.lang, t.utt.id, t.utt.path, p.reason, p.error)
            continue
        start = 0
        while start < len(p.mel):
            take = min(len(p.mel) - start, batch_size - rows)
            pending.append((p, start, take))
            rows += take
            start += take
            if rows == batch_size:
                yield assemble(pending, batch_size, collate)
                pending, rows = [], 0
    if pending:
        yield assemble(pending, batch_size, collate)


def assemble(pending, batch_size, collate):
    inputs, parts, row = [], [], 0
    for p, start, take in pending:
        inputs.extend(p.mel[start : start + take])
        parts.append((p, start, take, row))
        row += take
    return collate(inputs, batch_size), parts


class Assembler:
    """Collects the windows of each utterance (possibly over several batches) and emits whole utterances."""

    def __init__(self):
        self.partial: dict[tuple[str, int], list[np.ndarray]] = collections.defaultdict(list)

    def add(self, states: np.ndarray, parts) -> Iterator[tuple[Prepared, np.ndarray]]:
        # states: [layer, batch, frame, embed]
        for p, start, take, row in parts:
            for w in range(take):
                n = int(p.frames[start + w])
                self.partial[p.task.lang, p.task.index].append(states[:, row + w, :n])
            if start + take == len(p.mel):
                pieces = self.partial.pop((p.task.lang, p.task.index))
                # One window (most utterances): the view itself, no copy; the store copies it into its shard.
                yield p, pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)


def prefetched(pool, tasks: Iterable[Task], encoder, long_audio, depth, *, allow_silent: bool = False,
               max_seconds: float | None = None) -> Iterator[Prepared]:  # fmt: skip
    """Prepared utterances in ``tasks`` order, at most ``depth`` ahead of the consumer; ``allow_silent``: digital
    silence is encoded, not skipped; ``max_seconds``: longer recordings are skipped (``prepare``)."""
    queue: collections.deque = collections.deque()
    it = iter(tasks)
    for task in it:
        queue.append(pool.submit(prepare, task, encoder, long_audio, allow_silent, max_seconds))
        if len(queue) >= depth:
            break
    while queue:
        yield queue.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            queue.append(pool.submit(prepare, nxt, encoder, long_audio, allow_silent, max_seconds))


def audio_skip_reason(error: AudioError) -> str:
    """The skip reason of audio that cannot be decoded: ``audio_missing``, ``empty_audio`` (0 bytes or 0 samples),
    ``silent_audio`` (digital silence, which the encode job refuses), ``audio_too_long`` (over the encode job's
    ``--max_seconds``) or ``audio_unreadable`` (anything else)."""
    return _reason_of(type(error))


def recorded_skip_reason(name: str) -> str:
    """``audio_skip_reason`` of the error a layer store's skip record names by its class (``LayerStore.skipped``);
    ``not_encoded`` for states the store refused (``NonFiniteStatesError``, a frame count off its header)."""
    pending = [AudioError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return _reason_of(cls)
        pending.extend(cls.__subclasses__())
    return "not_encoded"


def _reason_of(cls: type) -> str:
    if issubclass(cls, AudioNotFoundError):
        return "audio_missing"
    if issubclass(cls, EmptyAudioError):
        return "empty_audio"
    if issubclass(cls, SilentAudioError):
        return "silent_audio"
    if issubclass(cls, LongAudioError):
        return "audio_too_long"
    return "audio_unreadable"
