"""The USM feature extractors of Gemma 3n (``Gemma3nAudioFeatureExtractor``) and Gemma 4
(``Gemma4AudioFeatureExtractor``) in NumPy, the same arithmetic in the same dtypes, so that a window's log-mel equals
transformers' (checked in tests/models/speechllm/test_usm.py).

Both frame the waveform in ``frame_length + 1`` samples every 10 ms, apply (HTK-flavoured) pre-emphasis, a periodic
Hann window, an ``rfft`` of ``fft_length``, the magnitude through 128 triangular mel filters and a log. They differ in
their settings (3n: 32 ms frames, FFT 1024, 125..7600 Hz, pre-emphasis 0.97, ``log(max(m, 1e-5))``; 4: 20 ms, FFT
512, 0..8000 Hz, none, ``log(m + 1e-3)``) and at the edges: Gemma 4 prepends half a frame of zeros (semicausal) and
counts a frame valid only when its whole window is audio (zeroing the others), 3n counts every frame that starts in
the audio. The extractor pads a batch's audio to its longest (and to a multiple of 128 samples) and cuts it at 30 s;
babelgrid computes each 30 s window alone (padded to a multiple of 128 samples only), which is what transformers
computes for that clip in a batch of one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from engine.errors import AudioError
from engine.models.speechllm.usm_config import GEMMA3N, GEMMA4

SAMPLE_RATE = 16000
PAD_TO = 128  # the extractor's pad_to_multiple_of (samples)
MAX_SAMPLES = 480_000  # its max_length: 30 s
# transformers' defaults for each model's extractor (preprocessor_config.json overrides them)
DEFAULTS = {
    GEMMA3N: dict(feature_size=128, frame_length_ms=32.0, hop_length_ms=10.0, min_frequency=125.0,
                  max_frequency=7600.0, preemphasis=0.97, preemphasis_htk_flavor=True, fft_overdrive=True,
                  mel_floor=1e-5, input_scale_factor=1.0, dither=0.0, per_bin_mean=None, per_bin_stddev=None),
    GEMMA4: dict(feature_size=128, frame_length_ms=20.0, hop_length_ms=10.0, min_frequency=0.0, max_frequency=8000.0,
                 preemphasis=0.0, preemphasis_htk_flavor=True, fft_overdrive=False, mel_floor=1e-3,
                 input_scale_factor=1.0, dither=0.0, per_bin_mean=None, per_bin_stddev=None),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class UsmFeatures:
    """One model's extractor settings (``preprocessor_config.json``'s, or transformers' defaults)."""

    kind: str
    n_mels: int
    frame_length: int  # samples per analysis window
    hop: int  # samples between frames
    fft_length: int
    min_hz: float
    max_hz: float
    preemphasis: float
    htk_preemphasis: bool
    mel_floor: float
    input_scale: float
    per_bin_mean: tuple[float, ...] | None
    per_bin_stddev: tuple[float, ...] | None

    @property
    def pad_left(self) -> int:
        """Gemma 4's semicausal padding: half a frame of zeros before the audio."""
        return self.frame_length // 2 if self.kind == GEMMA4 else 0

    def mel_frames(self, samples):
        """``(frames, valid)`` of windows of ``samples`` samples, each padded to a multiple of 128 alone."""
        s = np.minimum(np.asarray(samples, np.int64), MAX_SAMPLES)
        padded = -(-s // PAD_TO) * PAD_TO + self.pad_left
        frames = np.maximum((padded - self.frame_length - 1) // self.hop + 1, 0)
        if self.kind == GEMMA4:  # the frame's last sample is audio
            valid = -(-(s - self.frame_length + self.pad_left) // self.hop)
        else:  # the frame's first sample is audio
            valid = -(-s // self.hop)
        return frames, np.clip(valid, 0, frames)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_preprocessor(kind: str, raw: dict | None) -> UsmFeatures:
    """The settings of ``preprocessor_config.json`` (``raw``; None: transformers' defaults for ``kind``)."""
    p = {**DEFAULTS[kind], **{k: v for k, v in (raw or {}).items() if k in DEFAULTS[kind]}}
    if p["dither"]:
        raise AudioError(f"preprocessor_config.json sets dither {p['dither']}: random noise; babelgrid needs 0")
    if int(p.get("sampling_rate", SAMPLE_RATE) if raw is None else raw.get("sampling_rate", SAMPLE_RATE)) != 16000:
        raise AudioError("preprocessor_config.json's sampling_rate is not 16000 Hz; babelgrid reads 16 kHz audio")
    frame = int(round(SAMPLE_RATE * p["frame_length_ms"] / 1000.0))
    fft = 2 ** math.ceil(math.log2(frame)) * (2 if p["fft_overdrive"] else 1)
    bins = lambda v: None if v is None else tuple(float(x) for x in v)
    return UsmFeatures(
        kind=kind, n_mels=int(p["feature_size"]), frame_length=frame,
        hop=int(round(SAMPLE_RATE * p["hop_length_ms"] / 1000.0)), fft_length=fft, min_hz=float(p["min_frequency"]),
        max_hz=float(p["max_frequency"]), preemphasis=float(p["preemphasis"]),
        htk_preemphasis=bool(p["preemphasis_htk_flavor"]), mel_floor=float(p["mel_floor"]),
        input_scale=float(p["input_scale_factor"]), per_bin_mean=bins(p["per_bin_mean"]),
        per_bin_stddev=bins(p["per_bin_stddev"]),
    )  # fmt: skip


def _hann(f: UsmFeatures) -> np.ndarray:
    if f.kind == GEMMA3N:  # computed in float32
        n = np.arange(f.frame_length, dtype=np.float32)
        return (0.5 * (1 - np.cos(2 * np.pi * n / f.frame_length))).astype(np.float32)
    return np.hanning(f.frame_length + 1)[:-1].astype(np.float32)  # audio_utils.window_function (periodic)


def mel_filters(f: UsmFeatures) -> np.ndarray:
    """``f64[fft_length // 2 + 1, n_mels]``: 3n's ``create_fb_matrix``, 4's ``audio_utils.mel_filter_bank`` (HTK)."""
    n_freqs = f.fft_length // 2 + 1
    if f.kind == GEMMA3N:
        freqs = np.arange(n_freqs, dtype=np.float32) * (SAMPLE_RATE / f.fft_length)
        m_min, m_max = (2595.0 * math.log10(1.0 + hz / 700.0) for hz in (f.min_hz, f.max_hz))
    else:
        freqs = np.linspace(0, SAMPLE_RATE // 2, n_freqs)
        m_min, m_max = (2595.0 * np.log10(1.0 + hz / 700.0) for hz in (f.min_hz, f.max_hz))
    points = 700.0 * (10 ** (np.linspace(m_min, m_max, f.n_mels + 2) / 2595.0) - 1.0)
    diff = points[1:] - points[:-1]
    slopes = points[None, :] - freqs[:, None]
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return np.maximum(np.zeros(1), np.minimum(down, up))


def log_mel(samples: np.ndarray, f: UsmFeatures) -> tuple[np.ndarray, int]:
    """One window ``f32[samples]`` (at most 30 s) -> ``(log-mel f32[frames, n_mels], valid frames)``, as the model's
    extractor computes it for this clip alone (Gemma 4: the invalid frames zeroed)."""
    s = len(samples)
    if s > MAX_SAMPLES:
        raise AudioError(f"a window holds at most {MAX_SAMPLES} samples (30 s), got {s}")
    frames, valid = (int(x) for x in f.mel_frames(s))
    if frames == 0:
        raise AudioError(f"{s} samples are too few for one frame of the {f.kind} feature extractor")
    wave = np.zeros(-(-s // PAD_TO) * PAD_TO + f.pad_left, np.float32)
    wave[f.pad_left : f.pad_left + s] = samples
    if f.input_scale != 1.0:
        wave = wave * f.input_scale
    size = f.frame_length + 1
    framed = np.lib.stride_tricks.as_strided(wave, (frames, size), (wave.strides[0] * f.hop, wave.strides[0]))
    if f.preemphasis > 0.0 and f.htk_preemphasis:
        first = framed[:, :1] * (1.0 - f.preemphasis)
        framed = np.concatenate([first, framed[:, 1:-1] - f.preemphasis * framed[:, :-2]], axis=-1)
    elif f.preemphasis > 0.0:
        framed = framed[:, 1:] - f.preemphasis * framed[:, :-1]
    else:
        framed = framed[:, :-1]
    magnitude = np.abs(np.fft.rfft(framed * _hann(f), n=f.fft_length, axis=-1))
    mel = np.matmul(magnitude, mel_filters(f))
    floor = np.array(f.mel_floor, np.float64)
    out = np.log(mel + floor) if f.kind == GEMMA4 else np.log(np.maximum(mel, floor))
    if f.per_bin_mean is not None:
        out = out - np.asarray(f.per_bin_mean)
    if f.per_bin_stddev is not None:
        out = out / np.asarray(f.per_bin_stddev)
    out = out.astype(np.float32)
    if f.kind == GEMMA4:
        out[valid:] = 0.0
    return out, valid
