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

TRIM_STEP = 800  # mel frames (8 s): ``trimmed`` cuts a batch in whole attention windows of at least this
MIN_SAMPLES = SAMPLE_RATE // 2  # Qwen3ASRFeatureExtractor's min_length: a shorter clip is padded to 0.5 s


def mel_frames(valid_samples) -> np.ndarray:
    """Valid mel frames of windows holding ``valid_samples`` real samples: ``ceil(max(s, 8000) / 160)``, at most
    3000 (the feature extractor's ``attention_mask[:, ::160]`` after its 0.5 s minimum)."""
    s = np.maximum(np.asarray(valid_samples, np.int64), MIN_SAMPLES)
    return np.minimum(-(-s // HOP_LENGTH), N_FRAMES).astype(np.int32)


def trimmed(config, mel: np.ndarray, mel_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch ``(mel f32[batch, n_mels, 3000], valid mel frames i32[batch])`` cut to the attention windows its
    longest window needs: the tower attends within windows of ``n_window_infer`` mel frames (800: 8 s; Qwen2.5-Omni:
    each 200-frame chunk), and a chunk's frames read that chunk's mel only, so the windows past every row's valid mel
    frames reach no valid frame. Measured on CPU: Qwen3-ASR's valid frames came out the same (0.0 difference), and
    Qwen2.5-Omni's within 4.1e-7 of a layer's peak (XLA compiles its fused steps per shape; the test in
    tests/models/speechllm/test_qwen3_audio.py holds both to 1e-6). Their cost was most of the batch's: a batch of
    8-11 s clips ran 3.75 attention windows a row for the 2 it needs (bench/RESULTS.md, issue 83's encoders: 4.82 s
    against 2.52 s a call). Outputs hold ``frames_of`` the cut mel's
    frames (at most 390); the frames past a row's own are padding, as before. Cut in steps of 8 s (``TRIM_STEP``),
    whole attention windows, so that a job compiles at most 4 shapes. ``cost`` stays a full window's: the bound a
    batch with a window over 24 s reaches."""
    window = config.window_frames // config.chunk_frames * config.chunk  # an attention window's mel frames
    unit = -(-TRIM_STEP // window) * window
    need = -(-int(np.max(mel_frames, initial=0)) // unit) * unit
    return mel[..., : min(mel.shape[-1], max(unit, need))], mel_frames


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
