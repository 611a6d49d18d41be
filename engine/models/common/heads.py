"""Every family's encoder as a function of a head mask, for the heads job (``engine.pipelines.heads``).

``HeadMasked(model, call, blocks, heads, layers)``: ``call(model, *batch, layers=, head_mask=)`` is the family's own
forward pass (its ``model.py``, where ``head_mask`` scales each head's attention output before the output projection:
``engine.models.common.attention.scale_heads``) returning ``f[len(layers), batch, frame, embed]``. The object gives

- ``__call__(batch, head_mask)``: one jitted pass with a mask per row, ``head_mask: f32[batch, blocks, heads]``, so
  that one batch runs several ablations (the rows of a batch are a product of windows and masks: the heads job);
- ``function()``: the same pass as a pure function ``(params, head_mask, *batch) -> states`` with the parameters as
  an argument, to differentiate (gradient importance: the derivative of a loss with respect to the mask at 1).

Nothing else changes: states are float32, and the valid frames of each row are the family's (``Encoder.windows``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError


@dataclasses.dataclass(frozen=True, eq=False)
class HeadMasked:
    """A loaded encoder's forward pass with a head mask (module docstring)."""

    model: nnx.Module
    call: Callable
    blocks: int  # L: encoder blocks with self-attention
    heads: int  # attention heads of every block
    layers: tuple[int, ...]  # the stored layers returned, in this order

    @functools.cached_property
    def _split(self):
        return nnx.split(self.model)

    @property
    def params(self):
        """The model's state, the first argument of ``function()``."""
        return self._split[1]

    def function(self) -> Callable:
        """``(params, head_mask f[blocks, heads] or f[batch, blocks, heads], *batch) -> f32[len(layers), batch,
        frame, embed]``: pure, to ``jax.jit`` or ``jax.grad``."""
        graphdef = self._split[0]
        call, layers = self.call, self.layers

        def masked(params, head_mask, *batch):
            return call(nnx.merge(graphdef, params), *batch, layers=layers, head_mask=head_mask)

        return masked

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.function())

    def __call__(self, batch: Sequence[np.ndarray], head_mask: np.ndarray) -> np.ndarray:
        """``f32[len(layers), batch, frame, embed]`` of a collated ``batch`` with ``head_mask f32[batch, blocks,
        heads]`` (or one ``f32[blocks, heads]`` for every row)."""
        mask = np.asarray(head_mask, np.float32)
        want = (self.blocks, self.heads)
        if mask.shape[-2:] != want or mask.ndim not in (2, 3) or (mask.ndim == 3 and len(mask) != len(batch[0])):
            raise ShapeError(
                f"head_mask must be f32[{len(batch[0])}, {want[0]}, {want[1]}] (a mask per row) or f32{list(want)}, "
                f"got {mask.shape}"
            )
        return np.asarray(self._jitted(self.params, jnp.asarray(mask), *(jnp.asarray(x) for x in batch)))


def cut_layers(states, layers: Sequence[int]):
    """``states[layers]`` of a family that computes every layer (``f[layer, ...]``), the stored ``layers`` only."""
    return states[jnp.asarray(tuple(layers))]
