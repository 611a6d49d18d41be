"""A loaded Qwen3 audio tower (Qwen3-ASR, Qwen3-Omni): the Flax model and its checkpoint.

The entry point a notebook uses::

    from engine.models.speechllm.qwen3_loaded import load_qwen3_audio
    m = load_qwen3_audio("/path/to/Qwen3-ASR-1.7B")  # the full model's folder: only the audio tower is read
    mel, mel_frames = m.features(audio)              # f32[window, 128, 3000], i32[window]
    states = m.encode(mel, mel_frames)               # f32[layer, window, 390, width]; the first frames_of(...) valid
    out = m.outputs(mel, mel_frames)                 # + the tower's final output and the projection's

Input: Whisper's 30 s log-mel windows (``engine.models.common.logmel``), as Qwen3-ASR's feature extractor makes them
(the audio padded to 30 s, then log-mel), and each window's valid mel frames: ``ceil(samples / 160)``, at least 50,
since the feature extractor pads a clip under 0.5 s (``min_length`` 8000 samples) with zeros it counts as valid.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.models.common.logmel import HOP_LENGTH, N_FRAMES, log_mel_spectrogram, split_windows
from engine.models.speechllm.qwen3_checkpoints import Qwen3Checkpoint, load_checkpoint
from engine.models.speechllm.qwen3_config import frames_of
from engine.models.speechllm.qwen3_model import Qwen3AudioTower
from engine.models.speechllm.tower import LoadedTower

MIN_SAMPLES = SAMPLE_RATE // 2  # Qwen3ASRFeatureExtractor's min_length: a shorter clip is padded to 0.5 s


def mel_frames(valid_samples) -> np.ndarray:
    """Valid mel frames of windows holding ``valid_samples`` real samples: ``ceil(max(s, 8000) / 160)``, at most
    3000 (the feature extractor's ``attention_mask[:, ::160]`` after its 0.5 s minimum)."""
    s = np.maximum(np.asarray(valid_samples, np.int64), MIN_SAMPLES)
    return np.minimum(-(-s // HOP_LENGTH), N_FRAMES).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedQwen3Audio(LoadedTower):
    model: Qwen3AudioTower
    checkpoint: Qwen3Checkpoint  # name, config, sha256, path (weights dropped: the model holds them)

    def features(self, audio: np.ndarray, long_audio: str = "window"):
        """16 kHz audio ``f32[samples]`` -> ``(mel f32[window, n_mels, 3000], valid mel frames i32[window])``."""
        windows, samples = split_windows(audio, long_audio)
        return np.asarray(log_mel_spectrogram(windows, self.config.n_mels)), mel_frames(samples)

    def frames(self, mel_frames_: np.ndarray) -> np.ndarray:
        """Valid encoder frames of windows of ``mel_frames_`` valid mel frames."""
        return frames_of(self.config, np.asarray(mel_frames_, np.int64)).astype(np.int32)


def load_qwen3_audio(source: str | os.PathLike, *, dtype=None) -> LoadedQwen3Audio:
    """A Qwen3-ASR or Qwen3-Omni folder (or hub id, or a tower's own folder) -> ``LoadedQwen3Audio``; ``dtype``:
    compute dtype (float32 by default)."""
    dtype = jnp.float32 if dtype is None else dtype
    checkpoint = load_checkpoint(source)
    model = Qwen3AudioTower(checkpoint.config, checkpoint.state_dict, dtype)
    return LoadedQwen3Audio(model, dataclasses.replace(checkpoint, state_dict={}))
