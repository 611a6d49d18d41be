"""Audio in: decode, downmix, resample and check, for every model family.

Constants keep OpenAI Whisper's names (``whisper/audio.py``) so that code ported from there reads the same; what is
Whisper's own (its STFT, mel and encoder frames, the zero-padded 30 s windows) is in ``engine.models.whisper.features``.

Glossary of the units used below:

- sample: one mono PCM value at ``SAMPLE_RATE`` (16 kHz).
- window: ``N_SAMPLES`` samples (30 s), the longest stretch any family's encoder takes at once.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import pathlib
import struct
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from engine.errors import AudioError, ShapeError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the rate every Whisper model was trained on
CHUNK_LENGTH = 30  # seconds per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples per window

# Peak level below which audio counts as digital silence. -90 dBFS is just under one 16-bit LSB
# (-90.3 dBFS), so a file holding nothing but 1-LSB dither is silent too.
SILENCE_PEAK_DBFS = -90.0  # dB relative to full scale (|sample| = 1.0)
SILENCE_PEAK = 10.0 ** (SILENCE_PEAK_DBFS / 20.0)  # linear amplitude, about 3.2e-5

# Peak level above which float audio is refused: +40 dBFS (100x full scale). Float files may overshoot 1.0 a little
# (mastering headroom), but a peak this far out is a scaling mistake (int16 values stored as float peak near 32768),
# and the log-mel of huge samples overflows float32 (a 1e20 peak gives inf power, then NaN states).
MAX_PEAK_DBFS = 40.0
MAX_PEAK = 10.0 ** (MAX_PEAK_DBFS / 20.0)  # linear amplitude, 100

# Sample rates below this are refused: no speech recording has them (8 kHz telephony is the lowest in use), and a
# header that declares one is wrong (samples written with the wrong rate): resampled, 1 s of 100 Hz audio would
# become 160 s of "speech".
MIN_SAMPLE_RATE = 4000  # Hz

LONG_AUDIO_MODES = ("window", "truncate")

# A path, the encoded bytes themselves (Hugging Face datasets hand audio over as bytes), or an open binary file.
AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The audio path does not exist or is not a file."""


class AudioDecodeError(AudioError):
    """The bytes are not audio libsndfile can decode, or the stream is truncated."""


class AudioReadError(AudioError):
    """The audio file exists but cannot be read (no permission, an I/O error)."""


class AudioRateError(AudioError):
    """The audio's header declares a sample rate no speech recording has (below ``MIN_SAMPLE_RATE``)."""


class EmptyAudioError(AudioError):
    """The audio holds no samples (0-byte file, or a valid header with 0 frames)."""


class SilentAudioError(AudioError):
    """The audio is digital silence: its peak is below ``SILENCE_PEAK_DBFS``."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or infinite samples."""


class LongAudioError(AudioError):
    """The audio is longer than a job's cap on one utterance (the encode job's ``--max_seconds``)."""


class AudioRangeError(AudioError):
    """Float audio whose peak is far outside [-1, 1] (above ``MAX_PEAK_DBFS``): wrongly scaled samples."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What an audio file holds, as stored (before downmixing and resampling)."""

    source: str  # the path, or "<bytes>" / "<file object>" for in-memory audio
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel, as the container announces them
    format: str  # libsndfile's container name: "WAV", "FLAC", "OGG", ...
    subtype: str  # libsndfile's codec name: "PCM_16", "FLOAT", "VORBIS", "OPUS", ...

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def probe_audio(source: AudioSource) -> AudioInfo:
    """Reads the header of ``source`` (path, bytes or binary file) without decoding the samples: a path is opened,
    never read whole (``encode --plan`` read a 3 GB junk ``.wav`` into memory to learn it was not audio)."""
    if isinstance(source, (str, os.PathLike)):
        name = _checked_path(source)
        if os.path.getsize(name) == 0:
            raise EmptyAudioError(f"audio {name!r} is empty (0 bytes); the download or copy failed, fetch it again")
        opened = name
    else:
        name, data = _read_source(source)
        opened = io.BytesIO(data)
    try:
        info = soundfile.info(opened)
    except soundfile.SoundFileError as e:
        raise _decode_error(name, e) from None
    return AudioInfo(
        source=name,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def load_audio(source: AudioSource, *, sample_rate: int = SAMPLE_RATE, allow_silent: bool = False) -> np.ndarray:
    """Decodes ``source`` to mono float samples at ``sample_rate``.

    Args:
      source: a path, the encoded bytes, or a binary file object; WAV, FLAC, Ogg Vorbis, Opus and MP3 (anything
        the installed libsndfile decodes).
      sample_rate: output rate in Hz; other rates are resampled with soxr's "HQ" filter.
      allow_silent: return digital silence instead of raising ``SilentAudioError``.

    Returns:
      audio: f32[samples], channels averaged, full scale = 1.0.

    Raises:
      AudioNotFoundError, AudioReadError, AudioDecodeError (truncated WAV and Ogg included), AudioRateError,
      EmptyAudioError, SilentAudioError, NonFiniteAudioError, AudioRangeError (all AudioError).
    """
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int in Hz, got {sample_rate!r}")
    name, data = _read_source(source)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            source_rate = int(f.samplerate)
            # always_2d: a mono file reads as [frames, 1], so downmixing below needs no special case.
            samples = f.read(dtype="float32", always_2d=True)
    except soundfile.SoundFileError as e:
        raise _decode_error(name, e) from None
    if data[:4] == b"OggS":
        # libsndfile decodes a truncated Ogg stream up to the cut without complaint; a shorter clip than the
        # dataset claims would go unnoticed, so check the page structure ourselves.
        _check_ogg_complete(name, data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        _check_wav_complete(name, data)  # the same for WAV: libsndfile reads what is there
    _check_rate(name, source_rate)
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"audio {name!r} has a valid header but 0 samples; drop it from the dataset")

    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1)))
        raise NonFiniteAudioError(
            f"audio {name!r} has {int(bad.sum())} non-finite samples (NaN or inf), the first at sample {first} "
            f"({first / source_rate:.3f} s); the file was written from a failed computation, regenerate or drop it"
        )

    audio = samples.mean(axis=1, dtype=np.float32)
    peak = float(np.max(np.abs(audio)))
    if peak > MAX_PEAK:
        hint = "int16 samples stored as float? divide by 32768" if 1e3 < peak <= 32768 * 1.01 else "rescale them"
        raise AudioRangeError(
            f"audio {name!r} peaks at {peak:.4g} ({20.0 * math.log10(peak):+.0f} dBFS), far outside the float range "
            f"[-1, 1] (refused above {MAX_PEAK_DBFS:+.0f} dBFS): the samples are wrongly scaled; {hint} so that full "
            "scale is 1.0, or drop the clip"
        )
    if peak < SILENCE_PEAK and not allow_silent:
        peak_dbfs = 20.0 * math.log10(peak) if peak > 0 else -math.inf
        loudest = float(np.max(np.abs(samples)))
        if loudest >= SILENCE_PEAK:  # the channels are not silent: they cancel in the mono mix
            raise SilentAudioError(
                f"audio {name!r} is silent once its {samples.shape[1]} channels are averaged to mono (peak "
                f"{peak_dbfs:.1f} dBFS), though they peak at {20.0 * math.log10(loudest):.1f} dBFS: they are in "
                "opposite phase; keep one channel (e.g. `ffmpeg -i IN -af pan=mono|c0=c0 OUT.flac`)"
            )
        raise SilentAudioError(
            f"audio {name!r} is digital silence (peak {peak_dbfs:.1f} dBFS, below {SILENCE_PEAK_DBFS} dBFS); "
            "its encoder states carry no speech: drop the clip, or keep it with allow_silent=True (the encode job's "
            "--allow_silent)"
        )
    if source_rate != sample_rate:
        audio = soxr.resample(audio, source_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read_source(source: AudioSource) -> tuple[str, bytes]:
    """Returns (a name for error messages, the encoded bytes) of a path, bytes or binary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        name = _checked_path(source)
        try:
            data = pathlib.Path(name).read_bytes()
        except OSError as e:
            raise AudioReadError(f"audio file {name!r} cannot be read: {e.strerror or e}") from None
    elif hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"audio file object {name!r} returned {type(data).__name__}; open it in binary mode 'rb'")
        data = bytes(data)
    else:
        raise TypeError(f"audio source must be a path, bytes or a binary file object, got {type(source).__name__}")
    if not data:
        raise EmptyAudioError(f"audio {name!r} is empty (0 bytes); the download or copy failed, fetch it again")
    return name, data


def _checked_path(source: str | os.PathLike) -> str:
    """The path ``source`` as a string, an AudioNotFoundError unless it is a file."""
    path = pathlib.Path(source)
    name = str(path)
    if not path.exists():
        raise AudioNotFoundError(f"audio file {name!r} does not exist; check the path (cwd is {os.getcwd()!r})")
    if not path.is_file():
        raise AudioNotFoundError(f"audio path {name!r} is not a file; pass one audio file per call")
    try:
        with open(name, "rb"):
            pass
    except OSError as e:
        raise AudioReadError(f"audio file {name!r} cannot be read: {e.strerror or e}; check its permissions") from None
    return name


def _decode_error(name: str, error: soundfile.SoundFileError) -> AudioDecodeError:
    # soundfile's own message names an anonymous BytesIO; keep only libsndfile's reason.
    reason = getattr(error, "error_string", None) or str(error)
    formats = "WAV, FLAC, Ogg Vorbis, Opus" + (" and MP3" if "MP3" in soundfile.available_formats() else "")
    return AudioDecodeError(
        f"cannot decode audio {name!r}: {reason.strip()} (libsndfile {soundfile.__libsndfile_version__} reads "
        f"{formats}); the file is corrupt or in another format: re-encode it, "
        "e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.flac`"
    )


def _check_rate(name: str, rate: int) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise AudioRateError(
            f"audio {name!r} declares a sample rate of {rate} Hz, below {MIN_SAMPLE_RATE} Hz, which no speech "
            "recording has: its header is wrong (the samples were written with another rate); rewrite it with the "
            "rate it was recorded at"
        )


_RIFF_CHUNK = struct.Struct("<4sI")  # chunk id, size in bytes
# A writer that streams (espeak-ng and sox to a pipe) cannot seek back to write the sizes: it leaves a placeholder
# near 2 GiB (espeak-ng: 0x7FFFF000), or 0 or 0xFFFFFFFF, and readers take the data to the end of the file.
_STREAMED_SIZE = 0x7FFF0000


def _check_wav_complete(name: str, data: bytes) -> None:
    """Raises AudioDecodeError if the WAV's ``data`` chunk, and the RIFF header with it, announce more bytes than the
    file holds (a copy cut short). A streamed file's placeholder sizes (``_STREAMED_SIZE`` and up, or 0) are not
    checked: its writer never knew its length."""
    riff_size = _RIFF_CHUNK.unpack_from(data, 0)[1]
    offset = 12
    while offset + _RIFF_CHUNK.size <= len(data):
        chunk, size = _RIFF_CHUNK.unpack_from(data, offset)
        if chunk == b"data":
            held = len(data) - offset - _RIFF_CHUNK.size
            if 0 < size < _STREAMED_SIZE and held < size and 8 + riff_size > len(data):
                raise AudioDecodeError(
                    f"audio {name!r} is a truncated WAV file: its data chunk announces {size} bytes, the file holds "
                    f"{held} ({len(data)} bytes in all); the download or copy was cut short: fetch the file again"
                )
            return
        offset += _RIFF_CHUNK.size + size + (size & 1)  # chunks are padded to an even size


_OGG_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
_OGG_END_OF_STREAM = 0x04  # header flag of the last page of a logical stream


def _check_ogg_complete(name: str, data: bytes) -> None:
    """Raises AudioDecodeError unless ``data`` is whole Ogg pages ending each logical stream with an EOS page."""
    offset = 0
    last_flags: dict[int, int] = {}  # serial number -> header flags of its latest page
    while offset + _OGG_PAGE_HEADER.size <= len(data):
        capture, _, flags, _, serial, _, _, n_segments = _OGG_PAGE_HEADER.unpack_from(data, offset)
        if capture != b"OggS":
            raise AudioDecodeError(
                f"audio {name!r} is a corrupt Ogg stream: no page starts at byte {offset} of {len(data)}; "
                "fetch or re-encode the file"
            )
        table_start = offset + _OGG_PAGE_HEADER.size
        page_end = table_start + n_segments + sum(data[table_start : table_start + n_segments])
        if page_end > len(data):
            break
        last_flags[serial] = flags
        offset = page_end
    if offset != len(data) or not all(flags & _OGG_END_OF_STREAM for flags in last_flags.values()):
        raise AudioDecodeError(
            f"audio {name!r} is a truncated Ogg stream (it stops at byte {len(data)} without an end-of-stream "
            "page); the download or copy was cut short: fetch the file again"
        )


def check_waveform(waveform, name: str, min_samples: int, what: str, needed_for: str) -> np.ndarray:
    """``waveform`` checked for a family's features: ShapeError unless a 1-D float array (mono, 16 kHz), AudioError
    for fewer than ``min_samples`` samples (``what`` needs them ``needed_for``: "w2v-BERT features", "one 20 ms
    frame") or a NaN or infinite sample; ``name`` names the array in the messages."""
    x = np.asarray(waveform)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise ShapeError(f"{name} must be a float array f32[samples] (mono, 16 kHz), got {x.dtype}{list(x.shape)}")
    if len(x) < min_samples:
        raise AudioError(
            f"{name} has {len(x)} samples; {what} need at least {min_samples} "
            f"({min_samples / SAMPLE_RATE * 1000:.0f} ms at 16 kHz) for {needed_for}"
        )
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{name} holds NaN or infinite samples")
    return x
