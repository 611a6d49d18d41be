"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts.

Encodes random windows with a small random Whisper sharded over meshes of 1, 2 and all N devices and on one device,
and prints the max abs difference per (mesh size, layers, batch size) as JSON. The meshes of 1 and 2 take the first
devices (``data_mesh(devices)``); the mesh of all N is the default (``data_mesh()``). ``ShardedEncoder`` reads only
its mesh (its size sets the padding), so a mesh of 2 of N fake devices runs what a process with 2 devices runs.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.common.parallel import ShardedEncoder, data_mesh
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.model import Whisper
from engine.models.whisper.parallel import SIGNATURE
from engine.models.whisper.random_weights import random_state_dict

expected_devices = int(sys.argv[1])
assert jax.device_count() == expected_devices, (jax.device_count(), expected_devices)
dims = ModelDimensions(80, 32, 64, 4, 2, 51865, 16, 64, 4, 1)
model = Whisper(dims, random_state_dict(dims, seed=1))
single = jax.jit(lambda m, layers: model.encoder(m, layers), static_argnums=1)  # one program per layers and batch
rng = np.random.default_rng(0)
report = {}
for n in sorted({1, 2, expected_devices}):
    mesh = data_mesh() if n == expected_devices else data_mesh(jax.devices()[:n])
    assert mesh.size == n
    for layers in (None, (2, 0)):
        enc = ShardedEncoder(model, SIGNATURE, mesh, layers=layers)
        # Batches below, at and above the mesh size, the first and last not a multiple of it (1, n + 3) but for n = 1.
        # Batch 3 (until 2026-11-28) ran the paths of 1 on 8 devices (both padded to 8) and of n + 3 on 2 (one row of
        # padding), compiled again.
        for batch in sorted({1, n, n + 3}):
            mel = rng.standard_normal((batch, 80, 64)).astype(np.float32)
            sharded = np.asarray(enc(mel))
            ref = np.asarray(single(jnp.asarray(mel), layers))
            assert sharded.shape == ref.shape, (sharded.shape, ref.shape)
            report[f"{n}-{layers}-{batch}"] = float(np.abs(sharded - ref).max())
print(json.dumps(report))
