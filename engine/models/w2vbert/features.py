"""The input features of w2v-BERT 2.0 and SeamlessM4T v2: transformers' ``SeamlessM4TFeatureExtractor`` in NumPy.

Recipe (Kaldi's ``fbank`` as fairseq2 and transformers compute it), per utterance at 16 kHz:

1. samples scaled to 16-bit range (x 32768); frames of ``FRAME_LENGTH`` samples every ``HOP_LENGTH``, not centred:
   ``1 + (samples - 400) // 160`` frames;
2. per frame: its mean removed (DC offset), pre-emphasis 0.97 (the first sample scaled by 0.03), Povey window
   (Hann to the power 0.85, symmetric), zero-padded to ``N_FFT``, power spectrum;
3. ``N_MELS`` Kaldi mel filters (triangles in mel space, 20 Hz to 8 kHz, ``kaldi_mel_filters``), natural log floored
   at ``MEL_FLOOR``;
4. each mel bin normalised to zero mean and unit variance over the utterance's own frames (``ddof=1``, + 1e-7);
5. padded with zeros to an even frame count and pairs of frames stacked: ``f32[frame, 160]``, one frame per 20 ms.
   A stacked frame is valid when both its frames are: ``valid = fbank frames // 2`` (the extractor's attention mask
   keeps odd indices, so an odd last frame sits in a frame the mask drops).

Libraries: the FFT is NumPy's ``rfft`` (float64, kept as complex64 as transformers' ``spectrogram`` stores it, and
laid out as it lays it out, so that the two agree bit for bit on the real clips). No installed library gives Kaldi's
filter bank (librosa's mel filters are triangular in Hz; torchaudio's ``kaldi.get_mel_banks`` is not a dependency), so
``kaldi_mel_filters`` builds it in a few lines and a test checks it against transformers'
``audio_utils.mel_filter_bank(..., mel_scale="kaldi", triangularize_in_mel_space=True)``, which is the reference, not a
runtime dependency.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from engine.data.audio import check_waveform
from engine.errors import ShapeError

SAMPLE_RATE = 16000  # Hz, both models' training rate
FRAME_LENGTH = 400  # samples per fbank frame (25 ms)
HOP_LENGTH = 160  # samples between fbank frames (10 ms)
N_FFT = 512  # FFT size: the frame zero-padded to the next power of two
N_FREQS = N_FFT // 2 + 1  # 257 one-sided bins
N_MELS = 80  # mel bins per fbank frame
STRIDE = 2  # fbank frames stacked per model frame: 160 inputs, 20 ms per frame
N_INPUT = N_MELS * STRIDE
LOW_HZ = 20.0  # Kaldi's low_freq default
HIGH_HZ = SAMPLE_RATE / 2
PREEMPHASIS = 0.97
POVEY_POWER = 0.85  # Kaldi's "povey" window: a Hann window raised to this power
MEL_FLOOR = 1.192092955078125e-07  # float32 epsilon: Kaldi floors mel energies here before the log
NORM_EPS = 1e-7  # added to each bin's variance before the square root (the extractor's)
INT16_SCALE = 2**15  # Kaldi reads 16-bit integers; the extractor scales float audio to their range
MIN_SAMPLES = FRAME_LENGTH + HOP_LENGTH  # two fbank frames: one model frame, and a variance with ddof=1


def _kaldi_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


def kaldi_mel_filters() -> np.ndarray:
    """Kaldi's mel filter bank: ``N_MELS`` triangles, equally spaced on the mel scale ``1127 ln(1 + f/700)`` from
    ``LOW_HZ`` to ``HIGH_HZ``, each rising and falling linearly *in mel* between its neighbours' centres, no area
    normalisation. Returns ``f64[N_FREQS, N_MELS]`` (transformers' layout), read-only."""
    return _kaldi_mel_filters()


@functools.cache
def _kaldi_mel_filters() -> np.ndarray:
    edges = np.linspace(_kaldi_mel(LOW_HZ), _kaldi_mel(HIGH_HZ), N_MELS + 2)  # left, centre, right of each triangle
    bins = _kaldi_mel(np.arange(N_FREQS) * (SAMPLE_RATE / N_FFT))  # [N_FREQS], mel of each FFT bin
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rise = (bins[:, None] - left) / (centre - left)
    fall = (right - bins[:, None]) / (right - centre)
    filters = np.maximum(0.0, np.minimum(rise, fall))
    filters.flags.writeable = False
    return filters


@functools.cache
def _povey_window() -> np.ndarray:
    window = np.hanning(FRAME_LENGTH) ** POVEY_POWER  # symmetric, as Kaldi's
    window.flags.writeable = False
    return window


def log_mel_fbank(waveform: np.ndarray) -> np.ndarray:
    """Kaldi log-mel fbank of one utterance, before normalisation.

    Args:
      waveform: f32[samples] at 16 kHz, at least ``MIN_SAMPLES`` long.
    Returns:
      f32[fbank_frame, N_MELS], ``1 + (samples - FRAME_LENGTH) // HOP_LENGTH`` frames (a transposed view).
    """
    x = _check_waveform(waveform, "waveform")
    n_frames = 1 + (len(x) - FRAME_LENGTH) // HOP_LENGTH
    x = x.astype(np.float64) * INT16_SCALE
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH)[::HOP_LENGTH][:n_frames]
    frames = frames - frames.mean(axis=1, keepdims=True)
    # Pre-emphasis per frame, its first sample against itself (Kaldi's convention).
    frames = np.concatenate([frames[:, :1] * (1 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], axis=1)
    # complex64, as transformers' spectrogram stores its FFT: its rounding is what the reference carries.
    spectrum = np.fft.rfft(frames * _povey_window(), n=N_FFT).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    # Bins-major and then transposed, as the extractor lays it out: NumPy's float32 means (normalise) sum in an order
    # that follows the memory layout, and this layout makes them the extractor's to the bit.
    mel = np.maximum(MEL_FLOOR, kaldi_mel_filters().T @ power.T)
    return np.log(mel).astype(np.float32).T


def normalise(fbank: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per mel bin over the utterance's frames: f32[fbank_frame, N_MELS], as the
    extractor does it (float32 arithmetic, unbiased variance)."""
    fbank = np.asarray(fbank, np.float32)
    return (fbank - fbank.mean(0, keepdims=True)) / np.sqrt(fbank.var(0, ddof=1, keepdims=True) + NORM_EPS)


def utterance_features(waveform: np.ndarray) -> tuple[np.ndarray, int]:
    """One utterance's model input: ``(f32[frame, N_INPUT], valid frames)``, ``frame = ceil(fbank frames / 2)``."""
    fbank = normalise(log_mel_fbank(waveform))
    n = len(fbank)
    if n % STRIDE:
        fbank = np.concatenate([fbank, np.zeros((STRIDE - n % STRIDE, N_MELS), np.float32)])
    return fbank.reshape(-1, N_INPUT), n // STRIDE


def batch_features(waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A ragged batch as the extractor pads it (``padding=True``, to the longest, even).

    Args:
      waveforms: each f32[samples] at 16 kHz.
    Returns:
      features: f32[batch, frame, N_INPUT], zero past each utterance's frames;
      valid: i32[batch], frames holding the utterance (20 ms each); the rest are padding.
    """
    if len(waveforms) == 0:
        raise ShapeError("batch_features needs at least one waveform, got none")
    feats, valid = [], []
    for i, w in enumerate(waveforms):
        _check_waveform(w, f"waveforms[{i}]")
        f, v = utterance_features(w)
        feats.append(f)
        valid.append(v)
    frames = max(len(f) for f in feats)
    out = np.zeros((len(feats), frames, N_INPUT), np.float32)
    for i, f in enumerate(feats):
        out[i, : len(f)] = f
    return out, np.asarray(valid, np.int32)


def frames_for_samples(samples) -> np.ndarray:
    """Valid model frames for utterances of ``samples`` samples (i32, same shape): what ``batch_features`` reports."""
    samples = np.asarray(samples, np.int64)
    fbank = np.where(samples >= FRAME_LENGTH, 1 + (samples - FRAME_LENGTH) // HOP_LENGTH, 0)
    return (fbank // STRIDE).astype(np.int32)


def _check_waveform(waveform, name: str) -> np.ndarray:
    return check_waveform(waveform, name, MIN_SAMPLES, "w2v-BERT features", "one 20 ms frame")
