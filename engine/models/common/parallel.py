"""Data parallelism for every family's encoder: one step over every device of a 1-D ``DATA`` mesh.

``jit`` + ``NamedSharding`` (the route JAX recommends now that ``pmap`` is implemented over ``shard_map``): the batch
axis of each input is split over the mesh axis ``DATA``, the weights are replicated, and XLA partitions the program.
A batch is padded to a multiple of the device count with all-zero rows (a silent window, or a length of 0: finite in
every family) and the padding is dropped from the result.

With ``jax.distributed`` initialised, the mesh spans every process's devices; each process passes its own local batch
(equal sizes on every process) and gets its own rows back.

A family says how its model is called with a ``Signature`` (in its own ``parallel.py``); ``ShardedEncoder`` does the
rest the same way for all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from engine.axes import DATA
from engine.errors import ShapeError
from kernels.frames import leading, take_rows


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``DATA`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (DATA,))


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pad axis 0 of ``x`` with zeros up to a multiple of ``multiple``; returns (padded, original size)."""
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return x, n


def collate_rows(inputs: Sequence[np.ndarray], batch_size: int, multiple: int, fill: float = 0.0):
    """Windows of different lengths -> ``(f32[batch_size, n, ...] filled with ``fill`` past each, lengths
    i32[batch_size])``, ``n`` the longest rounded up to ``multiple`` (fewer shapes to compile); padding rows: 0."""
    n = max(len(x) for x in inputs)
    n += -n % multiple
    out = np.full((batch_size, n, *np.shape(inputs[0])[1:]), fill, np.float32)
    lengths = np.zeros(batch_size, np.int32)
    for i, x in enumerate(inputs):
        out[i, : len(x)], lengths[i] = x, len(x)
    return out, lengths


def local_rows(x: jax.Array, axis: int = 1) -> np.ndarray:
    """This process's rows (along the batch ``axis``) of a globally sharded array, in global order, on the host:
    gathered there from the process's shards, and not copied back to a device only to be copied out again."""
    starts, parts = set(), []
    for s in sorted(x.addressable_shards, key=lambda s: s.index[axis].start or 0):
        start = s.index[axis].start or 0
        if start not in starts:
            starts.add(start)
            parts.append(np.asarray(s.data))
    return np.concatenate(parts, axis=axis)


@dataclasses.dataclass(frozen=True)
class Signature:
    """How a family's encoder is called, for ``ShardedEncoder``.

    ``encode(model, *inputs, layers=, out_dtype=)`` runs the model (traced under ``jit``) and returns one array or a
    tuple of them. ``inputs``: per input, how an error message writes it (``"features f32[batch, frame, n_input]"``),
    its dtype and its rank; axis 0 is the batch. ``out_batch_axes``: per output, its batch axis (1 for ``f[layer,
    batch, ...]`` states); an int for a single output.
    """

    encode: Callable
    inputs: tuple[tuple[str, type, int], ...]
    out_batch_axes: int | tuple[int, ...] = 1


class ShardedEncoder:
    """A family's encoder on every device: ``__call__(*inputs)`` as ``signature.inputs`` lists them -> its outputs,
    this process's rows only, padding dropped.

    ``layers`` (default all, or what the family computes) and ``out_dtype`` (default the model's) are fixed per
    instance, so one compiled program serves every batch of the same shape.
    """

    def __init__(
        self,
        model: nnx.Module,
        signature: Signature,
        mesh: Mesh | None = None,
        layers: Sequence[int] | None = None,
        out_dtype=None,
    ):
        self.mesh = data_mesh() if mesh is None else mesh
        self.signature = signature
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self.out_dtype = out_dtype
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
        self._rows = NamedSharding(self.mesh, P(DATA))
        dtype = None if out_dtype is None else jnp.dtype(out_dtype)
        self._step = _sharded_step(graphdef, signature, self.layers, dtype, self.mesh)

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    @property
    def local_multiple(self) -> int:
        """Local batch sizes are padded to a multiple of this (the process's device count)."""
        return max(1, self.n_devices // jax.process_count())

    def __call__(self, *inputs):
        """This process's batch in, its rows out, padding rows dropped."""
        spec = self.signature.inputs
        arrays = [np.asarray(x, dtype) for x, (_, dtype, _) in zip(inputs, spec, strict=True)]
        ranks_ok = [a.ndim for a in arrays] == [ndim for _, _, ndim in spec]
        if not ranks_ok or len({len(a) for a in arrays}) > 1:
            wanted = " and ".join(name for name, _, _ in spec)
            got = " and ".join(str(a.shape) for a in arrays)
            raise ShapeError(f"expected {wanted} (one batch axis), got {got}")
        n = len(arrays[0])
        padded = [pad_to_multiple(a, self.local_multiple)[0] for a in arrays]
        if jax.process_count() == 1:
            batch = [jax.device_put(a, self._rows) for a in padded]
        else:  # as deliberate as the device_put above, but JAX counts its per-device puts as implicit copies
            with jax.transfer_guard_host_to_device("allow"):
                batch = [jax.make_array_from_process_local_data(self._rows, a) for a in padded]
        out = self._step(self._state, *batch)
        axes = self.signature.out_batch_axes
        single = isinstance(axes, int)
        outs, axes = ((out,), (axes,)) if single else (out, axes)
        if jax.process_count() > 1:
            outs = [local_rows(o, axis) for o, axis in zip(outs, axes, strict=True)]
        outs = tuple(_first_rows(o, axis, n) for o, axis in zip(outs, axes, strict=True))
        return outs[0] if single else outs


def _first_rows(x: jax.Array | np.ndarray, axis: int, n: int) -> jax.Array | np.ndarray:
    """The first ``n`` rows of ``x`` along ``axis`` (the batch's padding dropped): a host array sliced on the host, a
    device array by a compiled slice (an eager one sends its start indices to the device, which the encode job's
    transfer guard refuses)."""
    if x.shape[axis] == n:
        return x
    if isinstance(x, np.ndarray):
        return x[(slice(None),) * axis + (slice(0, n),)]
    return leading(x, (*x.shape[:axis], n))


@functools.lru_cache(maxsize=32)
def _sharded_step(graphdef, signature: Signature, layers, out_dtype, mesh):
    """One jitted step per (model structure, signature, layers, dtype, mesh): encoders built again reuse its
    compilations."""
    axes = signature.out_batch_axes
    out_spec = [NamedSharding(mesh, P(*([None] * axis), DATA)) for axis in ((axes,) if isinstance(axes, int) else axes)]
    return jax.jit(
        functools.partial(_encode_step, graphdef, signature.encode, layers=layers, out_dtype=out_dtype),
        in_shardings=(NamedSharding(mesh, P()), *[NamedSharding(mesh, P(DATA))] * len(signature.inputs)),
        out_shardings=out_spec[0] if isinstance(axes, int) else tuple(out_spec),
    )


def _encode_step(graphdef, encode, state, *inputs, layers, out_dtype):
    return encode(nnx.merge(graphdef, state), *inputs, layers=layers, out_dtype=out_dtype)


class StoredLayers:
    """A sharded encoder that computes every layer (``f[layer, batch, ...]``), cut to the stored ``layers``: the
    families whose model has no per-layer output switch (OWSM, w2v-BERT, FastConformer) compute them all anyway."""

    def __init__(self, sharded, layers: Sequence[int], n_layers_out: int):
        self.sharded, self.local_multiple = sharded, sharded.local_multiple
        layers = tuple(int(i) for i in layers)
        self.index = None if layers == tuple(range(n_layers_out)) else np.asarray(layers, np.int32)
        self._on_device = None if self.index is None else jax.device_put(self.index)  # put once, not per batch

    def __call__(self, *inputs):
        out = self.sharded(*inputs)
        if self.index is None:
            return out
        # A process's rows under jax.distributed come back on the host (local_rows); device rows are gathered by a
        # compiled take (an eager one sends a scalar to the device: the encode loop's transfer guard refuses it).
        return out[self.index] if isinstance(out, np.ndarray) else take_rows(out, self._on_device)
