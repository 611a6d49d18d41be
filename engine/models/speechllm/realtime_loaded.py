"""A loaded Voxtral Realtime audio encoder: the Flax model, its checkpoint and its features.

The entry point a notebook uses::

    from engine.models.speechllm.realtime_loaded import load_realtime
    m = load_realtime("/path/to/Voxtral-Mini-4B-Realtime-2602")  # only the audio tower and projector are read
    windows = m.features(audio)         # [(log-mel f32[128, frames], valid mel frames), ...], 30 s each
    mel, valid = m.collate(windows)     # f32[window, 128, 3000] (zeros past each window), i32[window]
    states = m.encode(mel, valid)       # f32[layer, window, 1500, width]; the first valid // 2 are the clip's
    out = m.outputs(mel, valid)         # + the tower's output and the projector's

Input: each 30 s window's log-mel as the model's own extractor computes it for that clip alone
(``realtime_features``), zero-padded to 3000 mel frames; the encoder is causal, so the padding never reaches a valid
frame.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.models.common.logmel import HOP_LENGTH
from engine.models.interface import split_windows
from engine.models.speechllm.realtime_checkpoints import RealtimeCheckpoint, load_checkpoint
from engine.models.speechllm.realtime_config import CONV_STRIDE, encoder_frames
from engine.models.speechllm.realtime_features import RealtimeFeatures, from_preprocessor, log_mel
from engine.models.speechllm.realtime_model import RealtimeTower
from engine.models.speechllm.tower import LoadedTower, pad_windows

WINDOW_SAMPLES = 480_000  # 30 s: babelgrid's window (the extractor has no maximum; the attention sees 15 s back)
WINDOW_MEL_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames, 1500 frames, 375 projector frames
MIN_SAMPLES = CONV_STRIDE * HOP_LENGTH  # 320: two mel frames, one frame of the blocks


TRIM_STEP = 400  # mel frames (4 s): ``trimmed_collate`` cuts a batch in steps of this, so at most 8 shapes a job


def collate(inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[(mel f32[n_mels, frames], valid), ...]`` -> ``(mel f32[batch_size, n_mels, 3000], valid
    i32[batch_size])``: zeros past each window's frames, and padding rows of zeros with 0 valid frames."""
    return pad_windows(inputs, batch_size, WINDOW_MEL_FRAMES, time_axis=1)


def trimmed_collate(inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``collate``, the batch cut to its longest window's mel frames rounded up to ``TRIM_STEP`` (400, 800, ..., 2800
    or 3000 mel frames: at most 8 compiled shapes a job). The encoder is causal, so the frames cut reach no valid frame,
    and on CPU its reductions run in blocks of fixed shapes (``realtime_model.rms_norm``, ``banded_attention``): a
    window's states are the same bits whatever its batch mates (tests/models/speechllm/test_voxtral_realtime.py). A
    batch of 8-11 s clips then runs 1,200 mel frames a row instead of 3,000 (bench/RESULTS.md, issue 83's encoders)."""
    longest = max((m.shape[1] for m, _ in inputs), default=0)
    frames = min(WINDOW_MEL_FRAMES, max(1, -(-longest // TRIM_STEP)) * TRIM_STEP)
    return pad_windows(inputs, batch_size, frames, time_axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRealtime(LoadedTower):
    model: RealtimeTower
    checkpoint: RealtimeCheckpoint  # name, config, sha256, path (weights dropped: the model holds them)

    @functools.cached_property
    def feature_settings(self) -> RealtimeFeatures:
        return from_preprocessor(self.checkpoint.preprocessor)

    @property
    def seconds_per_frame(self) -> float:
        return CONV_STRIDE * HOP_LENGTH / 16000  # 20 ms

    def features(self, audio: np.ndarray, long_audio: str = "window") -> list[tuple[np.ndarray, int]]:
        """16 kHz audio ``f32[samples]`` -> (log-mel ``f32[n_mels, frames]``, valid mel frames) per 30 s window."""
        parts = split_windows(np.asarray(audio, np.float32), long_audio, MIN_SAMPLES, WINDOW_SAMPLES)
        return [(m, m.shape[1]) for m in (log_mel(p, self.feature_settings) for p in parts)]

    collate = staticmethod(collate)

    def valid_mel(self, samples) -> np.ndarray:
        """Valid mel frames of windows of ``samples`` samples."""
        return self.feature_settings.mel_frames(samples)

    def frames(self, mel_frames, output: str = "layers") -> np.ndarray:
        """Valid frames of the blocks and the tower's output (50/s), or of the projector (12.5/s)."""
        f = encoder_frames(mel_frames)
        return np.asarray(f // self.config.group if output == "projector" else f, np.int32)


def load_realtime(source: str | os.PathLike, *, dtype=None) -> LoadedRealtime:
    """A Voxtral Realtime folder (or hub id, or its tower's own folder) -> ``LoadedRealtime``; ``dtype``: compute
    dtype (float32 by default)."""
    checkpoint = load_checkpoint(source)
    model = RealtimeTower(checkpoint.config, checkpoint.state_dict, jnp.float32 if dtype is None else dtype)
    return LoadedRealtime(model, dataclasses.replace(checkpoint, state_dict={}))
