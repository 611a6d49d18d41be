"""The input features of the FastConformer models (Parakeet, Canary): transformers' ``ParakeetFeatureExtractor`` in
NumPy, for one window at a time.

Recipe (NeMo's ``AudioToMelSpectrogramPreprocessor`` as transformers reproduces it), per window at 16 kHz:

1. pre-emphasis 0.97 (``x[0]`` kept, ``x[t] - 0.97 x[t-1]`` after), in float32;
2. ``torch.stft`` centred: ``N_FFT // 2`` zeros each side, frames of ``N_FFT`` samples every ``HOP_LENGTH``, a
   symmetric Hann window of ``WIN_LENGTH`` samples zero-padded to ``N_FFT`` in the middle: ``1 + samples // 160``
   frames; the power spectrum ``|X|^2`` (float32);
3. ``n_mels`` Slaney mel filters (Slaney scale and area normalisation, 0 Hz to 8 kHz, float32), natural log of the mel
   energy plus ``LOG_GUARD`` (2^-24);
4. the valid frames, ``(samples - N_FFT // 2 * 2 + N_FFT) // HOP_LENGTH`` = ``(samples - 256) // 160`` (the last
   frames of the centred STFT read mostly padding and are dropped), normalised per mel bin to zero mean and unit
   standard deviation over the window (unbiased, ``std + NORM_EPS``); frames past them are zero.

Libraries: the FFT is NumPy's (float64 on the float32 frames, rounded to complex64 as ``torch.stft`` returns it), the
mel filters transformers' formula written out (``slaney_mel_filters``; a test checks it against
``audio_utils.mel_filter_bank``). torch's float32 FFT and this one differ in the last bits; how far that moves the
features and the layers is measured in ``tests/models/fastconformer/test_fastconformer.py``.
"""

from __future__ import annotations

import functools

import numpy as np

from engine.data.audio import check_waveform

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms
WIN_LENGTH = 400  # 25 ms
N_FFT = 512
N_FREQS = N_FFT // 2 + 1
PREEMPHASIS = 0.97
LOG_GUARD = 2.0**-24  # added to the mel energies before the log (transformers' LOG_ZERO_GUARD_VALUE)
NORM_EPS = 1e-5  # added to each bin's standard deviation (transformers' EPSILON)
# At least two valid feature frames (an unbiased variance) at 16 kHz: (samples - 256) // 160 >= 2.
MIN_SAMPLES = N_FFT // 2 + 2 * HOP_LENGTH
# transformers' ParakeetFeatureExtractor defaults; a preprocessor_config.json that changes one is refused.
EXTRACTOR = {"sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "win_length": WIN_LENGTH, "n_fft": N_FFT,
             "preemphasis": PREEMPHASIS}  # fmt: skip


def _hz_to_mel(hz):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mel = 3.0 * hz / 200.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) * logstep, mel)


def _mel_to_hz(mel):
    mel = np.asarray(mel, np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    hz = 200.0 * mel / 3.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), hz)


@functools.cache
def slaney_mel_filters(n_mels: int) -> np.ndarray:
    """``f32[n_mels, N_FREQS]``: triangles between ``n_mels + 2`` points equally spaced on Slaney's mel scale from 0 Hz
    to 8 kHz, in Hz, each scaled to unit area (``2 / (right - left)``), as transformers' ``mel_filter_bank(...,
    norm="slaney", mel_scale="slaney")`` builds them. Read-only."""
    fft_hz = np.linspace(0, SAMPLE_RATE // 2, N_FREQS)
    points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    diff = np.diff(points)
    slopes = points[None, :] - fft_hz[:, None]  # [freq, n_mels + 2]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    # Cast to float32 before the area normalisation, which is then rounded to float32 (transformers' order).
    filters = np.maximum(0.0, np.minimum(down, up)).astype(np.float32)
    filters = (filters * (2.0 / (points[2:] - points[:-2]))).astype(np.float32)
    out = np.ascontiguousarray(filters.T)
    out.flags.writeable = False
    return out


@functools.cache
def _window() -> np.ndarray:
    """The symmetric Hann window of ``WIN_LENGTH`` in the middle of ``N_FFT`` zeros, as ``torch.stft`` pads it."""
    w = np.zeros(N_FFT, np.float32)
    left = (N_FFT - WIN_LENGTH) // 2
    # 0.5 - 0.5 cos(2 pi n / (N - 1)) in float32, as torch.hann_window(periodic=False) evaluates it: 90% of its
    # values equal torch's, the rest within one float32 step (its vectorised cos rounds apart).
    n = np.arange(WIN_LENGTH, dtype=np.float32)
    w[left : left + WIN_LENGTH] = np.float32(0.5) - np.float32(0.5) * np.cos(
        np.float32(2 * np.pi / (WIN_LENGTH - 1)) * n
    )
    w.flags.writeable = False
    return w


def valid_frames(samples) -> np.ndarray:
    """Valid feature frames of windows of ``samples`` samples (the extractor's attention mask): ``(s - 256) // 160``."""
    samples = np.asarray(samples, np.int64)
    return np.maximum((samples + N_FFT // 2 * 2 - N_FFT) // HOP_LENGTH, 0)


def log_mel(waveform: np.ndarray, n_mels: int) -> tuple[np.ndarray, int]:
    """One window's normalised log-mel: ``(f32[1 + samples // 160, n_mels], valid frames)``; frames past the valid
    ones are zero (the extractor's mask)."""
    x = check_waveform(waveform, "a window", MIN_SAMPLES, "FastConformer features", "two valid frames")
    x = x.astype(np.float32)
    x = np.concatenate([x[:1], x[1:] - np.float32(PREEMPHASIS) * x[:-1]]).astype(np.float32)
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2))
    n_frames = 1 + len(x) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    spectrum = np.fft.rfft((frames * _window()).astype(np.float64), axis=-1).astype(np.complex64)
    power = np.square(np.sqrt(np.square(spectrum.real) + np.square(spectrum.imag)))  # as transformers: float32
    mel = np.log(power @ slaney_mel_filters(n_mels).T + np.float32(LOG_GUARD))  # f32[frame, n_mels]
    n = int(valid_frames(len(x)))
    kept = mel[:n]
    mean = kept.sum(0) / np.float32(n)
    std = np.sqrt(np.square(kept - mean).sum(0) / np.float32(n - 1))
    out = np.zeros_like(mel)
    out[:n] = (kept - mean) / (std + np.float32(NORM_EPS))
    return out, n
