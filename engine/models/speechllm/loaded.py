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
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.models.common.logmel import features_for_audio
from engine.models.speechllm.checkpoints import Checkpoint, load_checkpoint
from engine.models.speechllm.config import SpeechLLMConfig
from engine.models.speechllm.model import SpeechTower


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "out_dtype"))
def _encode(graphdef, state, mel, frames, layers, out_dtype):
    return nnx.merge(graphdef, state)(mel, frames, layers, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _outputs(graphdef, state, mel, frames):
    return nnx.merge(graphdef, state).outputs(mel, frames)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedSpeechLLM:
    model: SpeechTower
    checkpoint: Checkpoint  # name, config, sha256, path (weights dropped: the model holds them)

    @property
    def config(self) -> SpeechLLMConfig:
        return self.checkpoint.config

    @property
    def n_layers_out(self) -> int:
        return self.model.n_layers_out

    @functools.cached_property
    def _split(self):
        return nnx.split(self.model)

    def features(self, audio: np.ndarray, long_audio: str = "window"):
        """16 kHz audio ``f32[samples]`` -> ``(mel f32[window, n_mels, 3000], valid frames i32[window])``: the
        WhisperFeatureExtractor's log-mel, each 30 s window padded with zeros (``engine.models.common.logmel``)."""
        return features_for_audio(audio, self.config.n_mels, long_audio=long_audio)

    def encode(self, mel, frames, layers: Sequence[int] | None = None, out_dtype=None):
        """``f[len(layers), batch, 1500, width]`` (default: every stored layer)."""
        graphdef, state = self._split
        layers = None if layers is None else tuple(int(i) for i in layers)
        return _encode(graphdef, state, jnp.asarray(mel), jnp.asarray(frames, jnp.int32), layers, out_dtype)

    def outputs(self, mel, frames) -> dict:
        """``SpeechTower.outputs`` as NumPy arrays: every block, the tower's final output, the projector's."""
        graphdef, state = self._split
        out = _outputs(graphdef, state, jnp.asarray(mel), jnp.asarray(frames, jnp.int32))
        return {k: np.asarray(v) for k, v in out.items()}


def load_speechllm(source: str | os.PathLike, *, dtype=None) -> LoadedSpeechLLM:
    """A speech LLM's folder (or hub id, or an audio tower's own folder) -> ``LoadedSpeechLLM``; ``dtype``: compute
    dtype (float32 by default)."""
    dtype = jnp.float32 if dtype is None else dtype
    checkpoint = load_checkpoint(source)
    model = SpeechTower(checkpoint.config, checkpoint.state_dict, dtype)
    return LoadedSpeechLLM(model, dataclasses.replace(checkpoint, state_dict={}))
