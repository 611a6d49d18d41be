"""OWSM's input features: ESPnet's ``DefaultFrontend`` and ``GlobalMVN`` over 30 s windows, in NumPy.

ESPnet's S2T inference (``espnet2.bin.s2t_inference.Speech2Text.__call__``) pads every clip with zeros to
``speech_length`` seconds (30) or cuts it there, and passes the whole window as valid (``speech_lengths`` = 480000), so
the encoder sees the same 3001 feature frames for every clip and attends over the padding too. babelgrid does the
same; ``valid_frames`` only says how many encoder frames hold speech (the rest is the padded silence), for stores.

Per window (``FrontendConfig``): a centred STFT (reflect padding of ``n_fft // 2``; a periodic Hann window of
``win_length`` centred in ``n_fft``, as ``torch.stft`` pads it; hop ``hop_length``), the power spectrum, librosa's
mel filters (``librosa.filters.mel``, the call ``espnet2.layers.log_mel.LogMel`` makes, in NumPy),
``log(max(mel, 1e-10))``, then ``(x - mean) / std`` from ``feats_stats.npz`` (``count``, ``sum``, ``sum_square``;
``std = sqrt(max(var, 1e-20))``). Computed in float64 and returned as float32: within float32 rounding of ESPnet's
float32 frontend.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Sequence

import numpy as np

from engine.errors import AudioError, CheckpointError
from engine.models.owsm.config import SAMPLE_RATE, FrontendConfig, OwsmConfig, subsampled_frames

MEL_FLOOR = 1e-10  # LogMel clamps the mel power here before the log
MVN_EPS = 1e-20  # GlobalMVN's floor on the variance


@dataclasses.dataclass(frozen=True, eq=False)
class Stats:
    """Global mean and standard deviation per mel bin, from ``feats_stats.npz``."""

    mean: np.ndarray  # f64[n_mels]
    std: np.ndarray  # f64[n_mels]


def read_stats(path: pathlib.Path, n_mels: int) -> Stats:
    """``feats_stats.npz`` as ESPnet's collect-stats stage writes it (``count``, ``sum``, ``sum_square``)."""
    try:
        stats = np.load(path)
        count, total, squares = (np.asarray(stats[k], np.float64) for k in ("count", "sum", "sum_square"))
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"'{path}' is not ESPnet's feats_stats.npz with count, sum and sum_square ({e}); copy the model's own"
        ) from None
    if total.shape != (n_mels,) or squares.shape != (n_mels,):
        raise CheckpointError(
            f"'{path}' holds statistics of {total.shape} features; the frontend makes {n_mels} mel bins"
        )
    mean = total / count
    return Stats(mean=mean, std=np.sqrt(np.maximum(squares / count - mean * mean, MVN_EPS)))


@functools.lru_cache(maxsize=4)
def mel_filters(config: FrontendConfig) -> np.ndarray:
    """f64[n_fft // 2 + 1, n_mels]: ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk)`` (Slaney-normalised
    triangles on the Slaney or HTK mel scale), the call ESPnet's LogMel makes, written out in NumPy so that OWSM runs
    without librosa (``tests/models/owsm/test_owsm_mel.py`` checks it against librosa)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, config.n_fft // 2 + 1)
    low, high = _hz_to_mel(np.float64(config.fmin), config.htk), _hz_to_mel(np.float64(config.fmax), config.htk)
    edges = _mel_to_hz(np.linspace(low, high, config.n_mels + 2), config.htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney's norm: every filter of the same area
    return weights.T


def _hz_to_mel(hz, htk: bool):
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    step, break_hz = 200.0 / 3, 1000.0  # Slaney: linear below 1 kHz, logarithmic above
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= break_hz, break_hz / step + np.log(np.maximum(hz, break_hz) / break_hz) / log_step, hz / step)


def _mel_to_hz(mel, htk: bool):
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    step, break_hz = 200.0 / 3, 1000.0
    log_step = np.log(6.4) / 27.0
    break_mel = break_hz / step
    above = break_hz * np.exp(log_step * (np.maximum(mel, break_mel) - break_mel))
    return np.where(mel >= break_mel, above, mel * step)


@functools.lru_cache(maxsize=4)
def _window(config: FrontendConfig) -> np.ndarray:
    """f64[n_fft]: ``torch.hann_window(win_length)`` (periodic) zero-padded to ``n_fft`` on both sides, centred."""
    n = config.win_length
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    left = (config.n_fft - n) // 2
    return np.pad(hann, (left, config.n_fft - n - left))


def fit_window(waveform: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """f32[n_samples]: the clip zero-padded or cut to the window (30 s), as S2T inference does."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 1:
        raise AudioError(f"waveform must be mono f32[sample] at 16 kHz, got shape {waveform.shape}")
    n = config.n_samples
    return waveform[:n] if len(waveform) >= n else np.pad(waveform, (0, n - len(waveform)))


def log_mel(waveform: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """f32[n_samples] (one window) -> f64[frame, n_mels] log-mel power, before normalisation."""
    pad = config.n_fft // 2
    x = np.pad(np.asarray(waveform, np.float64), pad, mode="reflect")
    n_frames = 1 + (len(x) - config.n_fft) // config.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(x, config.n_fft)[:: config.hop_length][:n_frames]
    spectrum = np.fft.rfft(frames * _window(config), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(np.maximum(power @ mel_filters(config), MEL_FLOOR))


def features(waveform: np.ndarray, config: FrontendConfig, stats: Stats) -> np.ndarray:
    """One clip (16 kHz mono) -> f32[n_frames, n_mels]: its 30 s window's normalised log-mel features."""
    return ((log_mel(fit_window(waveform, config), config) - stats.mean) / stats.std).astype(np.float32)


def valid_frames(n_samples: int, config: OwsmConfig) -> int:
    """Encoder frames that hold a clip of ``n_samples`` (cut at the window); the rest of the window's are padding."""
    n = min(int(n_samples), config.frontend.n_samples)
    return max(0, subsampled_frames(1 + n // config.frontend.hop_length, config.n_convs))


def batch_features(waveforms: Sequence[np.ndarray], config: OwsmConfig, stats: Stats) -> tuple[np.ndarray, np.ndarray]:
    """Clips -> ``(features f32[batch, n_frames, n_mels], valid i32[batch])``, ``valid`` in encoder frames."""
    if not len(waveforms):
        raise AudioError("batch_features needs at least one waveform")
    feats = np.stack([features(w, config.frontend, stats) for w in waveforms])
    valid = np.array([valid_frames(len(w), config) for w in waveforms], np.int32)
    return feats, valid
