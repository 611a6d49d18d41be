"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts.

Encodes random windows with a small random Whisper sharded over all devices and on one device,
and prints the max abs difference per batch size as JSON.
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
rng = np.random.default_rng(0)
report = {}
for layers in (None, (2, 0)):
    enc = ShardedEncoder(model, SIGNATURE, data_mesh(), layers=layers)
    for batch in (1, 3, expected_devices, expected_devices + 3):
        mel = rng.standard_normal((batch, 80, 64)).astype(np.float32)
        sharded = np.asarray(enc(mel))
        single = np.asarray(jax.jit(lambda m, lay=layers: model.encoder(m, lay))(jnp.asarray(mel)))
        assert sharded.shape == single.shape, (sharded.shape, single.shape)
        report[f"{layers}-{batch}"] = float(np.abs(sharded - single).max())
print(json.dumps(report))
