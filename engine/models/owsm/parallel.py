"""The OWSM encoder over every device of a 1-D ``DATA`` mesh: ``jax.jit`` + ``NamedSharding``, as w2v-BERT's.

The batch axis of ``features`` is split over ``DATA``, the weights are replicated, XLA partitions the program. A batch
is padded to a multiple of the process's device count with all-zero windows, dropped from the result. Several
processes each pass their own rows (``jax.make_array_from_process_local_data``) and get their own rows back.
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
from engine.models.owsm.model import OwsmEncoder
from engine.models.w2vbert.parallel import _local_rows, data_mesh


class ShardedEncoder:
    """``features f32[batch, feature_frame, n_mels] -> f[L+2, batch, frame, embed]`` on every device (one process)."""

    def __init__(self, model: OwsmEncoder, mesh: Mesh | None = None, out_dtype=None):
        self.mesh = data_mesh() if mesh is None else mesh
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self._rows = NamedSharding(self.mesh, P(DATA))
        self._step = _sharded_step(graphdef, None if out_dtype is None else jnp.dtype(out_dtype), self.mesh)

    @property
    def local_multiple(self) -> int:
        """Local batch sizes are padded to a multiple of this (the process's device count)."""
        return max(1, self.mesh.size // jax.process_count())

    def __call__(self, features: np.ndarray) -> jax.Array:
        """This process's batch in, its rows out, padding rows dropped."""
        features = np.asarray(features, np.float32)
        if features.ndim != 3:
            raise ShapeError(f"features must be f32[batch, feature_frame, n_mels], got {features.shape}")
        n = len(features)
        pad = (-n) % self.local_multiple
        if pad:
            features = np.concatenate([features, np.zeros((pad, *features.shape[1:]), np.float32)])
        if jax.process_count() == 1:
            return self._step(self._state, jax.device_put(features, self._rows))[:, :n]
        out = self._step(self._state, jax.make_array_from_process_local_data(self._rows, features))
        return _local_rows(out)[:, :n]


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
