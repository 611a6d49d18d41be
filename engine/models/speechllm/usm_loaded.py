"""A loaded USM Conformer (Gemma 3n's or Gemma 4's audio tower): the Flax model, its checkpoint and its features.

The entry point a notebook uses::

    from engine.models.speechllm.usm_loaded import load_usm
    m = load_usm("/path/to/gemma-3n-E2B-it")  # the full model's folder: only the audio tower is read
    windows = m.features(audio)               # [(log-mel f32[frames, 128], valid mel frames), ...], 30 s each
    mel, valid = m.collate(windows)           # f32[window, 3000, 128] (zeros past each window), i32[window]
    states = m.encode(mel, valid)             # f32[layer, window, 750, width]; the first tower_frames(valid) valid
    out = m.outputs(mel, valid)               # + the tower's output and embed_audio's

Input: each window's log-mel as the model's own feature extractor computes it for that clip alone
(``usm_features``), zero-padded to 3000 frames: the tower's convolutions see zeros past a clip, as they do in a
batch of one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.models.interface import split_windows
from engine.models.speechllm.tower import LoadedTower, pad_windows
from engine.models.speechllm.usm_checkpoints import UsmCheckpoint, load_checkpoint
from engine.models.speechllm.usm_config import final_frames, tower_frames
from engine.models.speechllm.usm_features import MAX_SAMPLES, UsmFeatures, from_preprocessor, log_mel
from engine.models.speechllm.usm_model import UsmTower

WINDOW_MEL_FRAMES = 3000  # a batch's mel frames: 30 s (at most 2999 frames) rounded up to a multiple of 4


def collate(inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[(mel f32[frames, n_mels], valid), ...]`` -> ``(mel f32[batch_size, 3000, n_mels], valid
    i32[batch_size])``: zeros past each window's frames, and padding rows of zeros with 0 valid frames."""
    return pad_windows(inputs, batch_size, WINDOW_MEL_FRAMES, time_axis=0)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedUsm(LoadedTower):
    model: UsmTower
    checkpoint: UsmCheckpoint  # name, config, sha256, path (weights dropped: the model holds them)

    @functools.cached_property
    def feature_settings(self) -> UsmFeatures:
        return from_preprocessor(self.config.kind, self.checkpoint.preprocessor)

    @functools.cached_property
    def min_samples(self) -> int:
        """The fewest samples of a window with one valid mel frame (3n: 513, a whole frame; 4: 161)."""
        s = np.arange(1, 2048)
        return int(s[self.feature_settings.mel_frames(s)[1] > 0][0])

    @property
    def seconds_per_frame(self) -> float:
        return 0.04  # 4 mel frames of 10 ms

    def features(self, audio: np.ndarray, long_audio: str = "window") -> list[tuple[np.ndarray, int]]:
        """16 kHz audio ``f32[samples]`` -> (log-mel ``f32[frames, n_mels]``, valid mel frames) per 30 s window."""
        parts = split_windows(np.asarray(audio, np.float32), long_audio, self.min_samples, MAX_SAMPLES)
        return [log_mel(p, self.feature_settings) for p in parts]

    collate = staticmethod(collate)

    def valid_mel(self, samples) -> np.ndarray:
        """Valid mel frames of windows of ``samples`` samples."""
        return self.feature_settings.mel_frames(samples)[1].astype(np.int32)

    def frames(self, valid_mel, output: str = "layers") -> np.ndarray:
        """Valid frames of the blocks (``layers``) or of the tower's output and the projector's."""
        f = tower_frames(valid_mel) if output == "layers" else final_frames(self.config, valid_mel)
        return np.asarray(f, np.int32)


def load_usm(source: str | os.PathLike, *, dtype=None) -> LoadedUsm:
    """A Gemma 3n or Gemma 4 folder (or hub id, or a tower's own folder) -> ``LoadedUsm``; ``dtype``: compute dtype
    (float32 by default)."""
    checkpoint = load_checkpoint(source)
    model = UsmTower(checkpoint.config, checkpoint.state_dict, jnp.float32 if dtype is None else dtype)
    return LoadedUsm(model, dataclasses.replace(checkpoint, state_dict={}))
