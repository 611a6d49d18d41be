"""What each encoder self-attention head attends to, summarised per window: the heads job's attention statistics.

For one head of one block, with ``p[i, j]`` the attention weight of query frame ``i`` on key frame ``j`` (the
softmax the model computes, keys masked as the family masks them), each valid query frame ``i`` gives

- ``distance``: ``sum_j p[i, j] |i - j|``, the mean attention distance in frames (Voxtral, wav2vec2 and ViT papers'
  "mean attention distance");
- ``entropy``: ``-sum_j p[i, j] ln p[i, j]`` in nats (0: one key; ``ln(keys)``: uniform);
- ``local``: ``sum_{|i - j| <= k} p[i, j]``, the share of attention within ``k`` frames.

Each is averaged over the window's valid queries (``STATS`` names them in order). A family offers it with
``AttentionStats``: ``inputs(model, *batch)`` returns the input of every block ``f[L, batch, frame, embed]`` (its
stored layers 0..L-1, which are those inputs), and ``qk(model, block, x, keep)`` the block's scaled queries and keys
``f[batch, frame, heads, dh]`` and its key mask (``bool[batch, frame]``, or None where every key is attended, as in
Whisper's padded windows). One head of one window is scored at a time (``jax.lax.map``), so that only one ``frame x
frame`` block of weights is held.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.models.common.layers import head_major

STATS = ("distance", "entropy", "local")


def head_stats(q, k, query_valid, key_valid, local: int):
    """``f32[batch, heads, 3]``: ``STATS`` of every head of every row over its valid queries (module docstring).
    ``q, k: f[batch, frame, heads, dh]`` (q scaled), ``query_valid: bool[batch, frame]``, ``key_valid`` likewise or
    None."""
    b, t, h, dh = q.shape
    tk = k.shape[1]
    offset = jnp.abs(jnp.arange(t)[:, None] - jnp.arange(tk)[None, :]).astype(jnp.float32)
    near = (offset <= local).astype(jnp.float32)
    qs, ks = head_major(q).reshape(b * h, t, dh), head_major(k).reshape(b * h, tk, dh)
    qv = jnp.repeat(query_valid, h, axis=0).astype(jnp.float32)
    kv = jnp.ones((b * h, tk), bool) if key_valid is None else jnp.repeat(key_valid, h, axis=0)

    def one(args):
        qi, ki, qvalid, kvalid = args
        logits = jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32)
        logits = jnp.where(kvalid[None, :], logits, jnp.finfo(jnp.float32).min)
        logp = jax.nn.log_softmax(logits, axis=-1)
        p = jnp.exp(logp)
        per_query = jnp.stack(
            [jnp.sum(p * offset, -1), -jnp.sum(jnp.where(p > 0, p * logp, 0), -1), jnp.sum(p * near, -1)], -1
        )
        return jnp.sum(per_query * qvalid[:, None], 0) / jnp.maximum(jnp.sum(qvalid), 1)

    return jax.lax.map(one, (qs, ks, qv, kv)).reshape(b, h, len(STATS))


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionStats:
    """A family's attention statistics (module docstring): ``__call__(batch, frames, local) -> f32[batch, blocks,
    heads, 3]``, ``frames``: each row's valid encoder frames."""

    model: nnx.Module
    inputs: Callable  # (model, *batch) -> f[L, batch, frame, embed]: the input of every block
    qk: Callable  # (model, block 1..L, x, keep) -> (q, k, key_valid or None)
    blocks: int
    heads: int

    @functools.cached_property
    def _split(self):
        return nnx.split(self.model)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one object per loaded model, a few values of local)
    def _jitted(self, local: int):
        graphdef = self._split[0]

        def run(params, frames, *batch):
            model = nnx.merge(graphdef, params)
            x = self.inputs(model, *batch)
            keep = jnp.arange(x.shape[2])[None, :] < frames[:, None]
            out = []
            for block in range(1, self.blocks + 1):
                q, k, key_valid = self.qk(model, block, x[block - 1], keep)
                out.append(head_stats(q, k, keep, key_valid, local))
            return jnp.stack(out, axis=1)

        return jax.jit(run)

    def __call__(self, batch, frames: np.ndarray, local: int) -> np.ndarray:
        frames = jnp.asarray(np.asarray(frames, np.int32))
        out = self._jitted(int(local))(self._split[1], frames, *(jnp.asarray(x) for x in batch))
        return np.asarray(out)
