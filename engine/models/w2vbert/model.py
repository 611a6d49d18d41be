"""Flax (NNX) w2v-BERT 2.0 conformer encoder, the one of ``facebook/w2v-bert-2.0`` and of SeamlessM4T v2's speech
encoder, returning every layer.

Layer indexing (the stored ``layer`` axis, ``L = config.n_layer``, 24 in both real models):

- ``0``: the input to the first block: the feature projection (layer norm over the 160 stacked fbank values, linear to
  ``width``), padding frames set to zero. transformers' ``hidden_states[0]``.
- ``1..L``: the output of block ``i``, which ends in the block's own ``final_layer_norm``. transformers'
  ``Wav2Vec2BertModel`` gives the same ``hidden_states[i]``; ``L`` is also its ``last_hidden_state`` (the model has no
  encoder-level norm). transformers' ``SeamlessM4Tv2SpeechEncoder`` gives ``hidden_states[1..L-1]`` the same, but
  replaces ``hidden_states[L]`` by its ``last_hidden_state`` (it ties the last entry to the output): the adapter's,
  at one frame per 160 ms.

Not stored: the Seamless speech encoder's tail after block ``L`` (``encoder.layer_norm``, ``intermediate_ffn``, the
adapter that subsamples 8x, ``inner_layer_norm``). The adapter's frames are 160 ms, so its output is not one more
layer on the store's 20 ms frame axis; and with the same ``0..L`` both checkpoints line up layer for layer, which is
the comparison issue 28 is for (the same architecture with and without speech-translation training). Those weights are
recognised on load and left unread.

Glossary: ``features: f32[batch, frame, n_input]`` stacked fbank frames (``features.batch_features``), ``valid:
i32[batch]`` frames holding audio (20 ms each; the rest is padding), ``states: f[layer, batch, frame, embed]``.

Ragged batches: keys past ``valid`` are masked out of every attention, and the convolution module zeroes padding
frames before its causal depthwise convolution, as transformers does with the attention mask; a valid frame never
depends on padding. Padding frames carry numbers (transformers' own, to float rounding), not zeros; read ``valid``.

Weights come as a state dict with ``Wav2Vec2BertModel``'s names and PyTorch layouts (``checkpoints`` maps the
Seamless ones); linear kernels are stored transposed, ``[in, out]``. Layer norms and softmaxes run in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.models.common.attention import check_features, check_head_mask, scale_heads
from engine.models.common.layers import FeedForward, Linear, depthwise_conv, linear, norm, param
from engine.models.common.random_weights import normal_state
from engine.models.w2vbert.config import EncoderConfig


def _feed_forward(sd, prefix: str, dtype) -> FeedForward:
    """Linear, swish, linear: each of a block's two half-step feed-forwards."""
    names, attributes = ("intermediate_dense", "output_dense"), ("intermediate", "output")
    return FeedForward(sd, prefix, dtype, jax.nn.silu, names, attributes)


def relative_key_index(n_frames: int, left: int, right: int) -> np.ndarray:
    """i32[query, key]: the row of ``distance_embedding`` each pair reads, ``clip(key - query, -left, right) + left``.

    Fixed by the frame count, so built on the host at trace time and folded into the program as a constant.
    """
    pos = np.arange(n_frames)
    return (np.clip(pos[None, :] - pos[:, None], -left, right) + left).astype(np.int32)


def attention_mask(valid, n_frames: int, config: EncoderConfig):
    """bool[batch, 1, query or 1, key]: True where a query may attend to a key.

    Keys past ``valid`` are masked. Seamless attends within chunks of ``chunk_size`` frames and the ``left_chunks``
    before (transformers' ``_apply_chunk_attention``); with its 20000-frame chunks (400 s) that matters only for
    longer inputs, and a shorter frame axis (static under jit) skips it.
    """
    keys = (jnp.arange(n_frames)[None, :] < valid[:, None])[:, None, None, :]
    size = config.chunk_size
    if size is None or n_frames <= size:
        return keys
    chunk = np.arange(n_frames) // size
    start = np.maximum(chunk - config.left_chunks, 0) * size if config.left_chunks >= 0 else np.zeros_like(chunk)
    end = np.minimum((chunk + 1) * size, n_frames)
    pos = np.arange(n_frames)
    chunks = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return keys & jnp.asarray(chunks)[None, None]


class SelfAttention(nnx.Module):
    """Multi-head self-attention with Shaw's relative-key bias: ``logits[q, k] = (q . k + q . E[clip(k - q)]) /
    sqrt(head_width)``, ``E = distance_embedding``."""

    def __init__(self, sd, prefix: str, config: EncoderConfig, dtype):
        self.n_head = config.n_head
        self.left, self.right = config.left_positions, config.right_positions
        self.query = linear(sd, f"{prefix}.linear_q", dtype)
        self.key = linear(sd, f"{prefix}.linear_k", dtype)
        self.value = linear(sd, f"{prefix}.linear_v", dtype)
        self.out = linear(sd, f"{prefix}.linear_out", dtype)
        self.distance_embedding = param(sd[f"{prefix}.distance_embedding.weight"], dtype)  # [n_positions, head]

    def __call__(self, x, mask, head_scale=None):
        """x: f[batch, frame, embed], mask: bool[batch, 1, query or 1, key] -> f[batch, frame, embed];
        ``head_scale: f[heads]`` or ``f[batch, heads]`` scales each head's output (``scale_heads``)."""
        b, t, d = x.shape
        h = self.n_head
        dh = d // h

        def heads(y):  # f[b, t, d] -> f[b, h, t, dh]
            return jnp.transpose(y.reshape(b, t, h, dh), (0, 2, 1, 3))

        # The scale goes on q once: both terms of the logits are products with q.
        q = heads(self.query(x)) * jnp.asarray(dh**-0.5, x.dtype)
        k, v = heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        # q against each of the n_positions distance vectors, then each (q, k) pair picks its distance's column:
        # t x n_positions products per head instead of transformers' t x t x head_width embedding tensor.
        by_distance = jnp.einsum("bhqd,rd->bhqr", q, self.distance_embedding[...], preferred_element_type=jnp.float32)
        index = jnp.asarray(relative_key_index(t, self.left, self.right))
        logits = logits + jnp.take_along_axis(by_distance, jnp.broadcast_to(index, (b, h, t, t)), axis=-1)
        # finfo.min, not -inf: an all-padding row (a batch padded for the mesh) gets a uniform softmax, not NaN.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, t, d)
        return self.out(out if head_scale is None else scale_heads(out, head_scale, h))


class ConvolutionModule(nnx.Module):
    """Layer norm, pointwise convolution to 2x width, GLU, causal depthwise convolution, layer norm, swish,
    pointwise convolution. Pointwise convolutions are linear maps without bias."""

    def __init__(self, sd, prefix: str, config: EncoderConfig, dtype):
        eps = config.block_ln_eps
        self.layer_norm = norm(sd, f"{prefix}.layer_norm", eps, dtype)
        self.pointwise_in = Linear(sd[f"{prefix}.pointwise_conv1.weight"], None, dtype)  # [2w, w, 1]
        # depthwise weight [w, 1, taps] (PyTorch, groups=w) -> [taps, 1, w] (WIO with one input per group).
        self.depthwise = param(np.transpose(np.asarray(sd[f"{prefix}.depthwise_conv.weight"]), (2, 1, 0)), dtype)
        self.depthwise_layer_norm = norm(sd, f"{prefix}.depthwise_layer_norm", eps, dtype)
        self.pointwise_out = Linear(sd[f"{prefix}.pointwise_conv2.weight"], None, dtype)

    def __call__(self, x, frame_valid):
        """x: f[batch, frame, embed], frame_valid: bool[batch, frame, 1]."""
        y = jnp.where(frame_valid, self.layer_norm(x), 0)
        a, gate = jnp.split(self.pointwise_in(y), 2, axis=-1)
        y = a * jax.nn.sigmoid(gate)
        # All padding on the left: frame t sees frames t - taps + 1 .. t (causal, as transformers pads it). Shifted
        # sums, not XLA's grouped convolution: an order of magnitude faster on CPU (engine.models.owsm.model).
        y = depthwise_conv(y, self.depthwise, None, left=self.depthwise.shape[0] - 1)
        return self.pointwise_out(jax.nn.silu(self.depthwise_layer_norm(y)))


class ConformerBlock(nnx.Module):
    def __init__(self, sd, prefix: str, config: EncoderConfig, dtype):
        eps = config.block_ln_eps
        self.ffn1_layer_norm = norm(sd, f"{prefix}.ffn1_layer_norm", eps, dtype)
        self.ffn1 = _feed_forward(sd, f"{prefix}.ffn1", dtype)
        self.self_attn_layer_norm = norm(sd, f"{prefix}.self_attn_layer_norm", eps, dtype)
        self.self_attn = SelfAttention(sd, f"{prefix}.self_attn", config, dtype)
        self.conv_module = ConvolutionModule(sd, f"{prefix}.conv_module", config, dtype)
        self.ffn2_layer_norm = norm(sd, f"{prefix}.ffn2_layer_norm", eps, dtype)
        self.ffn2 = _feed_forward(sd, f"{prefix}.ffn2", dtype)
        self.final_layer_norm = norm(sd, f"{prefix}.final_layer_norm", eps, dtype)

    def __call__(self, x, mask, frame_valid, head_scale=None):
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask, head_scale)
        x = x + self.conv_module(x, frame_valid)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class W2vBertEncoder(nnx.Module):
    """The conformer encoder. Build with ``W2vBertEncoder(config, state_dict, dtype)``; ``state_dict`` holds at least
    ``state_shapes(config)``."""

    def __init__(self, config: EncoderConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        sd = state_dict
        self.projection_layer_norm = norm(sd, "feature_projection.layer_norm", config.projection_ln_eps, dtype)
        self.projection = linear(sd, "feature_projection.projection", dtype)
        self.blocks = nnx.List(
            [ConformerBlock(sd, f"encoder.layers.{i}", config, dtype) for i in range(config.n_layer)]
        )

    def __call__(self, features, valid, out_dtype=None, head_mask=None):
        """features: f32[batch, frame, n_input], valid: i32[batch] -> states f[L+1, batch, frame, embed].
        ``head_mask: f[L, heads]`` or ``f[batch, L, heads]`` scales each head's attention output (0 ablates it)."""
        config = self.config
        check_features(features, valid, config.n_input, "features.batch_features")
        out_dtype = out_dtype or self.projection.kernel.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, config.n_layer, config.n_head, len(features))
        b, t, _ = features.shape
        frame_valid = (jnp.arange(t)[None, :] < valid[:, None])[..., None]
        mask = attention_mask(valid, t, config)
        x = self.projection(self.projection_layer_norm(features))
        x = jnp.where(frame_valid, x, 0)
        kept = [x.astype(out_dtype)]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, frame_valid, None if head_mask is None else head_mask[..., i, :])
            kept.append(x.astype(out_dtype))
        return jnp.stack(kept)


def state_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the encoder reads, in ``Wav2Vec2BertModel``'s names and PyTorch layouts."""
    w, f, n = config.width, config.ffn_width, config.n_input
    shapes = {
        "feature_projection.layer_norm.weight": (n,),
        "feature_projection.layer_norm.bias": (n,),
        "feature_projection.projection.weight": (w, n),
        "feature_projection.projection.bias": (w,),
    }
    norms = ("ffn1_layer_norm", "self_attn_layer_norm", "conv_module.layer_norm", "conv_module.depthwise_layer_norm")
    for i in range(config.n_layer):
        p = f"encoder.layers.{i}"
        for name in (*norms, "ffn2_layer_norm", "final_layer_norm"):
            shapes |= {f"{p}.{name}.weight": (w,), f"{p}.{name}.bias": (w,)}
        for ffn in ("ffn1", "ffn2"):
            shapes |= {f"{p}.{ffn}.intermediate_dense.weight": (f, w), f"{p}.{ffn}.intermediate_dense.bias": (f,)}
            shapes |= {f"{p}.{ffn}.output_dense.weight": (w, f), f"{p}.{ffn}.output_dense.bias": (w,)}
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes |= {f"{p}.self_attn.{proj}.weight": (w, w), f"{p}.self_attn.{proj}.bias": (w,)}
        shapes[f"{p}.self_attn.distance_embedding.weight"] = (config.n_positions, config.head_width)
        shapes[f"{p}.conv_module.pointwise_conv1.weight"] = (2 * w, w, 1)
        shapes[f"{p}.conv_module.depthwise_conv.weight"] = (w, 1, config.depthwise_kernel)
        shapes[f"{p}.conv_module.pointwise_conv2.weight"] = (w, w, 1)
    return shapes


def random_state_dict(config: EncoderConfig, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    """Random weights of ``config`` in the encoder's names, for tests and benchmarks (norm scales near 1)."""
    return normal_state(state_shapes(config), seed, scale, lambda name: "norm.weight" in name)
