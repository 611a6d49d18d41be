"""Flax (NNX) FastConformer encoder, transformers' ``ParakeetEncoder`` (Parakeet, Canary), returning every layer.

Layer indexing (the stored ``layer`` axis, ``L = config.n_layer``):

- ``0``: the subsampling output, times ``sqrt(width)`` where ``scale_input`` (Parakeet-CTC; not Canary): what the
  first block reads, transformers' ``hidden_states[0]``. One frame per 80 ms (12.5/s).
- ``1..L``: the output of block ``i``, which ends in the block's ``norm_out``; ``L`` is the encoder's output (no
  encoder-level norm), what the CTC head and Canary's decoder read.

Subsampling (8x): the log-mel ``f32[frame, n_mels]`` as one input channel, a 3x3 stride-2 convolution to 256 channels
and ReLU, then twice a 3x3 stride-2 depthwise convolution, a 1x1 convolution and ReLU; time frames past each stage's
valid length are set to zero after every convolution (transformers' masking); channels x remaining mel bins, channel
major, go through a linear to ``width``.

Blocks (Macaron conformer): ``x + ff1(ln(x)) / 2``; ``+ attention(ln(x))``; ``+ conv(ln(x))``; ``+ ff2(ln(x)) / 2``;
``norm_out``. Attention is Transformer-XL's relative-position attention (Dai et al., section 3.3): with ``R_r`` the
sinusoid of relative distance ``r = i - j`` (sin and cos interleaved, ``10000^(-2k/width)``), projected by
``relative_k_proj``, ``logit[i, j] = ((q_i + u) . k_j + (q_i + v) . W R_{i - j}) / sqrt(head_width)``; transformers
gets the second term by its ``_rel_shift`` of a ``[query, 2T - 1]`` product, here by gathering the same entries.
Keys past ``valid`` are masked. The convolution module: pointwise convolution to 2x width, GLU, padding frames set to
zero, depthwise convolution (``conv_kernel`` taps, centred), BatchNorm (running statistics), silu, pointwise
convolution.

Glossary: ``features: f32[batch, feature_frame, n_mels]`` (10 ms frames, ``features.log_mel``), ``valid:
i32[batch]`` the valid feature frames of each row, ``states: f[layer, batch, frame, embed]`` (80 ms frames; the valid
ones ``config.sub_length(valid)``). A valid frame never depends on padding: frames past it are zero after every
subsampling convolution and before every depthwise convolution, and masked out of every attention.

Weights come as a state dict with ``ParakeetEncoder``'s names and PyTorch layouts; layer norms, softmaxes and the
positional sinusoids are float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_features, check_head_mask, scale_heads
from engine.models.common.layers import FeedForward, Linear, depthwise_conv, linear, norm, param
from engine.models.common.random_weights import normal_state
from engine.models.fastconformer.config import BN_EPS, LN_EPS, FastConformerConfig


def relative_positions(n_frames: int, width: int) -> np.ndarray:
    """f32[2T - 1, width]: row ``p`` is the sinusoid of relative distance ``T - 1 - p`` (``T - 1`` down to
    ``1 - T``), sin and cos interleaved, in float32 as transformers computes it. Built on the host at trace time."""
    inv_freq = (1.0 / (np.float32(10000.0) ** (np.arange(0, width, 2, dtype=np.float32) / np.float32(width)))).astype(
        np.float32
    )
    distance = np.arange(n_frames - 1, -n_frames, -1).astype(np.float32)
    freqs = distance[:, None] * inv_freq[None, :]
    return np.stack([np.sin(freqs), np.cos(freqs)], axis=-1).reshape(len(distance), width).astype(np.float32)


def shifted_index(n_frames: int) -> np.ndarray:
    """i32[query, key]: the column of the ``[query, 2T - 1]`` position product each pair reads, ``T - 1 - i + j``
    (distance ``i - j``): what transformers' ``_rel_shift`` and the cut to ``T`` columns leave at ``[i, j]``."""
    pos = np.arange(n_frames)
    return (n_frames - 1 - pos[:, None] + pos[None, :]).astype(np.int32)


def _frames_valid(valid, n_frames: int):
    return (jnp.arange(n_frames)[None, :] < valid[:, None])[:, :, None, None]  # bool[batch, frame, 1, 1]


class Subsampling(nnx.Module):
    """The 8x convolutional subsampling and its linear: ``f32[batch, frame, n_mels] -> f[batch, frame / 8, width]``."""

    def __init__(self, sd, config: FastConformerConfig, dtype):
        self.config = config
        p = "subsampling.layers"
        # Conv2d [out, in / groups, kh, kw] -> HWIO [kh, kw, in / groups, out].
        self.conv_in = param(np.transpose(np.asarray(sd[f"{p}.0.weight"]), (2, 3, 1, 0)), dtype)
        self.conv_in_bias = param(sd[f"{p}.0.bias"], dtype)
        self.depthwise, self.pointwise = nnx.List(), nnx.List()
        for i in range(config.sub_layers - 1):
            d, q = 2 + 3 * i, 3 + 3 * i  # ModuleList indices: conv, relu, then (depthwise, pointwise, relu) pairs
            w = np.transpose(np.asarray(sd[f"{p}.{d}.weight"]), (2, 3, 1, 0))  # [kh, kw, 1, channels]
            self.depthwise.append(nnx.List([param(w, dtype), param(sd[f"{p}.{d}.bias"], dtype)]))
            self.pointwise.append(Linear(sd[f"{p}.{q}.weight"], sd[f"{p}.{q}.bias"], dtype))
        self.linear = linear(sd, "subsampling.linear", dtype)

    def _strided_depthwise(self, x, kernel, bias):
        """Depthwise 2-D convolution with stride and 'same' padding as a sum of strided slices (XLA:CPU runs a
        grouped convolution as a slow scalar loop): x f[b, t, f, c], kernel f[kh, kw, 1, c]."""
        c = self.config
        s, pad, k = c.sub_stride, c.sub_padding, c.sub_kernel
        t_out = (x.shape[1] + 2 * pad - k) // s + 1
        f_out = (x.shape[2] + 2 * pad - k) // s + 1
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        y = None
        for a in range(k):
            for b in range(k):
                tap = xp[:, a : a + s * (t_out - 1) + 1 : s, b : b + s * (f_out - 1) + 1 : s] * kernel[a, b, 0]
                y = tap if y is None else y + tap
        return y + bias

    def __call__(self, features, valid):
        c = self.config
        x = features.astype(self.conv_in.dtype)[..., None]  # [b, t, n_mels, 1]: NHWC, time as height
        lengths = valid
        x = jnp.where(_frames_valid(lengths, x.shape[1]), x, 0)
        pad = c.sub_padding
        x = jax.lax.conv_general_dilated(
            x, self.conv_in[...], (c.sub_stride, c.sub_stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        ) + self.conv_in_bias[...]  # fmt: skip
        lengths = (lengths + 2 * pad - c.sub_kernel) // c.sub_stride + 1
        x = jax.nn.relu(jnp.where(_frames_valid(lengths, x.shape[1]), x, 0))
        for (kernel, bias), pointwise in zip(self.depthwise, self.pointwise, strict=True):
            x = self._strided_depthwise(x, kernel[...], bias[...])
            lengths = (lengths + 2 * pad - c.sub_kernel) // c.sub_stride + 1
            keep = _frames_valid(lengths, x.shape[1])
            x = jax.nn.relu(jnp.where(keep, pointwise(jnp.where(keep, x, 0)), 0))
        b, t, f, ch = x.shape
        x = jnp.transpose(x, (0, 1, 3, 2)).reshape(b, t, ch * f)  # channel-major, as transformers flattens
        return self.linear(x), lengths


class RelPositionAttention(nnx.Module):
    """Multi-head attention with Transformer-XL relative positions (module docstring)."""

    def __init__(self, sd, prefix: str, config: FastConformerConfig, dtype):
        self.n_head = config.n_head
        bias = config.attention_bias
        self.query = linear(sd, f"{prefix}.q_proj", dtype, bias)
        self.key = linear(sd, f"{prefix}.k_proj", dtype, bias)
        self.value = linear(sd, f"{prefix}.v_proj", dtype, bias)
        self.out = linear(sd, f"{prefix}.o_proj", dtype, bias)
        self.relative_key = linear(sd, f"{prefix}.relative_k_proj", dtype, bias=False)
        self.bias_u = param(sd[f"{prefix}.bias_u"], dtype)  # [head, head_width]: content bias
        self.bias_v = param(sd[f"{prefix}.bias_v"], dtype)  # position bias

    def __call__(self, x, mask, head_scale=None):
        """x: f[batch, frame, embed], mask: bool[batch, 1, 1, key] -> f[batch, frame, embed]; ``head_scale: f[heads]``
        or ``f[batch, heads]`` scales each head's output (``scale_heads``)."""
        b, t, d = x.shape
        h = self.n_head
        dh = d // h
        scale = dh**-0.5

        def heads(y):  # f[b, t, d] -> f[b, h, t, dh]
            return jnp.transpose(y.reshape(y.shape[0], y.shape[1], h, dh), (0, 2, 1, 3))

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        positions = jnp.asarray(relative_positions(t, d), x.dtype)
        r = self.relative_key(positions).reshape(2 * t - 1, h, dh)  # the same for every row of the batch
        content = jnp.einsum("bhqd,bhkd->bhqk", q + self.bias_u[...][None, :, None], k,
                             preferred_element_type=jnp.float32)  # fmt: skip
        by_position = jnp.einsum("bhqd,phd->bhqp", q + self.bias_v[...][None, :, None], r,
                                 preferred_element_type=jnp.float32)  # fmt: skip
        index = jnp.broadcast_to(jnp.asarray(shifted_index(t)), (b, h, t, t))
        logits = (content + jnp.take_along_axis(by_position, index, axis=-1)) * scale
        # finfo.min, not -inf: a row of padding only (a batch padded for the mesh) gets a finite softmax.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(b, t, d)
        return self.out(out if head_scale is None else scale_heads(out, head_scale, h))


class ConvolutionModule(nnx.Module):
    """Pointwise convolution to 2x width, GLU, padding zeroed, depthwise convolution, BatchNorm, silu, pointwise."""

    def __init__(self, sd, prefix: str, config: FastConformerConfig, dtype):
        bias = config.convolution_bias
        self.pointwise_in = Linear(sd[f"{prefix}.pointwise_conv1.weight"],
                                   sd[f"{prefix}.pointwise_conv1.bias"] if bias else None, dtype)  # fmt: skip
        # depthwise weight [w, 1, taps] -> [taps, 1, w]
        self.depthwise = param(np.transpose(np.asarray(sd[f"{prefix}.depthwise_conv.weight"]), (2, 1, 0)), dtype)
        self.depthwise_bias = param(sd[f"{prefix}.depthwise_conv.bias"], dtype) if bias else None
        n = f"{prefix}.norm"
        scale = np.asarray(sd[f"{n}.weight"], np.float64) / np.sqrt(
            np.asarray(sd[f"{n}.running_var"], np.float64) + BN_EPS
        )
        self.bn_mean = param(sd[f"{n}.running_mean"], jnp.float32)
        self.bn_scale = param(scale, jnp.float32)  # weight / sqrt(running_var + eps)
        self.bn_bias = param(sd[f"{n}.bias"], jnp.float32)
        self.pointwise_out = Linear(sd[f"{prefix}.pointwise_conv2.weight"],
                                    sd[f"{prefix}.pointwise_conv2.bias"] if bias else None, dtype)  # fmt: skip

    def __call__(self, x, frame_valid):
        """x: f[batch, frame, embed] (normed), frame_valid: bool[batch, frame, 1]."""
        a, gate = jnp.split(self.pointwise_in(x), 2, axis=-1)
        y = jnp.where(frame_valid, a * jax.nn.sigmoid(gate), 0)
        y = depthwise_conv(y, self.depthwise, self.depthwise_bias)
        y32 = (y.astype(jnp.float32) - self.bn_mean[...]) * self.bn_scale[...] + self.bn_bias[...]
        return self.pointwise_out(jax.nn.silu(y32.astype(y.dtype)))


class ConformerBlock(nnx.Module):
    def __init__(self, sd, prefix: str, config: FastConformerConfig, dtype):
        bias = config.attention_bias
        names, attributes = ("linear1", "linear2"), ("inner", "outer")

        def ffn(name):
            if bias:
                return FeedForward(sd, f"{prefix}.{name}", dtype, jax.nn.silu, names, attributes)
            zeros = {f"{prefix}.{name}.{n}.bias": None for n in names}
            return FeedForward({**sd, **zeros}, f"{prefix}.{name}", dtype, jax.nn.silu, names, attributes)

        for name in ("norm_feed_forward1", "norm_self_att", "norm_conv", "norm_feed_forward2", "norm_out"):
            setattr(self, name, norm(sd, f"{prefix}.{name}", LN_EPS, dtype))
        self.feed_forward1 = ffn("feed_forward1")
        self.self_attn = RelPositionAttention(sd, f"{prefix}.self_attn", config, dtype)
        self.conv = ConvolutionModule(sd, f"{prefix}.conv", config, dtype)
        self.feed_forward2 = ffn("feed_forward2")

    def __call__(self, x, mask, frame_valid, head_scale=None):
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), mask, head_scale)
        x = x + self.conv(self.norm_conv(x), frame_valid)
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


class FastConformer(nnx.Module):
    """The encoder, and the CTC head where the checkpoint has one. Build with ``FastConformer(config, state_dict,
    dtype)``; ``state_dict`` holds at least ``state_shapes(config)`` (encoder names, prefix removed)."""

    def __init__(self, config: FastConformerConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        sd = state_dict
        self.subsampling = Subsampling(sd, config, dtype)
        self.blocks = nnx.List([ConformerBlock(sd, f"layers.{i}", config, dtype) for i in range(config.n_layer)])
        self.ctc_head = linear(sd, "ctc_head", dtype) if config.vocab_size is not None else None

    def __call__(self, features, valid, out_dtype=None, head_mask=None):
        """features: f32[batch, feature_frame, n_mels], valid: i32[batch] -> states f[L+1, batch, frame, embed].
        ``head_mask: f[L, heads]`` or ``f[batch, L, heads]`` scales each head's attention output (0 ablates it)."""
        config = self.config
        check_features(features, valid, config.n_mels, "features.log_mel")
        out_dtype = out_dtype or self.subsampling.linear.kernel.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, config.n_layer, config.n_head, len(features))
        x, lengths = self.subsampling(features, valid)
        if config.scale_input:
            x = x * jnp.asarray(math.sqrt(config.width), x.dtype)
        t = x.shape[1]
        frame_valid = (jnp.arange(t)[None, :] < lengths[:, None])[..., None]
        mask = frame_valid[:, None, None, :, 0]  # keys
        kept = [x.astype(out_dtype)]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, frame_valid, None if head_mask is None else head_mask[..., i, :])
            kept.append(x.astype(out_dtype))
        return jnp.stack(kept)

    def ctc_logits(self, states):
        """The CTC head on any layer's states ``f[..., frame, embed]`` -> ``f32[..., frame, vocab]``: the logit lens
        (at layer L, ``ParakeetForCTC``'s logits)."""
        if self.ctc_head is None:
            raise ShapeError("this FastConformer checkpoint has no CTC head (only parakeet_ctc models do)")
        return self.ctc_head(states).astype(jnp.float32)


def state_shapes(config: FastConformerConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the encoder (and CTC head) reads, ``ParakeetEncoder``'s names (no prefix)."""
    w, f, c, k = config.width, config.ffn_width, config.sub_channels, config.sub_kernel
    p = "subsampling.layers"
    shapes = {f"{p}.0.weight": (c, 1, k, k), f"{p}.0.bias": (c,)}
    for i in range(config.sub_layers - 1):
        shapes |= {f"{p}.{2 + 3 * i}.weight": (c, 1, k, k), f"{p}.{2 + 3 * i}.bias": (c,)}
        shapes |= {f"{p}.{3 + 3 * i}.weight": (c, c, 1, 1), f"{p}.{3 + 3 * i}.bias": (c,)}
    shapes |= {"subsampling.linear.weight": (w, c * config.sub_mels), "subsampling.linear.bias": (w,)}
    ab, cb = config.attention_bias, config.convolution_bias
    for i in range(config.n_layer):
        q = f"layers.{i}"
        for name in ("norm_feed_forward1", "norm_self_att", "norm_conv", "norm_feed_forward2", "norm_out"):
            shapes |= {f"{q}.{name}.weight": (w,), f"{q}.{name}.bias": (w,)}
        for ffn in ("feed_forward1", "feed_forward2"):
            shapes |= {f"{q}.{ffn}.linear1.weight": (f, w), f"{q}.{ffn}.linear2.weight": (w, f)}
            if ab:
                shapes |= {f"{q}.{ffn}.linear1.bias": (f,), f"{q}.{ffn}.linear2.bias": (w,)}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{q}.self_attn.{proj}.weight"] = (w, w)
            if ab:
                shapes[f"{q}.self_attn.{proj}.bias"] = (w,)
        shapes[f"{q}.self_attn.relative_k_proj.weight"] = (w, w)
        shapes |= {f"{q}.self_attn.bias_u": (config.n_head, config.head_width)}
        shapes |= {f"{q}.self_attn.bias_v": (config.n_head, config.head_width)}
        conv = f"{q}.conv"
        shapes |= {f"{conv}.pointwise_conv1.weight": (2 * w, w, 1), f"{conv}.depthwise_conv.weight": (w, 1,
                   config.conv_kernel), f"{conv}.pointwise_conv2.weight": (w, w, 1)}  # fmt: skip
        if cb:
            shapes |= {f"{conv}.pointwise_conv1.bias": (2 * w,), f"{conv}.depthwise_conv.bias": (w,),
                       f"{conv}.pointwise_conv2.bias": (w,)}  # fmt: skip
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{conv}.norm.{stat}"] = (w,)
    if config.vocab_size is not None:
        shapes |= {"ctc_head.weight": (config.vocab_size, w, 1), "ctc_head.bias": (config.vocab_size,)}
    return shapes


def random_state_dict(config: FastConformerConfig, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    """Random weights of ``config`` (norm scales and BatchNorm variances near 1), for tests and benchmarks."""

    def near_one(name: str) -> bool:
        return name.endswith(("norm.weight", "running_var")) or ".norm_" in name and "weight" in name

    return normal_state(state_shapes(config), seed, scale, near_one)
