"""The encoder over every device of a 1-D ``DATA`` mesh: ``jax.jit`` + ``NamedSharding``, as Whisper's encode does.

The batch axis of ``features`` and ``valid`` is split over the mesh axis ``DATA``, the weights are replicated, and XLA
partitions the program. A batch is padded to a multiple of the device count with empty utterances (``valid = 0``, all
keys masked: finite, and dropped from the result). With ``jax.distributed`` initialised the mesh spans every process's
devices; each process passes its own local batch (the same size on every process) and gets its own rows back.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from engine.axes import DATA
from engine.errors import ShapeError
from engine.models.w2vbert.model import W2vBertEncoder


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``DATA`` over ``devices`` (default: every device of every process)."""
    return Mesh(np.array(jax.devices() if devices is None else list(devices)), (DATA,))


class ShardedEncoder:
    """``(features f32[batch, frame, n_input], valid i32[batch]) -> f[L+1, batch, frame, embed]`` on every device.

    ``out_dtype`` (default the model's) is fixed per instance, so one compiled program serves every batch of a shape.
    """

    def __init__(self, model: W2vBertEncoder, mesh: Mesh | None = None, out_dtype=None):
        self.mesh = data_mesh() if mesh is None else mesh
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self._rows = NamedSharding(self.mesh, P(DATA))
        self._step = _sharded_step(graphdef, None if out_dtype is None else jnp.dtype(out_dtype), self.mesh)

    @property
    def local_multiple(self) -> int:
        """Local batch sizes are padded to a multiple of this (the process's device count)."""
        return max(1, self.mesh.size // jax.process_count())

    def __call__(self, features: np.ndarray, valid: np.ndarray) -> jax.Array:
        """This process's batch in, its rows out, padding rows dropped."""
        features = np.asarray(features, np.float32)
        valid = np.asarray(valid, np.int32)
        if features.ndim != 3 or valid.shape != features.shape[:1]:
            raise ShapeError(
                f"features must be f32[batch, frame, n_input] and valid i32[batch], got {features.shape} and "
                f"{valid.shape}"
            )
        n = len(features)
        pad = (-n) % self.local_multiple
        if pad:
            features = np.concatenate([features, np.zeros((pad, *features.shape[1:]), np.float32)])
            valid = np.concatenate([valid, np.zeros(pad, np.int32)])
        put = jax.device_put if jax.process_count() == 1 else self._from_process
        out = self._step(self._state, put(features, self._rows), put(valid, self._rows))
        if jax.process_count() > 1:
            out = _local_rows(out)
        return out[:, :n]

    def _from_process(self, x, sharding):
        return jax.make_array_from_process_local_data(sharding, x)


@functools.lru_cache(maxsize=16)
def _sharded_step(graphdef, out_dtype, mesh):
    """One jitted step per (model structure, dtype, mesh): encoders built again reuse its compilations."""
    rows = NamedSharding(mesh, P(DATA))
    return jax.jit(
        functools.partial(_encode_step, graphdef, out_dtype=out_dtype),
        in_shardings=(NamedSharding(mesh, P()), rows, rows),
        out_shardings=NamedSharding(mesh, P(None, DATA)),
    )


def _encode_step(graphdef, state, features, valid, *, out_dtype):
    return nnx.merge(graphdef, state)(features, valid, out_dtype)


def _local_rows(x: jax.Array) -> jax.Array:
    """This process's rows (axis 1) of a globally sharded array, in global order."""
    starts, parts = set(), []
    for s in sorted(x.addressable_shards, key=lambda s: s.index[1].start or 0):
        start = s.index[1].start or 0
        if start not in starts:
            starts.add(start)
            parts.append(np.asarray(s.data))
    return jnp.asarray(np.concatenate(parts, axis=1))
