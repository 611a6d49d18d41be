"""Voxtral Realtime's feature extractor (``VoxtralRealtimeFeatureExtractor``) in NumPy, so that a window's log-mel
equals transformers' (checked in tests/models/speechllm/test_voxtral_realtime.py).

Whisper's recipe (``engine.models.common.logmel``: periodic Hann window of 400 samples, centred STFT with reflect
padding every 160 samples, the last frame dropped, power, 128 Slaney mel filters, ``log10`` floored at 1e-10,
``(x + 4) / 4``) with two differences: the floor is ``global_log_mel_max - 8`` (1.5 - 8) for every clip, not 8 below
the clip's own peak, so a frame's features depend on its own 25 ms only; and the audio is not padded to 30 s, so a
clip of ``s`` samples has ``s // 160`` mel frames. The extractor pads a batch's audio to its longest; babelgrid
computes each window alone, which is what transformers computes for that clip in a batch of one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.errors import AudioError
from engine.models.common.logmel import HOP_LENGTH, LOG_FLOOR, N_FFT, mel_filters

SAMPLE_RATE = 16000
LOG_MEL_MAX = 1.5  # the extractor's global_log_mel_max
DYNAMIC_RANGE = 8.0  # log10 units kept below it


@dataclasses.dataclass(frozen=True)
class RealtimeFeatures:
    """The extractor's settings (``preprocessor_config.json``'s, or transformers' defaults)."""

    n_mels: int = 128
    log_mel_max: float = LOG_MEL_MAX

    def mel_frames(self, samples):
        """Mel frames of windows of ``samples`` samples: ``s // 160`` (the centred STFT's ``1 + s // 160``, its last
        dropped)."""
        return np.asarray(samples, np.int64) // HOP_LENGTH

    def to_dict(self) -> dict:
        return {"n_mels": self.n_mels, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "log_mel_max": self.log_mel_max,
                "padding": "none: each window alone, reflect-padded by the centred STFT"}  # fmt: skip


def from_preprocessor(raw: dict | None) -> RealtimeFeatures:
    """The settings of ``preprocessor_config.json`` (``raw``; None: transformers' defaults)."""
    raw = raw or {}
    for name, want in (("sampling_rate", SAMPLE_RATE), ("hop_length", HOP_LENGTH), ("n_fft", N_FFT),
                       ("win_length", N_FFT)):  # fmt: skip
        if int(raw.get(name, want)) != want:
            raise AudioError(
                f"preprocessor_config.json's {name} is {raw[name]}; babelgrid's Voxtral Realtime needs {want}"
            )
    peak = raw.get("global_log_mel_max", LOG_MEL_MAX)
    if peak is None:
        raise AudioError("preprocessor_config.json has no global_log_mel_max: a clip's own peak is not read here")
    return RealtimeFeatures(n_mels=int(raw.get("feature_size", 128)), log_mel_max=float(peak))


def log_mel(samples: np.ndarray, f: RealtimeFeatures) -> np.ndarray:
    """One window ``f32[samples]`` -> ``log-mel f32[n_mels, samples // 160]``, as the extractor computes it alone."""
    s = len(samples)
    frames = int(f.mel_frames(s))
    if s <= N_FFT // 2 or frames == 0:
        raise AudioError(f"{s} samples are too few for Voxtral Realtime's log-mel (more than {N_FFT // 2} needed)")
    padded = np.pad(np.asarray(samples, np.float32).astype(np.float64), N_FFT // 2, mode="reflect")
    framed = np.lib.stride_tricks.as_strided(
        padded, (frames, N_FFT), (padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )  # the STFT's frames but its last
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    spectrum = np.fft.rfft(framed * window, axis=-1)
    power = np.square(np.abs(spectrum))  # f64[frames, 201]
    mel = mel_filters(f.n_mels) @ power.T  # f64[n_mels, frames]
    log = np.log10(np.maximum(mel, LOG_FLOOR))
    log = np.maximum(log, f.log_mel_max - DYNAMIC_RANGE)
    return ((log + 4.0) / 4.0).astype(np.float32)
