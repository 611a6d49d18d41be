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

**Attention sinks** (``AttentionStats.measure``): the attention each key frame ``j`` receives, ``r_j = mean_i p[i,
j]`` over the window's valid queries (the ``r_j`` sum to 1 over the attended keys), and of it

- ``top_share``: the ``k`` largest ``r_j`` in descending order (their sum: the share of the window's attention that
  its ``k`` most-attended frames receive; a uniform head gives ``k / keys``), and ``top_frame`` their frames (ties:
  the earlier frame first);
- ``first_share``: ``r_0 + ... + r_{k-1}``, the share the window's first ``k`` frames receive (equal to the top
  ``k``'s sum where the first frames are the sinks).

Each for every head, and for the block as a whole: the heads' ``r`` averaged (the frames the block's heads attend to
together), at head index ``heads``.
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
from engine.models.common.trainable import SplitModule

STATS = ("distance", "entropy", "local")
SINKS = ("top_share", "top_frame", "first_share")


def head_stats(q, k, query_valid, key_valid, local: int):
    """``(f32[batch, heads, 3], f32[batch, heads, key])``: ``STATS`` of every head of every row over its valid
    queries, and the attention each key receives, averaged over them (module docstring). ``q, k: f[batch, frame,
    heads, dh]`` (q scaled), ``query_valid: bool[batch, frame]``, ``key_valid`` likewise or None."""
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
        queries = jnp.maximum(jnp.sum(qvalid), 1)
        return jnp.sum(per_query * qvalid[:, None], 0) / queries, jnp.sum(p * qvalid[:, None], 0) / queries

    stats, received = jax.lax.map(one, (qs, ks, qv, kv))
    return stats.reshape(b, h, len(STATS)), received.reshape(b, h, tk)


def sinks(received, key_valid, k: int) -> dict:
    """The sink arrays of ``received: f32[batch, heads, key]`` (``head_stats``'s; module docstring), the block's
    heads averaged appended as head ``heads``: ``top_share f32[batch, heads + 1, k]``, ``top_frame i32[...]`` (-1: no
    attended key left, a window of fewer than ``k`` keys), ``first_share f32[batch, heads + 1]``. ``key_valid:
    bool[batch, key]`` or None (every key attended)."""
    b, _, tk = received.shape
    r = jnp.concatenate([received, jnp.mean(received, axis=1, keepdims=True)], axis=1)
    kk = min(k, tk)
    share, frame = jax.lax.top_k(r, kk)  # ties: the lower index first
    attended = jnp.ones((b, tk), bool) if key_valid is None else key_valid
    frame = jnp.where(jnp.take_along_axis(attended[:, None, :], frame, axis=2), frame, -1)
    share = jnp.where(frame >= 0, share, 0.0)
    pad = ((0, 0), (0, 0), (0, k - kk))
    return {
        "top_share": jnp.pad(share, pad),
        "top_frame": jnp.pad(frame.astype(jnp.int32), pad, constant_values=-1),
        "first_share": jnp.sum(r[..., :kk], axis=-1),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionStats(SplitModule):
    """A family's attention statistics (module docstring): ``__call__(batch, frames, local) -> f32[batch, blocks,
    heads, 3]``, ``frames``: each row's valid encoder frames; ``measure(batch, frames, local, k)`` adds the sinks."""

    model: nnx.Module
    inputs: Callable  # (model, *batch) -> f[L, batch, frame, embed]: the input of every block
    qk: Callable  # (model, block 1..L, x, keep) -> (q, k, key_valid or None)
    blocks: int
    heads: int

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one object per loaded model, a few values of local and k)
    def _jitted(self, local: int, k: int):
        graphdef = self._split[0]

        def run(params, frames, *batch):
            model = nnx.merge(graphdef, params)
            x = self.inputs(model, *batch)
            keep = jnp.arange(x.shape[2])[None, :] < frames[:, None]
            stats, sink = [], []
            for block in range(1, self.blocks + 1):
                q, k_, key_valid = self.qk(model, block, x[block - 1], keep)
                got, received = head_stats(q, k_, keep, key_valid, local)
                stats.append(got)
                sink.append(sinks(received, key_valid, k))
            keys = jnp.full(frames.shape, k_.shape[1], jnp.int32) if key_valid is None else jnp.sum(key_valid, 1)
            out = {name: jnp.stack([s[name] for s in sink], axis=1) for name in SINKS}
            return out | {"stats": jnp.stack(stats, axis=1), "keys": keys.astype(jnp.int32)}

        return jax.jit(run)

    def measure(self, batch, frames: np.ndarray, local: int, k: int) -> dict[str, np.ndarray]:
        """Every row's statistics and sinks (module docstring): ``stats f32[batch, blocks, heads, 3]``; ``top_share
        f32[batch, blocks, heads + 1, k]``, ``top_frame i32[...]``, ``first_share f32[batch, blocks, heads + 1]`` (head
        ``heads``: the block's heads averaged); ``keys i32[batch]``, the keys each row attends. ``frames``: each row's
        valid encoder frames."""
        if k < 1:
            raise ValueError(f"attention sinks: k (the top frames) must be at least 1, got {k}")
        frames = jnp.asarray(np.asarray(frames, np.int32))
        out = self._jitted(int(local), int(k))(self._split[1], frames, *(jnp.asarray(x) for x in batch))
        return {name: np.asarray(value) for name, value in out.items()}

    def __call__(self, batch, frames: np.ndarray, local: int) -> np.ndarray:
        return self.measure(batch, frames, local, 1)["stats"]
