"""The w2v-BERT encoder on every device: its call for ``engine.models.common.parallel.ShardedEncoder``."""

from __future__ import annotations

import numpy as np

from engine.models.common.parallel import Signature


def _encode(model, features, valid, *, layers, out_dtype):
    del layers  # every layer: the family adapter cuts the stored ones (it computes them all anyway)
    return model(features, valid, out_dtype)


# ``ShardedEncoder(w2vbert, SIGNATURE, mesh, out_dtype=)(features, valid) -> f[L+1, batch, frame, embed]``; padding
# rows are empty utterances (``valid = 0``, every key masked: finite).
SIGNATURE = Signature(
    _encode, (("features f32[batch, frame, n_input]", np.float32, 3), ("valid i32[batch]", np.int32, 1))
)
