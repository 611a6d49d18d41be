"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts.

argv: model folder, N. Encodes ragged batches of 3 and N + 1 random utterances (sizes that are and are not
multiples of N) with the sharded encoder (``engine.models.common.parallel.ShardedEncoder``) over the N fake CPU
devices and with the single-device ``encode``, and prints one JSON line: {"<batch>": max |difference| / peak} per
batch, plus the device count seen.
"""

import json
import sys

import jax
import numpy as np

from engine.models.common.parallel import ShardedEncoder
from engine.models.wav2vec2.loaded import load_wav2vec2
from engine.models.wav2vec2.parallel import SIGNATURE

folder, n_devices = sys.argv[1], int(sys.argv[2])
assert jax.device_count() == n_devices, (jax.device_count(), n_devices)
model = load_wav2vec2(folder)
sharded = ShardedEncoder(model.model, SIGNATURE)
rng = np.random.default_rng(0)
report = {"devices": jax.device_count()}
for batch in (3, n_devices + 1):
    waves = [rng.standard_normal(int(rng.integers(2000, 8000))).astype(np.float32) for _ in range(batch)]
    wave, lengths = model.features(waves, pad_multiple=8000)
    states, frames = sharded(wave, lengths)
    single, single_frames = model.encode(wave, lengths)
    assert np.array_equal(np.asarray(frames), np.asarray(single_frames))
    states, single = np.asarray(states), np.asarray(single)
    assert states.shape == single.shape, (states.shape, single.shape)
    report[str(batch)] = float(np.abs(states - single).max() / np.abs(single).max())
print(json.dumps(report))
