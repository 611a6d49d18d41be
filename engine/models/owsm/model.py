"""Flax (NNX) OWSM encoder (v3.1, v4, POWSM): ESPnet's ``Conv2dSubsampling`` (or ``Conv2dSubsampling8``) and
E-Branchformer blocks, returning every layer.

Layer indexing (the stored ``layer`` axis, ``L = config.n_layer``: 9 for ``owsm_v3.1_ebf_base``), as babelgrid
indexes Whisper's:

- ``0``: the input to the first block: ``Conv2dSubsampling`` (two 3x3 convolutions of stride 2, each with ReLU, over
  (frame, mel); ``conv2d8``: three; the channels x remaining mel bins flattened and projected to ``width``) and
  ``PositionalEncoding``
  (``x * sqrt(width) + sinusoid``). ESPnet's ``encoder.embed`` output.
- ``1..L``: the output of block ``i``; each E-Branchformer block ends in its own ``norm_final``. ESPnet's
  ``return_all_hs`` intermediate outputs.
- ``L+1``: ``after_norm`` of block ``L``: the encoder output the decoder and the CTC head read.

One block (``EBranchformerEncoderLayer``): ``x += 0.5 * ffn_macaron(norm(x))``; two branches from the same ``x``:
self-attention (``norm_mha``, no relative positions: OWSM v3.1 adds absolute ones at layer 0) and the cgMLP
(``norm_mlp``, linear to ``cgmlp_width``, GELU, split in halves ``r, g``; ``r * dwconv(norm(g))``, linear back);
merge: ``x += merge_proj(c + dwconv(c))`` with ``c = [attn, cgmlp]``; ``x += 0.5 * ffn(norm(x))``; ``norm_final``.
Feed-forwards use swish; every norm is ESPnet's ``LayerNorm`` (eps 1e-12).

OWLS (``config.encoder == "transformer"``: ESPnet's ``TransformerEncoder``): the same layer 0 and ``after_norm``; a
block (``EncoderLayer`` with ``normalize_before``) is ``x += attn(norm1(x))``, ``x += ffn(norm2(x))`` with a ReLU
feed-forward, and has no norm of its own at the end, so layers ``1..L`` are its unnormalised residual stream (as
Whisper's blocks are).

No padding mask: ESPnet's S2T inference gives every clip a full 30 s window marked valid (see ``features``), so every
frame attends to every frame and the convolutions read the padded silence, as they do in ESPnet.

Glossary: ``features: f32[batch, feature_frame, n_mels]`` (3001 per window), ``states: f[layer, batch, frame, embed]``
(749 frames of 40 ms per window). Weights come as ESPnet's state dict (``encoder.*`` names, PyTorch layouts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common import layers
from engine.models.common.attention import check_head_mask, scale_heads
from engine.models.common.layers import FeedForward, Linear, depthwise_conv, linear, param
from engine.models.owsm.config import LN_EPS, OwsmConfig, subsampled_frames


def norm(sd, prefix, dtype):
    """ESPnet's ``LayerNorm`` (eps 1e-12) of ``{prefix}.weight`` and ``{prefix}.bias``."""
    return layers.norm(sd, prefix, LN_EPS, dtype)


def sinusoids(n: int, width: int) -> np.ndarray:
    """f32[n, width]: ESPnet's ``PositionalEncoding`` table (sin on even, cos on odd channels), in float32 as torch
    builds it."""
    position = np.arange(n, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, width, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / width)))
    pe = np.zeros((n, width), np.float32)
    pe[:, 0::2] = np.sin(position * div)
    pe[:, 1::2] = np.cos(position * div)
    return pe


class Attention(nnx.Module):
    """ESPnet's ``MultiHeadedAttention`` without a mask; ``kv`` defaults to ``x`` (self-attention)."""

    def __init__(self, sd, prefix: str, n_head: int, dtype):
        self.n_head = n_head
        self.q, self.k, self.v, self.out = (linear(sd, f"{prefix}.linear_{n}", dtype) for n in ("q", "k", "v", "out"))

    def heads(self, x):
        """f[batch, time, width] -> f[batch, head, time, head_width]."""
        b, t, d = x.shape
        return x.reshape(b, t, self.n_head, d // self.n_head).transpose(0, 2, 1, 3)

    def attend(self, q, k, v, mask=None):
        """q: f[batch, head, query, hw], k, v: f[batch, head, key, hw], mask: bool[..., query, key] or None."""
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v)
        return self.out(out.reshape(*out.shape[:2], -1))

    def cross(self, x, memory):
        """Unmasked attention of ``x`` f[batch, query, width] to ``memory`` f[batch, key, width] (every key valid)."""
        return self.attend(self.heads(self.q(x)), self.heads(self.k(memory)), self.heads(self.v(memory)))

    def __call__(self, x, head_scale=None):
        """Unmasked self-attention (the encoder's): ``attend`` reordered for speed, equal up to float32 rounding;
        ``head_scale: f[heads]`` or ``f[batch, heads]`` scales each head's output (``scale_heads``).

        The scale goes on q (batch x time x width values, not batch x head x time^2 scores), and the softmax's division
        after the weighted sum (head width values per query, not one per key): two fewer elementwise passes over the
        [batch, head, 749, 749] scores, which are, with the 64-wide score matmuls, the attention's cost beyond its
        projections.
        """
        hw = x.shape[-1] // self.n_head
        q, k, v = self.heads(self.q(x) * (1.0 / math.sqrt(hw))), self.heads(self.k(x)), self.heads(self.v(x))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        e = jnp.exp(logits - logits.max(-1, keepdims=True))
        out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v) / e.sum(-1, keepdims=True).astype(v.dtype)
        out = out.transpose(0, 2, 1, 3).reshape(*x.shape)
        return self.out(out if head_scale is None else scale_heads(out, head_scale, self.n_head))


def depthwise(weight, bias, dtype):
    """PyTorch depthwise Conv1d weight [channels, 1, taps] -> (kernel [taps, 1, channels], bias)."""
    return param(np.transpose(np.asarray(weight), (2, 1, 0)), dtype), param(bias, dtype)


def _conv_stride2(x, kernel):
    """3x3 convolution of stride 2, no padding: x f[batch, frame, mel, in], kernel f[3, 3, in, out] (HWIO)."""
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _subsample_convs(features, kernel1, bias1, kernel2):
    """features f[batch, feature_frame, mel] -> the second convolution's output f[batch, frame, mel2, width] before its
    bias: XLA's two convolutions."""
    x = jax.nn.relu(_conv_stride2(features[..., None], kernel1) + bias1)
    return _conv_stride2(x, kernel2)


def _subsample_matmuls(features, kernel1, bias1, kernel2):
    """``_subsample_convs`` as three matmuls, one per frame tap ``i`` of the second convolution.

    Each matmul's operand holds, for every output (frame t, mel f), the first convolution's output at the positions
    (2t + i, 2f + j), j = 0..2, channels concatenated (im2col along mel). It is computed straight from the features by
    nine shifted products (the first convolution has one input channel; its position (p, q) reads the features at
    (2p + a, 2q + b)), so the first convolution's whole output, 4x the features' frames x width, is never written and
    read back.
    """
    frames, mels = subsampled_frames(features.shape[1], 2), subsampled_frames(features.shape[2], 2)
    y = 0
    for i in range(3):
        cols = []
        for j in range(3):
            x = 0
            for a in range(3):
                for b in range(3):
                    r, c = 2 * i + a, 2 * j + b
                    x = x + features[:, r : r + 4 * frames - 3 : 4, c : c + 4 * mels - 3 : 4, None] * kernel1[a, b, 0]
            cols.append(jax.nn.relu(x + bias1))
        y = y + jnp.dot(jnp.concatenate(cols, axis=-1), kernel2[i].reshape(-1, kernel2.shape[-1]))
    return y


def subsample_convs(features, kernel1, bias1, kernel2):
    """The subsampling's two convolutions (the second, width -> width channels, is nearly all of layer 0's FLOPs).

    On CPU as matmuls (``_subsample_matmuls``): XLA:CPU runs a convolution of 768 channels at a fraction of its matmul
    rate (bench/RESULTS.md, "OWSM encoder"). Elsewhere XLA's convolutions (cuDNN on GPU), which need no gathered
    operand (3x the second convolution's input).
    """
    return jax.lax.platform_dependent(
        features, kernel1, bias1, kernel2, cpu=_subsample_matmuls, default=_subsample_convs
    )


def _conv_stride2_matmuls(x, kernel):
    """``_conv_stride2`` as three matmuls, one per frame tap ``i``, over the three mel taps' inputs concatenated."""
    frames, mels = subsampled_frames(x.shape[1], 1), subsampled_frames(x.shape[2], 1)
    y = 0
    for i in range(3):
        cols = jnp.concatenate([x[:, i : i + 2 * frames - 1 : 2, j : j + 2 * mels - 1 : 2] for j in range(3)], -1)
        y = y + jnp.dot(cols, kernel[i].reshape(-1, kernel.shape[-1]))
    return y


def conv_stride2(x, kernel):
    """One more 3x3 stride-2 convolution (``conv2d8``'s third, width -> width channels): matmuls on CPU, as
    ``subsample_convs``, XLA's convolution elsewhere."""
    return jax.lax.platform_dependent(x, kernel, cpu=_conv_stride2_matmuls, default=_conv_stride2)


class CgMlp(nnx.Module):
    """``ConvolutionalGatingMLP`` with an identity gate and no linear after the convolution (OWSM v3.1's)."""

    def __init__(self, sd, prefix: str, dtype):
        self.proj1 = linear(sd, f"{prefix}.channel_proj1.0", dtype)
        self.gate_norm = norm(sd, f"{prefix}.csgu.norm", dtype)
        self.conv, self.conv_bias = depthwise(sd[f"{prefix}.csgu.conv.weight"], sd[f"{prefix}.csgu.conv.bias"], dtype)
        self.proj2 = linear(sd, f"{prefix}.channel_proj2", dtype)

    def __call__(self, x):
        # torch.nn.GELU's default is the exact erf form, not the tanh approximation.
        r, g = jnp.split(jax.nn.gelu(self.proj1(x), approximate=False), 2, axis=-1)
        return self.proj2(r * depthwise_conv(self.gate_norm(g), self.conv, self.conv_bias))


class EBranchformerBlock(nnx.Module):
    def __init__(self, sd, prefix: str, config: OwsmConfig, dtype):
        self.norm_ff_macaron = norm(sd, f"{prefix}.norm_ff_macaron", dtype)
        self.ff_macaron = FeedForward(sd, f"{prefix}.feed_forward_macaron", dtype, jax.nn.silu)
        self.norm_mha = norm(sd, f"{prefix}.norm_mha", dtype)
        self.attn = Attention(sd, f"{prefix}.attn", config.n_head, dtype)
        self.norm_mlp = norm(sd, f"{prefix}.norm_mlp", dtype)
        self.cgmlp = CgMlp(sd, f"{prefix}.cgmlp", dtype)
        self.merge_conv, self.merge_bias = depthwise(
            sd[f"{prefix}.depthwise_conv_fusion.weight"], sd[f"{prefix}.depthwise_conv_fusion.bias"], dtype
        )
        self.merge_proj = linear(sd, f"{prefix}.merge_proj", dtype)
        self.norm_ff = norm(sd, f"{prefix}.norm_ff", dtype)
        self.ff = FeedForward(sd, f"{prefix}.feed_forward", dtype, jax.nn.silu)
        self.norm_final = norm(sd, f"{prefix}.norm_final", dtype)

    def body(self, x, head_scale=None):
        """The block up to ``norm_final``."""
        x = x + 0.5 * self.ff_macaron(self.norm_ff_macaron(x))
        both = jnp.concatenate([self.attn(self.norm_mha(x), head_scale), self.cgmlp(self.norm_mlp(x))], axis=-1)
        x = x + self.merge_proj(both + depthwise_conv(both, self.merge_conv, self.merge_bias))
        return x + 0.5 * self.ff(self.norm_ff(x))

    def __call__(self, x, head_scale=None):
        return self.norm_final(self.body(x, head_scale))


class TransformerBlock(nnx.Module):
    """ESPnet's pre-norm ``EncoderLayer`` (OWLS): self-attention then a ReLU feed-forward, each on its own norm."""

    def __init__(self, sd, prefix: str, config: OwsmConfig, dtype):
        self.norm1 = norm(sd, f"{prefix}.norm1", dtype)
        self.attn = Attention(sd, f"{prefix}.self_attn", config.n_head, dtype)
        self.norm2 = norm(sd, f"{prefix}.norm2", dtype)
        self.ff = FeedForward(sd, f"{prefix}.feed_forward", dtype, jax.nn.relu)

    def __call__(self, x, head_scale=None):
        x = x + self.attn(self.norm1(x), head_scale)
        return x + self.ff(self.norm2(x))


# config.encoder -> its block (OWSM-CTC's encoder builds its own: ``ctc_model``).
BLOCKS = {"e_branchformer": EBranchformerBlock, "transformer": TransformerBlock}


class OwsmEncoder(nnx.Module):
    """The encoder. Build with ``OwsmEncoder(config, state_dict, dtype)``; ``state_dict`` holds at least
    ``encoder_shapes(config)``."""

    def __init__(self, config: OwsmConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        sd = state_dict
        # Conv2d weights [out, in, 3, 3] (OIHW) -> HWIO, over (frame, mel) as torch's (t, f).
        self.conv1 = param(np.transpose(np.asarray(sd["encoder.embed.conv.0.weight"]), (2, 3, 1, 0)), dtype)
        self.conv1_bias = param(sd["encoder.embed.conv.0.bias"], dtype)
        self.conv2 = param(np.transpose(np.asarray(sd["encoder.embed.conv.2.weight"]), (2, 3, 1, 0)), dtype)
        self.conv2_bias = param(sd["encoder.embed.conv.2.bias"], dtype)
        more = range(4, 2 * config.n_convs, 2)  # conv2d8's third convolution: embed.conv.4
        self.more_kernels = nnx.List(
            [param(np.transpose(np.asarray(sd[f"encoder.embed.conv.{k}.weight"]), (2, 3, 1, 0)), dtype) for k in more]
        )
        self.more_biases = nnx.List([param(sd[f"encoder.embed.conv.{k}.bias"], dtype) for k in more])
        # torch flattens (channel, mel) channel-major (x.transpose(1, 2).view(b, t, c * f)); the kernel's rows are
        # reordered to mel-major once here, so that embed flattens its NHWC output without a transpose.
        w, f = config.width, config.subsampled_mels
        out_weight = np.asarray(sd["encoder.embed.out.0.weight"]).reshape(w, w, f).transpose(0, 2, 1).reshape(w, f * w)
        self.embed_out = Linear(out_weight, sd["encoder.embed.out.0.bias"], dtype)
        self.positions = nnx.Variable(jnp.asarray(sinusoids(config.n_frames + config.n_prefix, config.width)))
        self.blocks = nnx.List([self.block(sd, i, config, dtype) for i in range(config.n_layer)])
        self.after_norm = norm(sd, "encoder.after_norm", dtype)

    @staticmethod
    def block(sd, i: int, config: OwsmConfig, dtype):
        return BLOCKS[config.encoder](sd, f"encoder.encoders.{i}", config, dtype)

    def embed(self, features):
        """f32[batch, feature_frame, n_mels] -> layer 0, f[batch, frame, width]."""
        return self.positioned(self.subsample(features))

    def subsample(self, features):
        """f32[batch, feature_frame, n_mels] -> the subsampling's projection f[batch, frame, width], before the
        positions."""
        x = features.astype(self.conv1.dtype)  # NHWC with H = frames, W = mels, one channel
        x = subsample_convs(x, self.conv1[...], self.conv1_bias[...], self.conv2[...])
        x = jax.nn.relu(x + self.conv2_bias[...])
        for kernel, bias in zip(self.more_kernels, self.more_biases, strict=True):
            x = jax.nn.relu(conv_stride2(x, kernel[...]) + bias[...])
        b, t, f, c = x.shape
        return self.embed_out(x.reshape(b, t, f * c))  # mel-major, as embed_out's kernel rows are ordered (__init__)

    def positioned(self, x):
        """``PositionalEncoding``: ``x * sqrt(width)`` plus the sinusoids of positions ``0..frame-1``."""
        t = x.shape[1]
        if t > self.positions.shape[0]:
            raise ShapeError(
                f"features give {t} encoder frames; the model is built for windows of at most "
                f"{self.positions.shape[0]} ({self.config.frontend.speech_seconds:g} s)"
            )
        return x * math.sqrt(self.config.width) + self.positions[...][:t].astype(x.dtype)

    def _checked(self, features):
        if features.ndim != 3 or features.shape[-1] != self.config.n_mels:
            raise ShapeError(
                f"features must be f32[batch, feature_frame, {self.config.n_mels}] (features.batch_features), "
                f"got {tuple(features.shape)}"
            )
        return features

    def __call__(self, features, out_dtype=None, head_mask=None):
        """features: f32[batch, feature_frame, n_mels] -> states f[L+2, batch, frame, width] (layers 0..L+1).
        ``head_mask: f[L, heads]`` or ``f[batch, L, heads]`` scales each head's attention output (0 ablates it)."""
        features = self._checked(features)
        out_dtype = out_dtype or self.conv1.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, self.config.n_layer, self.config.n_head, len(features))
        x = self.embed(features)
        kept = [x.astype(out_dtype)]
        for i, block in enumerate(self.blocks):
            x = block(x, None if head_mask is None else head_mask[..., i, :])
            kept.append(x.astype(out_dtype))
        kept.append(self.after_norm(x).astype(out_dtype))
        return jnp.stack(kept)


def encoder_shapes(config: OwsmConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the encoder reads, in ESPnet's names and PyTorch layouts."""
    w = config.width
    shapes = {
        "encoder.embed.conv.0.weight": (w, 1, 3, 3),
        "encoder.embed.conv.0.bias": (w,),
        "encoder.embed.conv.2.weight": (w, w, 3, 3),
        "encoder.embed.conv.2.bias": (w,),
        **{f"encoder.embed.conv.{k}.weight": (w, w, 3, 3) for k in range(4, 2 * config.n_convs, 2)},
        **{f"encoder.embed.conv.{k}.bias": (w,) for k in range(4, 2 * config.n_convs, 2)},
        "encoder.embed.out.0.weight": (w, w * config.subsampled_mels),
        "encoder.embed.out.0.bias": (w,),
        "encoder.after_norm.weight": (w,),
        "encoder.after_norm.bias": (w,),
    }
    block = _transformer_block_shapes if config.encoder == "transformer" else _ebranchformer_block_shapes
    for i in range(config.n_layer):
        shapes |= block(config, f"encoder.encoders.{i}")
    return shapes


def _transformer_block_shapes(config: OwsmConfig, p: str) -> dict[str, tuple[int, ...]]:
    w, f = config.width, config.ffn_width
    shapes = {f"{p}.{n}.{k}": (w,) for n in ("norm1", "norm2") for k in ("weight", "bias")}
    for n in ("q", "k", "v", "out"):
        shapes |= {f"{p}.self_attn.linear_{n}.weight": (w, w), f"{p}.self_attn.linear_{n}.bias": (w,)}
    shapes |= {f"{p}.feed_forward.w_1.weight": (f, w), f"{p}.feed_forward.w_1.bias": (f,)}
    return shapes | {f"{p}.feed_forward.w_2.weight": (w, f), f"{p}.feed_forward.w_2.bias": (w,)}


def _ebranchformer_block_shapes(config: OwsmConfig, p: str) -> dict[str, tuple[int, ...]]:
    w, f, g = config.width, config.ffn_width, config.cgmlp_width
    shapes = {}
    for n in ("norm_ff_macaron", "norm_mha", "norm_mlp", "norm_ff", "norm_final"):
        shapes |= {f"{p}.{n}.weight": (w,), f"{p}.{n}.bias": (w,)}
    for ff in ("feed_forward_macaron", "feed_forward"):
        shapes |= {f"{p}.{ff}.w_1.weight": (f, w), f"{p}.{ff}.w_1.bias": (f,)}
        shapes |= {f"{p}.{ff}.w_2.weight": (w, f), f"{p}.{ff}.w_2.bias": (w,)}
    for n in ("q", "k", "v", "out"):
        shapes |= {f"{p}.attn.linear_{n}.weight": (w, w), f"{p}.attn.linear_{n}.bias": (w,)}
    c = f"{p}.cgmlp"
    shapes |= {f"{c}.channel_proj1.0.weight": (g, w), f"{c}.channel_proj1.0.bias": (g,)}
    shapes |= {f"{c}.csgu.norm.weight": (g // 2,), f"{c}.csgu.norm.bias": (g // 2,)}
    shapes |= {f"{c}.csgu.conv.weight": (g // 2, 1, config.cgmlp_kernel), f"{c}.csgu.conv.bias": (g // 2,)}
    shapes |= {f"{c}.channel_proj2.weight": (w, g // 2), f"{c}.channel_proj2.bias": (w,)}
    shapes |= {f"{p}.depthwise_conv_fusion.weight": (2 * w, 1, config.merge_kernel)}
    shapes |= {f"{p}.depthwise_conv_fusion.bias": (2 * w,)}
    shapes |= {f"{p}.merge_proj.weight": (w, 2 * w), f"{p}.merge_proj.bias": (w,)}
    return shapes
