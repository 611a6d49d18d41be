"""The part of an ``engine.models.interface.Encoder`` that w2v-BERT's and FastConformer's write the same way: a model
that takes each window's own features, ``(features f32[batch, frame, bins], valid i32[batch])``, a batch padded with
zero frames to whole seconds (``PAD_FRAMES``) and the padding masked by the model itself.

``MaskedEncoder`` gives babelgrid's 30 s windows, each costing its own length (``window_samples``,
``pads_windows``), the batch (``collate``), the head-masked encoder (``head_masked``: the model called with its
own ``head_mask``), the sharded encoder and no language token; the family gives its front end (``features``,
``windows``, ``expected_frames``), its ``cost`` and its fields. Its loaded model has ``model``, ``sharded(mesh,
out_dtype)`` and ``config.n_layer``, ``config.n_head``, besides what ``LoadedEncoder`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.models.common.heads import HeadMasked, cut_layers
from engine.models.common.parallel import StoredLayers, collate_rows
from engine.models.interface import WINDOW_SECONDS, LoadedEncoder


def _masked(model, features, valid, *, layers, head_mask):
    return cut_layers(model(features, valid, jnp.float32, head_mask), layers)


class MaskedEncoder(LoadedEncoder):
    """The shared members (module docstring) of a frozen dataclass encoder with a ``loaded`` field."""

    PAD_FRAMES: ClassVar[int]  # a batch is padded to a multiple of this many of its input frames (1 s)
    window_samples = WINDOW_SECONDS * SAMPLE_RATE
    pads_windows = False  # a window costs its own length (``cost``); a batch pads to whole seconds, masked
    ffn_counts = None  # the neurons job's feed-forward counts: not offered yet
    ffn_scaled_sums = None
    attention_stats = None  # the heads job's attention statistics: not offered yet (Whisper and wav2vec2 do)
    value_zeroing = None  # blocks re-run with value vectors zeroed: not offered yet (Whisper and wav2vec2 do)

    def collate(self, inputs: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(features f32[batch_size, frame, bins], valid i32[batch_size])``; padding rows: valid 0."""
        return collate_rows(inputs, batch_size, self.PAD_FRAMES)

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(features, valid)`` batches."""
        c = self.loaded.config
        return HeadMasked(self.loaded.model, _masked, c.n_layer, c.n_head, tuple(layers))

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        return StoredLayers(self.loaded.sharded(mesh, out_dtype), layers, self.n_layers_out)

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """None: the encoder has no language tokens (a decoder beside it, Canary's, is not read by encode)."""
        del langs
        return []
