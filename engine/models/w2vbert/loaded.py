"""A loaded w2v-BERT 2.0 or SeamlessM4T v2 speech encoder: the Flax model and its checkpoint, in one object.

The entry point a notebook uses::

    from engine.models.w2vbert.loaded import load_w2vbert
    m = load_w2vbert("/path/to/w2v-bert-2.0")          # or facebook/seamless-m4t-v2-large, or a hub id
    features, valid = m.features(waveforms)          # f32[batch, frame, 160], i32[batch]: 20 ms frames
    states = m.encode(features, valid)               # f32[L+1, batch, frame, 1024], layers 0..L (see model)
    states, valid = m.encode_batch(waveforms)        # both steps
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

from engine.models.common.loaded_config import LoadedConfig
from engine.models.common.parallel import ShardedEncoder
from engine.models.common.trainable import SplitModule
from engine.models.w2vbert import features as feats
from engine.models.w2vbert.checkpoints import Checkpoint, load_checkpoint
from engine.models.w2vbert.model import W2vBertEncoder
from engine.models.w2vbert.parallel import SIGNATURE


@functools.partial(jax.jit, static_argnames=("graphdef", "out_dtype"))
def _encode(graphdef, state, features, valid, out_dtype):
    return nnx.merge(graphdef, state)(features, valid, out_dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedW2vBert(LoadedConfig, SplitModule):
    model: W2vBertEncoder
    checkpoint: Checkpoint  # name, config, sha256, path (weights dropped: the model holds them)

    def features(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz waveforms -> ``(f32[batch, frame, 160], valid i32[batch])`` (``features.batch_features``)."""
        return feats.batch_features(waveforms)

    def encode(self, features, valid, out_dtype=None) -> jax.Array:
        """``features f32[batch, frame, 160]``, ``valid i32[batch]`` -> ``f[L+1, batch, frame, embed]``, on the
        default device (jitted once per shape)."""
        graphdef, state = self._split
        return _encode(graphdef, state, jnp.asarray(features), jnp.asarray(valid, jnp.int32), out_dtype)

    def sharded(self, mesh=None, out_dtype=None) -> ShardedEncoder:
        """``encode`` over every device of a 1-D ``DATA`` mesh (default: all devices)."""
        return ShardedEncoder(self.model, SIGNATURE, mesh, out_dtype=out_dtype)

    def encode_batch(self, waveforms: Sequence[np.ndarray], out_dtype=None) -> tuple[jax.Array, np.ndarray]:
        """16 kHz waveforms -> ``(states f[L+1, batch, frame, embed], valid i32[batch])``."""
        features, valid = self.features(waveforms)
        return self.encode(features, valid, out_dtype), valid


def load_w2vbert(source: str | os.PathLike, *, dtype=jnp.float32) -> LoadedW2vBert:
    """Load a checkpoint (``checkpoints.load_checkpoint``: a folder or a hub id) as a Flax encoder of ``dtype``."""
    ckpt = load_checkpoint(source)
    model = W2vBertEncoder(ckpt.config, ckpt.state_dict, dtype)
    # The model owns device copies of the weights now: keep the config and the hash, drop the host arrays.
    return LoadedW2vBert(model, dataclasses.replace(ckpt, state_dict={}))
