"""The OWSM encoder on every device: its call for ``engine.models.common.parallel.ShardedEncoder``."""

from __future__ import annotations

import numpy as np

from engine.models.common.parallel import Signature


def _encode(model, features, *, layers, out_dtype):
    del layers  # every layer: the family adapter cuts the stored ones (it computes them all anyway)
    return model(features, out_dtype)


# ``ShardedEncoder(owsm, SIGNATURE, mesh, out_dtype=)(features) -> f[L+2, batch, frame, embed]``; padding rows are
# all-zero windows.
SIGNATURE = Signature(_encode, (("features f32[batch, feature_frame, n_mels]", np.float32, 3),))
