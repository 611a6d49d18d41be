"""Every family's encoder as a function of a head mask, for the heads job (``engine.pipelines.heads``).

``HeadMasked(model, call, blocks, heads, layers)``: ``call(model, *batch, layers=, head_mask=)`` is the family's own
forward pass (its ``model.py``, where ``head_mask`` scales each head's attention output before the output projection:
``engine.models.common.attention.scale_heads``) returning ``f[len(layers), batch, frame, embed]``. The object gives

- ``__call__(batch, head_mask)``: one jitted pass with a mask per row, ``head_mask: f32[batch, blocks, heads]``, so
  that one batch runs several ablations (the rows of a batch are a product of windows and masks: the heads job);
- ``function()``: the same pass as a pure function ``(params, head_mask, *batch) -> states`` with the parameters as
  an argument, to differentiate (gradient importance: the derivative of a loss with respect to the mask at 1);
- ``resumed(first, x, batch, head_mask)``: where the family offers ``resume`` (Whisper, the wav2vec2 family), the
  pass from block ``first`` on, ``x`` the input of that block (layer ``first - 1``'s states): masks that ablate
  heads of block ``first`` or later leave the blocks before it as they are, so that a batch of such masks shares
  them (``with_layers(...)`` computes them once, unmasked). A family without it runs every mask from the input.

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
from engine.models.common.trainable import SplitModule


@dataclasses.dataclass(frozen=True, eq=False)
class HeadMasked(SplitModule):
    """A loaded encoder's forward pass with a head mask (module docstring)."""

    model: nnx.Module
    call: Callable
    blocks: int  # L: encoder blocks with self-attention
    heads: int  # attention heads of every block
    layers: tuple[int, ...]  # the stored layers returned, in this order
    # (model, x, *batch, first=, layers=, head_mask=) -> f32[len(layers), batch, frame, embed], layers >= first
    resume: Callable | None = None

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

    def with_layers(self, layers: Sequence[int]) -> HeadMasked:
        """The same encoder returning other layers (one object, and so one compilation, per set of layers)."""
        layers = tuple(int(i) for i in layers)
        if layers == self.layers:
            return self
        made = self.__dict__.setdefault("_others", {})
        if layers not in made:
            made[layers] = dataclasses.replace(self, layers=layers)
        return made[layers]

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one object per loaded model, a few blocks)
    def _resumed(self, first: int):
        graphdef = self._split[0]
        call, layers = self.resume, tuple(la for la in self.layers if la >= first)

        def run(params, x, head_mask, *batch):
            return call(nnx.merge(graphdef, params), x, *batch, first=first, layers=layers, head_mask=head_mask)

        return jax.jit(run)

    def resumed(self, first: int, x: np.ndarray, batch: Sequence[np.ndarray], head_mask: np.ndarray) -> np.ndarray:
        """``f32[n, batch, frame, embed]``: the layers of ``self.layers`` from block ``first`` on (n of them), given
        ``x`` the input of block ``first`` for every row; ``head_mask f32[batch, blocks, heads]``."""
        if self.resume is None:
            raise ValueError("this family's encoder does not resume from a block: run the whole pass")
        step = self._resumed(int(first))
        return np.asarray(step(self.params, jnp.asarray(x), jnp.asarray(head_mask, jnp.float32),
                               *(jnp.asarray(b) for b in batch)))  # fmt: skip


def cut_layers(states, layers: Sequence[int]):
    """``states[layers]`` of a family that computes every layer (``f[layer, ...]``), the stored ``layers`` only."""
    return states[jnp.asarray(tuple(layers))]
