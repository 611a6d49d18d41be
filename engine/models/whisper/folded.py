"""Two pieces of the Whisper decoder that exist for the fine-tuning step's speed (bench/RESULTS.md, "finetune"):
cross-attention with its key and value projections folded into the queries, and a gradient barrier between blocks.
Neither changes a forward value beyond rounding; decoding does not use the folded form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def gradient_barrier(x):
    """The identity; its gradient is materialised (``optimization_barrier``) instead of fused onward.

    Without it, XLA on CPU fused the decoder's residual-stream gradient, layer norms' included, across blocks into
    loop fusions of 100+ operands that recompute the later blocks' part for every earlier one.
    """
    return x


gradient_barrier.defvjp(lambda x: (x, None), lambda _, g: (jax.lax.optimization_barrier(g),))


def attend_folded(attention, q, xa):
    """``attention`` (a ``MultiHeadAttention``) as cross-attention from the audio features themselves:
    ``q: f[b, tq, h, dh]``, ``xa: f[b, frame, embed]`` -> ``f[b, tq, h*dh]``, no mask, equal to ``attend`` on
    ``key(xa)`` and ``value(xa)`` up to rounding.

    The key and value projections are folded into the queries and the weighted sums: ``q k^T = (q Wk^T) xa^T``
    and ``p (xa Wv + bv) = (p xa) Wv + bv`` (softmax rows sum to 1). Per utterance that is two products of
    ``f[h*tq, embed]`` with ``xa``, against two of ``f[frame, embed] @ f[embed, embed]`` and ``b*h`` small
    per-head products unfolded: the same FLOPs when ``h * tq == embed``, fewer below it. In training the
    weights' gradients then come from ``f[tq, embed]`` products, not from ``xa^T @ f[frame, embed]``.
    """
    b, tq, h, dh = q.shape
    d = xa.shape[-1]
    dtype = attention.key.kernel.dtype
    wk = attention.key.kernel[...].reshape(d, h, dh)
    wv = attention.value.kernel[...].reshape(d, h, dh)
    qk = jnp.einsum("bqhe,dhe->bhqd", q * jnp.asarray(dh**-0.5, q.dtype), wk)  # f[b, h, tq, embed]
    xa = xa.astype(dtype)
    logits = jnp.einsum("bhqd,bkd->bhqk", qk, xa, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    px = jnp.einsum("bhqk,bkd->bhqd", weights.astype(dtype), xa)
    out = jnp.einsum("bhqd,dhe->bqhe", px, wv).reshape(b, tq, h * dh)
    return out + attention.value.bias[...]
