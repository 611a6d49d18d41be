"""The Whisper-style front end (Whisper, and the speech LLMs' Whisper-shaped encoders): 30 s windows, log-mel
features (the mel filter bank, a jitted batched JAX spectrogram, and its NumPy reference), and the encoder frames that
see real audio.

Glossary of Whisper's units (samples and windows: ``engine.data.audio``):

- mel frame: one STFT column, ``HOP_LENGTH`` samples apart (100 per second, ``N_FRAMES`` per window).
- encoder frame: one encoder position, two mel frames (50 per second, ``N_ENCODER_FRAMES`` per window).

The recipe is OpenAI Whisper's ``log_mel_spectrogram`` (and Hugging Face's ``WhisperFeatureExtractor``): periodic
Hann window of ``N_FFT`` samples, centred STFT with reflect padding, the last frame dropped, power spectrum, Slaney
mel projection, ``log10`` floored at ``LOG_FLOOR``, clamped to ``DYNAMIC_RANGE`` below each window's peak, scaled
to about [-1, 1]. On the 51 windows of the real FLEURS sample the JAX version is within 3.2e-5 (80 bins) of Hugging
Face's float32 torch extractor, which is itself 2.8e-5 from a float64 computation.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from engine.data.audio import CHUNK_LENGTH, LONG_AUDIO_MODES, N_SAMPLES, SAMPLE_RATE, EmptyAudioError
from engine.errors import ShapeError

logger = logging.getLogger(__name__)

N_FFT = 400  # samples per STFT frame (25 ms)
HOP_LENGTH = 160  # samples between STFT frames (10 ms)
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
ENCODER_FRAMES_PER_SECOND = 50  # conv2 halves the mel rate: 20 ms per encoder frame
SAMPLES_PER_ENCODER_FRAME = SAMPLE_RATE // ENCODER_FRAMES_PER_SECOND  # 320 samples
N_ENCODER_FRAMES = N_SAMPLES // SAMPLES_PER_ENCODER_FRAME  # 1500 encoder frames per window
FRAME_RATE = float(ENCODER_FRAMES_PER_SECOND)  # encoder frames per second of audio (20 ms each)
# The front end every babelgrid version so far computes: what turns audio into Whisper's input, recorded in a layer
# store so that a store made with another front end is never resumed with this one.
FEATURES = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "window_samples": N_SAMPLES,
    "padding": "audio to 30 s, then log-mel (OpenAI / Hugging Face)",
}
N_FREQS = N_FFT // 2 + 1  # 201 one-sided DFT bins, 0 Hz to SAMPLE_RATE / 2 in 40 Hz steps
LOG_FLOOR = 1e-10  # mel power below this is floored before log10 (OpenAI's clamp)
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below each window's peak; quieter values are raised to it

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_LINEAR_HZ_PER_MEL = 200.0 / 3.0  # Hz per mel below the break
_MEL_BREAK_HZ = 1000.0  # Hz where the scale turns logarithmic
_MEL_BREAK_MEL = _MEL_BREAK_HZ / _MEL_LINEAR_HZ_PER_MEL  # 15 mel
_MEL_LOG_STEP = math.log(6.4) / 27.0  # natural-log Hz per mel above the break


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    linear = hz / _MEL_LINEAR_HZ_PER_MEL
    logarithmic = _MEL_BREAK_MEL + np.log(np.maximum(hz, _MEL_BREAK_HZ) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * _MEL_LINEAR_HZ_PER_MEL
    logarithmic = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (np.maximum(mel, _MEL_BREAK_MEL) - _MEL_BREAK_MEL))
    return np.where(mel >= _MEL_BREAK_MEL, logarithmic, linear)


def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters from 0 Hz to SAMPLE_RATE / 2 (what OpenAI's ``mel_filters.npz`` holds).

    Equal to ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)``; Hugging Face stores the transpose.

    Returns:
      filters: f32[n_mels, N_FREQS], read-only (cached; copy it to modify).
    """
    if isinstance(n_mels, bool) or not isinstance(n_mels, numbers.Integral) or n_mels <= 0:
        raise ValueError(f"n_mels must be a positive int (Whisper uses 80, or 128 from large-v3 on), got {n_mels!r}")
    return _mel_filters(int(n_mels))


@functools.cache
def _mel_filters(n_mels: int) -> np.ndarray:
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FREQS)
    # n_mels + 2 edges: filter i rises from edge i to a peak at edge i + 1 and falls to zero at edge i + 2.
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(0.0)), _hz_to_mel(np.float64(SAMPLE_RATE / 2)), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every filter has the same area, so each band carries about the same energy.
    filters = (triangles * (2.0 / (upper - lower))).astype(np.float32)
    filters.flags.writeable = False
    return filters


def _hann_window() -> np.ndarray:
    """f64[N_FFT], periodic (torch.hann_window's default, as Whisper uses), not the symmetric textbook window."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


def _log_mel_one(window: jax.Array, filters: jax.Array) -> jax.Array:
    """window: f32[N_SAMPLES], filters: f32[n_mels, N_FREQS] -> f32[n_mels, N_FRAMES]."""
    padded = jnp.pad(window, N_FFT // 2, mode="reflect")  # f32[N_SAMPLES + N_FFT]
    # Frames overlap, so they are not a reshape of the signal; but with blocks of gcd(HOP_LENGTH, N_FFT) = 80 samples,
    # frame t is blocks 2t .. 2t+4, so five strided slices of the blocks give all frames. This is twice as fast on
    # CPU as a gather of frame indices. Only N_FRAMES frames are built, which drops the STFT's last frame.
    block = math.gcd(HOP_LENGTH, N_FFT)
    stride, per_frame = HOP_LENGTH // block, N_FFT // block
    blocks = padded.reshape(-1, block)
    frames = jnp.concatenate(
        [blocks[j : j + stride * N_FRAMES : stride] for j in range(per_frame)], axis=1
    )  # f32[N_FRAMES, N_FFT]
    # An FFT rather than a matmul with a cos/sin basis: on the FLEURS windows its float32 rounding error in the
    # quiet high bins of loud frames (the worst case in log space) is half the matmul's (3.1e-5 vs 5.6e-5 against
    # Hugging Face) and it is twice as fast on CPU.
    spectrum = jnp.fft.rfft(frames * _hann_window().astype(np.float32), axis=-1)  # c64[N_FRAMES, N_FREQS]
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    mel = jnp.matmul(filters, power.T, precision=jax.lax.Precision.HIGHEST)  # f32[n_mels, N_FRAMES]
    log_mel = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
    log_mel = jnp.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
    return (log_mel + 4.0) / 4.0


@functools.cache
def _jitted_log_mel(n_mels: int):
    filters = _mel_filters(n_mels)
    return jax.jit(jax.vmap(lambda window: _log_mel_one(window, filters)))


def log_mel_spectrogram(windows, n_mels: int) -> jax.Array:
    """Whisper's input features of a batch of 30 s windows (jitted; one compilation per n_mels and batch size).

    Args:
      windows: f32[batch, N_SAMPLES], e.g. from ``split_windows`` (NumPy or JAX).
      n_mels: 80, or 128 for large-v3 and turbo.

    Returns:
      features: f32[batch, n_mels, N_FRAMES], equal to ``WhisperFeatureExtractor(feature_size=n_mels)`` of each
      window to float32 rounding (max abs 3.2e-5 on real speech).
    """
    shape = tuple(np.shape(windows))
    if len(shape) != 2 or shape[1] != N_SAMPLES:
        raise ShapeError(
            f"windows must be f32[batch, {N_SAMPLES}] (30 s at {SAMPLE_RATE} Hz), got shape {shape}; "
            "cut audio with engine.models.whisper.features.split_windows"
        )
    filters = mel_filters(n_mels)  # validates n_mels
    return _jitted_log_mel(filters.shape[0])(jnp.asarray(windows, jnp.float32))


def features_for_audio(audio: np.ndarray, n_mels: int, long_audio: str = "window") -> tuple[np.ndarray, np.ndarray]:
    """Host convenience: features and valid encoder frames of one utterance.

    Args:
      audio: f32[samples] at SAMPLE_RATE, e.g. from ``load_audio``.
      n_mels: 80 or 128.
      long_audio: "window" (all of it, in consecutive 30 s windows) or "truncate" (the first 30 s).

    Returns:
      features: f32[n_windows, n_mels, N_FRAMES] (NumPy).
      valid_frames: i32[n_windows], encoder frames of each window that see real audio (see ``encoder_frames``).
    """
    windows, valid_samples = split_windows(audio, long_audio)
    features = np.asarray(log_mel_spectrogram(windows, n_mels))
    return features, encoder_frames(valid_samples)


def reference_log_mel_spectrogram(window: np.ndarray, n_mels: int) -> np.ndarray:
    """Slow, obvious float64 twin of ``log_mel_spectrogram`` for one window: f32[N_SAMPLES] -> f64[n_mels, N_FRAMES].

    A direct DFT (no FFT), one frame per row, to check the JAX version against.
    """
    window = np.asarray(window, np.float64)
    if window.shape != (N_SAMPLES,):
        raise ShapeError(f"window must be f32[{N_SAMPLES}], got shape {window.shape}")
    padded = np.pad(window, N_FFT // 2, mode="reflect")
    frames = np.stack([padded[t * HOP_LENGTH : t * HOP_LENGTH + N_FFT] for t in range(N_FRAMES)])
    n, k = np.arange(N_FFT), np.arange(N_FREQS)
    # (n * k) mod N_FFT keeps the angles small, so cos and sin are exact to float64 rounding.
    angle = 2.0 * np.pi * (np.outer(n, k) % N_FFT) / N_FFT
    windowed = frames * _hann_window()
    power = (windowed @ np.cos(angle)) ** 2 + (windowed @ np.sin(angle)) ** 2
    mel = mel_filters(n_mels).astype(np.float64) @ power.T
    log_mel = np.log10(np.maximum(mel, LOG_FLOOR))
    log_mel = np.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
    return (log_mel + 4.0) / 4.0


def split_windows(audio: np.ndarray, long_audio: str = "window") -> tuple[np.ndarray, np.ndarray]:
    """Cuts audio into zero-padded 30 s encoder windows.

    Args:
      audio: f32[samples] at ``SAMPLE_RATE``, at least one sample.
      long_audio: "window" keeps everything as consecutive windows (the last one partly padded); "truncate" keeps
        the first ``CHUNK_LENGTH`` seconds only.

    Returns:
      windows: f32[n_windows, N_SAMPLES]; ``windows.reshape(-1)[:samples]`` is the (kept) audio, the rest zeros.
      valid_samples: i32[n_windows], real samples in each window (``N_SAMPLES`` for all but the last).
    """
    if long_audio not in LONG_AUDIO_MODES:
        raise ValueError(f"long_audio={long_audio!r} is not one of {', '.join(map(repr, LONG_AUDIO_MODES))}")
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ShapeError(f"audio must be f32[samples] (mono), got shape {audio.shape}; load it with load_audio")
    if audio.size == 0:
        raise EmptyAudioError("audio has 0 samples; there is nothing to cut into windows")
    if long_audio == "truncate" and audio.size > N_SAMPLES:
        logger.info(
            "long_audio='truncate': keeping the first %d s of %.2f s of audio", CHUNK_LENGTH, audio.size / SAMPLE_RATE
        )
        audio = audio[:N_SAMPLES]
    n_windows = -(-audio.size // N_SAMPLES)
    windows = np.zeros((n_windows, N_SAMPLES), np.float32)
    windows.reshape(-1)[: audio.size] = audio
    valid_samples = np.minimum(N_SAMPLES, audio.size - N_SAMPLES * np.arange(n_windows)).astype(np.int32)
    return windows, valid_samples


def encoder_frames(valid_samples):
    """Number of encoder frames that see real audio in a window holding ``valid_samples`` real samples.

    Convention (the same as Hugging Face's ``attention_mask[:, ::HOP_LENGTH]``): mel frame i is centred on sample
    ``i * HOP_LENGTH``, so a window with s real samples has ``ceil(s / HOP_LENGTH)`` valid mel frames (at most
    ``N_FRAMES``). conv2 (kernel 3, stride 2, padding 1) maps m mel frames to ``ceil(m / 2)`` encoder frames (at most
    ``N_ENCODER_FRAMES``); a full window gives 1500. The valid frames of a long utterance are the concatenation of
    each of its windows' valid frames.

    Args:
      valid_samples: int, or i32[...] (e.g. ``split_windows``' second result); non-negative.

    Returns:
      int for an int, i32[...] for an array.
    """
    samples = np.asarray(valid_samples)
    if not np.issubdtype(samples.dtype, np.integer):
        raise TypeError(f"valid_samples must be integer sample counts, got dtype {samples.dtype}")
    if np.any(samples < 0):
        raise ValueError(f"valid_samples must be >= 0, got minimum {samples.min()}")
    mel_frames = np.minimum(-(-samples // HOP_LENGTH), N_FRAMES)
    frames = np.minimum(-(-mel_frames // 2), N_ENCODER_FRAMES).astype(np.int32)
    return int(frames) if frames.ndim == 0 else frames


def collate_windows(inputs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel windows ``[(mel f32[n_mels, frames], valid), ...]`` -> ``(mel f32[batch_size, n_mels, frames],
    valid i32[batch_size])``, the rows past ``inputs`` silence (the first window's minimum) with 0 valid: the batch
    every tower that takes Whisper's log-mel (``engine.models.speechllm``) encodes."""
    first = inputs[0][0]
    mel = np.full((batch_size, *first.shape), first.min(), np.float32)
    valid = np.zeros(batch_size, np.int32)
    for i, (m, v) in enumerate(inputs):
        mel[i], valid[i] = m, v
    return mel, valid
