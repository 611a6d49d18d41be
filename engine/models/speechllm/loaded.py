"""A loaded speech-LLM audio tower (Qwen2-Audio, Voxtral, Audio Flamingo 3): the Flax model and its checkpoint.

The entry point a notebook uses::

    from engine.models.speechllm.loaded import load_speechllm
    m = load_speechllm("/path/to/Qwen2-Audio-7B-Instruct")   # the full model's folder: only the tower is read
    mel, frames = m.features(audio)                           # f32[window, 128, 3000], i32[window]
    states = m.encode(mel, frames)                            # f32[layer, window, 1500, 1280], the stored layers
    out = m.outputs(mel, frames)                              # + the tower's final output and the projector's
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from engine.models.common.logmel import features_for_audio
from engine.models.speechllm.checkpoints import Checkpoint, load_checkpoint
from engine.models.speechllm.model import SpeechTower
from engine.models.speechllm.tower import LoadedTower


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedSpeechLLM(LoadedTower):
    model: SpeechTower
    checkpoint: Checkpoint  # name, config, sha256, path (weights dropped: the model holds them)

    def features(self, audio: np.ndarray, long_audio: str = "window"):
        """16 kHz audio ``f32[samples]`` -> ``(mel f32[window, n_mels, 3000], valid frames i32[window])``: the
        WhisperFeatureExtractor's log-mel, each 30 s window padded with zeros (``engine.models.common.logmel``)."""
        return features_for_audio(audio, self.config.n_mels, long_audio=long_audio)


def load_speechllm(source: str | os.PathLike, *, dtype=None) -> LoadedSpeechLLM:
    """A speech LLM's folder (or hub id, or an audio tower's own folder) -> ``LoadedSpeechLLM``; ``dtype``: compute
    dtype (float32 by default)."""
    dtype = jnp.float32 if dtype is None else dtype
    checkpoint = load_checkpoint(source)
    model = SpeechTower(checkpoint.config, checkpoint.state_dict, dtype)
    return LoadedSpeechLLM(model, dataclasses.replace(checkpoint, state_dict={}))
