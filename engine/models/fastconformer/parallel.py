"""The FastConformer encoder on every device: its call for ``engine.models.common.parallel.ShardedEncoder``."""

from __future__ import annotations

import numpy as np

from engine.models.common.parallel import Signature


def _encode(model, features, valid, *, layers, out_dtype):
    del layers  # every layer: the family adapter cuts the stored ones (it computes them all anyway)
    return model(features, valid, out_dtype)


# ``ShardedEncoder(fastconformer, SIGNATURE, mesh, out_dtype=)(features, valid) -> f[L+1, batch, frame, embed]``;
# padding rows are empty windows (``valid = 0``, every key masked: finite).
SIGNATURE = Signature(
    _encode, (("features f32[batch, feature_frame, n_mels]", np.float32, 3), ("valid i32[batch]", np.int32, 1))
)
