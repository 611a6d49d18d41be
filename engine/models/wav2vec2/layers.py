"""The wav2vec2 family's own building blocks in Flax NNX: activations and masked attention (linear, layer norm and
conv are every family's, in ``engine.models.common.layers``).

Arrays are channels-last: ``x: f[batch, frame, channel]``. Softmaxes run in float32 whatever the weight dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.models.common.layers import head_major

# A masked attention logit. Finite, unlike -inf, so that a row with no valid key (the silent rows that pad a batch to
# the device count) gives a uniform softmax instead of NaN; exp(MASKED - max) is exactly 0 next to any valid key.
MASKED = -1e30
# Encoder self-attention on CPU one head of one utterance at a time (see attend); read at trace time.
CPU_BLOCKED_ATTENTION = True


def activation(name: str):
    """transformers' ``ACT2FN[name]`` as a JAX function (names checked by ``config.Wav2Vec2Dims``)."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)  # torch.nn.GELU(): the exact erf form
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name in ("silu", "swish"):
        return jax.nn.silu
    raise ValueError(f"activation {name!r} is not implemented")


def attend(q, k, v, key_valid):
    """Scaled dot-product attention with masked keys: ``q/k/v: f[b, t, h, dh]``, ``key_valid: bool[b, t]`` ->
    ``f[b, t, h * dh]``.

    ``q`` must already carry the ``dh**-0.5`` scale: exact for the head width 64 of base and large models; for XLS-R
    1B/2B (80, 120) the scaled query rounds once more than transformers' scaled logits, within float32 rounding.

    On CPU one head of one utterance at a time (``jax.lax.map``): the batched form writes every ``b * h`` logit matrix
    before the softmax reads it back and runs at memory speed, while one ``t x t`` block stays in cache (Whisper's
    encoder measured the same, see ``engine.models.whisper.model.MultiHeadAttention.attend_unmasked``). The softmax's
    division comes after the product with the values (``t x dh`` divisions instead of ``t x t``). Accelerators take
    the batched form.
    """
    b, t, h, dh = q.shape
    bias = jnp.where(key_valid, 0.0, MASKED).astype(jnp.float32)  # f32[b, t]
    if jax.default_backend() != "cpu" or not CPU_BLOCKED_ATTENTION:
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias[:, None, None, :]
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        return out.reshape(b, t, h * dh)

    def heads(x):  # f[b, t, h, dh] -> f[b*h, t, dh]
        return head_major(x).reshape(b * h, t, dh)

    def one(args):
        qi, ki, vi, bi = args  # f[t, dh] x 3, f32[t]: one head of one utterance
        logits = jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32) + bi[None, :]
        e = jnp.exp(logits - logits.max(-1, keepdims=True))
        out = jnp.einsum("qk,kd->qd", e.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
        return (out / e.sum(-1, keepdims=True)).astype(vi.dtype)

    out = jax.lax.map(one, (heads(q), heads(k), heads(v), jnp.repeat(bias, h, axis=0)))
    return head_major(out.reshape(b, h, t, dh)).reshape(b, t, h * dh)
