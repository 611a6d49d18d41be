"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts.

Encodes ragged random batches with a small random w2v-BERT encoder sharded over all devices and on one device, and
prints, per batch size, the largest difference over valid frames and whether every output is finite, as JSON.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.common.parallel import ShardedEncoder, data_mesh
from engine.models.w2vbert.config import W2V_BERT, EncoderConfig
from engine.models.w2vbert.model import W2vBertEncoder, random_state_dict
from engine.models.w2vbert.parallel import SIGNATURE

expected_devices = int(sys.argv[1])
assert jax.device_count() == expected_devices, (jax.device_count(), expected_devices)
config = EncoderConfig(W2V_BERT, 2, 64, 4, 128, 160, 7, 16, 4, 1e-5, 1e-5)
model = W2vBertEncoder(config, random_state_dict(config, seed=1))
single = jax.jit(lambda f, v: model(f, v))
sharded = ShardedEncoder(model, SIGNATURE, data_mesh())
rng = np.random.default_rng(0)
report = {}
for batch in (3, expected_devices + 1):
    features = rng.standard_normal((batch, 40, 160)).astype(np.float32)
    valid = rng.integers(1, 41, batch).astype(np.int32)
    ours, ref = np.asarray(sharded(features, valid)), np.asarray(single(jnp.asarray(features), jnp.asarray(valid)))
    assert ours.shape == ref.shape == (3, batch, 40, 64), (ours.shape, ref.shape)
    err = max(float(np.abs(ours[:, i, :n] - ref[:, i, :n]).max()) for i, n in enumerate(valid))
    report[str(batch)] = {"err": err, "finite": bool(np.isfinite(ours).all())}
print(json.dumps(report))
