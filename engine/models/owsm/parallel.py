"""The OWSM encoder over every device of a 1-D ``DATA`` mesh: ``jax.jit`` + ``NamedSharding``, as w2v-BERT's.

The batch axis of ``features`` is split over ``DATA``, the weights are replicated, XLA partitions the program. A batch
is padded to a multiple of the device count with all-zero windows, dropped from the result.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from engine.axes import DATA
from engine.errors import ShapeError
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.w2vbert.parallel import data_mesh


class ShardedEncoder:
    """``features f32[batch, feature_frame, n_mels] -> f[L+2, batch, frame, embed]`` on every device (one process)."""

    def __init__(self, model: OwsmEncoder, mesh: Mesh | None = None, out_dtype=None):
        self.mesh = data_mesh() if mesh is None else mesh
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self._rows = NamedSharding(self.mesh, P(DATA))
        self._step = _sharded_step(graphdef, None if out_dtype is None else jnp.dtype(out_dtype), self.mesh)

    def __call__(self, features: np.ndarray) -> jax.Array:
        features = np.asarray(features, np.float32)
        if features.ndim != 3:
            raise ShapeError(f"features must be f32[batch, feature_frame, n_mels], got {features.shape}")
        n = len(features)
        pad = (-n) % self.mesh.size
        if pad:
            features = np.concatenate([features, np.zeros((pad, *features.shape[1:]), np.float32)])
        return self._step(self._state, jax.device_put(features, self._rows))[:, :n]


@functools.lru_cache(maxsize=16)
def _sharded_step(graphdef, out_dtype, mesh):
    """One jitted step per (model structure, dtype, mesh)."""
    return jax.jit(
        functools.partial(_encode_step, graphdef, out_dtype=out_dtype),
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA))),
        out_shardings=NamedSharding(mesh, P(None, DATA)),
    )


def _encode_step(graphdef, state, features, *, out_dtype):
    return nnx.merge(graphdef, state)(features, out_dtype)
