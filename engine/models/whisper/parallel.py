"""Whisper's encoder on every device: its call for ``engine.models.common.parallel.ShardedEncoder``."""

from __future__ import annotations

import numpy as np

from engine.models.common.parallel import Signature


def _encode(model, mel, *, layers, out_dtype):
    return model.encoder(mel, layers, out_dtype)


# ``ShardedEncoder(whisper, SIGNATURE, mesh, layers, out_dtype)(mel) -> f[len(layers), batch, frame, embed]``; padding
# rows are silent windows.
SIGNATURE = Signature(_encode, (("mel f32[batch, n_mels, 2 * n_audio_ctx]", np.float32, 3),))
