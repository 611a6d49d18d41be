"""Encoder self-attention over whole windows, shared by the families that attend over 1500-frame windows.

``self_attention(q, k, v, key_valid)``: ``q, k, v: f[b, t, h, dh]`` (q already scaled), ``key_valid: bool[b, t]`` or
None -> ``f[b, t, h * dh]``. On CPU it runs one head of one window at a time (``jax.lax.map``), so that each
``t x t`` block of logits stays in cache; the batched form writes all ``b * h`` blocks before the softmax reads them
back and runs at memory speed (Whisper's ``MultiHeadAttention.attend_unmasked`` measured this first; see its
docstring and ``bench/whisper_encoder.py --attention``). The softmax's division comes after the product with the values.
Masked keys get float32's lowest value rather than -inf, so a window with no valid key (a padding row) gives finite
uniform weights instead of NaN. Accelerators use the batched form; on a GPU, half-precision attention without a
mask goes through ``jax.nn.dot_product_attention``'s cuDNN kernel instead (``fused_attention``; float32 keeps the
batched form, whose products the parity tests hold to float32 tolerances).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.errors import ShapeError
from engine.models.common.layers import head_major

# On a GPU, bf16/fp16 attention without a mask goes through cuDNN's fused kernel: large-v3's encoder returning every
# layer, 16 windows a call, took 87.5 ms with it against 184.2 ms with the batched einsum form on an H100, and 86.8
# against 165.0 on an H200 (bench/gpu.py's encoder section, one run each, 2026-11-28; bench/RESULTS.md). The last
# layer differs by 3.2e-2 of its peak between the two bf16 forms after 32 random blocks. The first lease's opposite
# reading (193 against 163 ms, 2026-11-26) did not reproduce on either device. False turns it off.
GPU_FUSED_ATTENTION = True


def fused_attention(q, k, v, scale: float):
    """``f[b, t, h * dh]`` from cuDNN's fused attention (``jax.nn.dot_product_attention``, flash-style: the logits
    never reach memory) on a GPU, for ``q, k, v: f[b, t, h, dh]`` in bf16 or fp16; None where it does not apply (any
    other backend or dtype, ``GPU_FUSED_ATTENTION`` off, a shape or cuDNN version it refuses while tracing), and the
    caller computes the attention itself."""
    if not GPU_FUSED_ATTENTION or jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16):
        return None
    try:
        out = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError, TypeError):  # cuDNN absent, too old, or the shape refused
        return None
    b, t, h, dh = out.shape
    return out.reshape(b, t, h * dh)


def _batched(q, k, v, key_valid):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if key_valid is not None:
        logits = jnp.where(key_valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    b, t, h, dh = out.shape
    return out.reshape(b, t, h * dh)


def self_attention(q, k, v, key_valid=None):
    """The module docstring's attention: ``f[b, t, h * dh]``."""
    if jax.default_backend() != "cpu":
        fused = None if key_valid is not None else fused_attention(q, k, v, 1.0)
        return _batched(q, k, v, key_valid) if fused is None else fused
    b, tq, h, dh = q.shape
    tk = k.shape[1]

    def heads(x, t):  # f[b, t, h, dh] -> f[b*h, t, dh]
        return head_major(x).reshape(b * h, t, dh)

    def one(args):
        qi, ki, vi, *valid = args  # one head of one window: f[t, dh], and bool[tk] where keys are masked
        logits = jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32)
        if valid:
            logits = jnp.where(valid[0][None, :], logits, jnp.finfo(jnp.float32).min)
        e = jnp.exp(logits - logits.max(-1, keepdims=True))
        out = jnp.einsum("qk,kd->qd", e.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
        return (out / e.sum(-1, keepdims=True)).astype(vi.dtype)

    args = (heads(q, tq), heads(k, tk), heads(v, tk))
    if key_valid is not None:
        args += (jnp.repeat(key_valid, h, axis=0),)
    out = jax.lax.map(one, args)
    return head_major(out.reshape(b, h, tq, dh)).reshape(b, tq, h * dh)


def scale_heads(out, scale, n_head: int):
    """``out: f[b, t, h * dh]`` (the heads' concatenated outputs, before the output projection) with head ``i``'s slice
    multiplied by ``scale[..., i]``: ``scale: f[h]`` (every row alike) or ``f[b, h]`` (a mask per row, so that one
    batch runs several ablations). 0 ablates a head, 1 keeps it: transformers' ``head_mask`` before v5, which scaled
    the attention weights of each head, the same thing, since a head's output is its weights times its values."""
    b, t, d = out.shape
    s = jnp.asarray(scale).astype(out.dtype)
    s = s[None, None, :, None] if s.ndim == 1 else s[:, None, :, None]
    return (out.reshape(b, t, n_head, d // n_head) * s).reshape(b, t, d)


def check_features(features, valid, width: int, made_by: str) -> None:
    """ShapeError unless ``features`` is ``f32[batch, frame, width]`` (as ``made_by`` makes them) with ``valid``
    ``i32[batch]`` beside it: a masked encoder's input."""
    if features.ndim != 3 or features.shape[-1] != width:
        raise ShapeError(f"features must be f32[batch, frame, {width}] ({made_by}), got {tuple(features.shape)}")
    if valid.shape != features.shape[:1]:
        raise ShapeError(f"valid must be i32[batch] = i32[{features.shape[0]}], got {tuple(valid.shape)}")


def check_head_mask(head_mask, n_layers: int, n_head: int, batch: int | None = None):
    """``head_mask`` as an array once its shape fits an encoder of ``n_layers`` blocks of ``n_head`` heads: ``f[L, H]``,
    or ``f[batch, L, H]`` (a mask per row of a batch of ``batch``); ``ShapeError`` naming the shape otherwise."""
    mask = jnp.asarray(head_mask)
    want = f"f[{n_layers}, {n_head}] or f[batch, {n_layers}, {n_head}] (encoder blocks x heads)"
    if mask.ndim not in (2, 3) or tuple(mask.shape[-2:]) != (n_layers, n_head):
        raise ShapeError(f"head_mask must be {want}, got shape {tuple(mask.shape)}")
    if mask.ndim == 3 and batch is not None and mask.shape[0] != batch:
        raise ShapeError(f"head_mask has {mask.shape[0]} rows for a batch of {batch}: give one mask, or one per row")
    return mask
