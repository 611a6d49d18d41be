"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts.

Encodes batches of 3 and N+1 random feature windows with a small random OWSM encoder through the family adapter's
sharded callable (every device, layers (0, 2, 3) of 4) and on one device, and prints, per batch size, the largest
difference over the peak and whether every output is finite, as JSON.
"""

import json
import sys

import jax
import numpy as np

from engine.models.common.parallel import data_mesh
from engine.models.interface import OWSM_LAYERS
from engine.models.owsm.checkpoints import Checkpoint
from engine.models.owsm.config import FrontendConfig, OwsmConfig
from engine.models.owsm.decoder import OwsmDecoder, decoder_shapes
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.features import Stats
from engine.models.owsm.loaded import LoadedOwsm
from engine.models.owsm.model import OwsmEncoder as Model
from engine.models.owsm.model import encoder_shapes

expected_devices = int(sys.argv[1])
assert jax.device_count() == expected_devices, (jax.device_count(), expected_devices)
frontend = FrontendConfig(512, 400, 160, 80, 0.0, 8000.0, False, 2.0)  # a 2 s window: 201 feature frames
tokens = ("<blank>", "<unk>", "<na>", "<nospeech>", "<eng>", "<asr>", "<notimestamps>", "a", "<sos>", "<eos>")
config = OwsmConfig(frontend, 32, 2, 4, 64, 64, 7, 7, 1, 4, 64, tokens)
rng = np.random.default_rng(1)
sd = {
    k: (0.1 * rng.standard_normal(s)).astype(np.float32)
    for k, s in (encoder_shapes(config) | decoder_shapes(config)).items()
}
stats = Stats(np.zeros(80), np.ones(80))
ckpt = Checkpoint("random", config, stats, {}, "0" * 64, None, None)
adapter = OwsmEncoder(LoadedOwsm(Model(config, sd), OwsmDecoder(config, sd), ckpt))
assert adapter.layer_meaning == OWSM_LAYERS and adapter.n_layers_out == 4
layers = (0, 2, 3)
sharded = adapter.sharded(data_mesh(), layers, np.float32)
assert sharded.local_multiple == expected_devices
report = {}
for batch in (3, expected_devices + 1):
    windows = [rng.standard_normal((frontend.n_frames, 80)).astype(np.float32) for _ in range(batch)]
    (features,) = adapter.collate(windows, batch)
    ours = np.asarray(sharded(features))
    ref = np.asarray(adapter.loaded.encode(features))[list(layers)]
    assert ours.shape == ref.shape == (3, batch, config.n_frames, 32), (ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    report[str(batch)] = {"err": err, "finite": bool(np.isfinite(ours).all())}
print(json.dumps(report))
