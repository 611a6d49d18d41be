"""The wav2vec2 family's encoder on every device: its call for ``engine.models.common.parallel.ShardedEncoder``."""

from __future__ import annotations

import numpy as np

from engine.models.common.parallel import Signature


def _encode(model, wave, lengths, *, layers, out_dtype):
    return model(wave, lengths, layers, out_dtype)


# ``ShardedEncoder(wav2vec2, SIGNATURE, mesh, layers, out_dtype)(wave, lengths) -> (states f[len(layers), batch, frame,
# embed], frames i32[batch])``; padding rows have length 0 (no frame, no NaN).
SIGNATURE = Signature(
    _encode, (("wave f32[batch, samples]", np.float32, 2), ("lengths i32[batch]", np.int32, 1)), out_batch_axes=(1, 0)
)
