"""The USM Conformer (Gemma 3n's and Gemma 4's audio tower) in Flax NNX; ``engine.models.speechllm.usm_config`` says
what it computes and where the two differ. Tensors are read by the released names (``usm_checkpoints.names``).

Fixed shapes: a batch is ``mel f32[batch, frames, n_mels]`` (frames a multiple of 4; 30 s windows: 3000, zero past
each window's own frames) with each row's valid mel frames ``i32[batch]``. The subsampler gives ``f[batch, frames / 4,
width]``, each row's first ``ceil(valid / 4)`` valid; the frames past them are masked as keys and zeroed before each
light convolution (3n zeroes them, 4 leaves them: either way a valid frame never reads them, the convolution being
causal), so that a window's states never depend on its batch mates.

Layers (``USM_LAYERS``): 0 = the subsampler's output (the first block's input), 1..L = block outputs (each after its
block's final RMSNorm); ``outputs`` also gives the tower's output (``final``) and ``embed_audio``'s (``projector``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, scale_heads
from engine.models.common.layers import depthwise_conv, linear, param
from engine.models.speechllm.calls import asked_layers
from engine.models.speechllm.usm_checkpoints import CLIP_BOUNDS, names
from engine.models.speechllm.usm_config import GEMMA3N, SUBSAMPLING, UsmConfig, conv_length

# the eps of the RMSNorms built without one (feed-forwards, attention, the block's last); the light convolution's and
# embed_audio's take the config's rms_norm_eps
RMS_EPS = 1e-6
NEG = -1e9  # a masked logit (Gemma 4's attention_invalid_logits_value; 3n's finfo.min gives the same softmax)


def rms_norm(x, scale, eps: float):
    """``Gemma3nRMSNorm`` / ``Gemma4RMSNorm``: ``x * (mean(x^2) + eps)^-1/2 * scale`` in float32 (no scale: 1)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)
    return (y if scale is None else y * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, weight, eps: float, dtype):
        self.scale = param(weight, dtype)
        self.eps = eps

    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps)


class Clipped(nnx.Module):
    """A bias-free linear; Gemma 4's ``Gemma4ClippableLinear`` clamps its input and output to stored bounds."""

    def __init__(self, sd: Mapping[str, np.ndarray], prefix: str, dtype, clipped: bool):
        self.linear = linear(sd, f"{prefix}.linear" if clipped else prefix, dtype, bias=False)
        self.bounds = tuple(float(sd[f"{prefix}.{b}"]) for b in CLIP_BOUNDS) if clipped else None

    def __call__(self, x):
        if self.bounds is None:
            return self.linear(x)
        lo, hi, out_lo, out_hi = self.bounds
        return jnp.clip(self.linear(jnp.clip(x, lo, hi)), out_lo, out_hi)


class FeedForward(nnx.Module):
    """Half-step feed-forward: clamp, RMSNorm, linear, SiLU, linear, clamp, RMSNorm, times ``residual_weight``."""

    def __init__(self, sd, n: dict, config: UsmConfig, dtype):
        c = config
        self.pre, self.post = (RMSNorm(sd[f"{n[k]}.weight"], RMS_EPS, dtype) for k in ("pre", "post"))
        self.w1, self.w2 = (Clipped(sd, n[k], dtype, c.clipped_linears) for k in ("w1", "w2"))
        self.clip, self.weight = c.clip, c.residual_weight

    def __call__(self, x):
        h = self.w2(jax.nn.silu(self.w1(self.pre(jnp.clip(x, -self.clip, self.clip)))))
        return x + self.post(jnp.clip(h, -self.clip, self.clip)) * self.weight


class LightConv(nnx.Module):
    """RMSNorm, linear to 2 x width, GLU, causal depthwise conv, clamp, RMSNorm, SiLU, linear; residual."""

    def __init__(self, sd, n: dict, config: UsmConfig, dtype):
        c = config
        self.pre, self.conv_norm = (RMSNorm(sd[f"{n[k]}.weight"], c.norm_eps, dtype) for k in ("pre", "conv_norm"))
        self.start, self.end = (Clipped(sd, n[k], dtype, c.clipped_linears) for k in ("start", "end"))
        self.kernel = param(np.transpose(np.asarray(sd[f"{n['conv']}.weight"]), (2, 1, 0)), dtype)  # [taps, 1, ch]
        self.clip = c.clip

    def __call__(self, x):
        a, b = jnp.split(self.start(self.pre(x)), 2, axis=-1)
        h = depthwise_conv(a * jax.nn.sigmoid(b), self.kernel, None, left=self.kernel.shape[0] - 1)
        h = jax.nn.silu(self.conv_norm(jnp.clip(h, -self.clip, self.clip)))
        return x + self.end(h)


class Geometry:
    """The chunked attention's fixed index tables, from the config alone (hashable, static under jit)."""

    def __init__(self, config: UsmConfig):
        c = config
        w, ctx = np.arange(c.chunk)[:, None], np.arange(c.context)[None, :]
        lo, hi = c.distances
        distance = w + c.past - ctx  # query minus key, in frames
        self.allowed = (distance >= lo) & (distance <= hi)  # bool[chunk, context]
        # the relative-position embedding row each (query, key) reads: Transformer-XL's shift leaves row c - w
        # of the table (0 outside it; those pairs are masked)
        self.positions = (
            np.arange(c.past, -c.context_right - 1, -1) if c.kind == GEMMA3N else np.arange(c.context // 2, -1, -1)
        )
        shift = ctx - w
        self.row = np.clip(shift, 0, len(self.positions) - 1)
        self.row_valid = (shift >= 0) & (shift < len(self.positions))
        self.key = (c, self.allowed.tobytes())

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, Geometry) and self.key == other.key


def timing_signal(positions: np.ndarray, channels: int) -> np.ndarray:
    """``f32[positions, channels]``: sines then cosines, timescales 1 .. 10000 (the relative-position sinusoid)."""
    n = channels // 2
    inv = np.exp(np.arange(n) * -(math.log(1.0e4) / max(n - 1, 1))).astype(np.float32)
    t = positions.astype(np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=-1).astype(np.float32)


class ChunkedAttention(nnx.Module):
    """Queries in chunks of ``chunk`` frames over a context of ``context`` keys, content plus relative-position
    logits, soft-capped, masked to the allowed distances and the valid keys; then ``post`` (the output projection)."""

    def __init__(self, sd, n: dict, config: UsmConfig, dtype):
        c = config
        self.q, self.k, self.v, self.post = (
            Clipped(sd, n[k], dtype, c.clipped_linears) for k in ("q", "k", "v", "post")
        )
        self.pos_proj = linear(sd, n["pos"], dtype, bias=False)
        self.per_dim_scale = param(sd[n["per_dim_scale"]], dtype)
        self.config, self.geometry = c, Geometry(c)

    def __call__(self, x, key_valid, head_scale=None):
        """``x: f[batch, frame, width]``, ``key_valid: bool[batch, frame]`` -> ``f[batch, frame, width]``."""
        c, g = self.config, self.geometry
        b, t, d = x.shape
        nh, dh, w = c.heads, c.head_dim, c.chunk
        u = -(-t // w)
        q_scale = dh**-0.5 / math.log(2)  # 1 / softplus(0) = 1 / ln 2
        q = self.q(x).reshape(b, t, nh, dh) * (q_scale * jax.nn.softplus(self.per_dim_scale[...]))
        k = self.k(x).reshape(b, t, nh, dh) * c.key_scale
        v = self.v(x).reshape(b, t, nh, dh)
        q = jnp.pad(q, ((0, 0), (0, u * w - t), (0, 0), (0, 0))).reshape(b, u, w, nh, dh)
        index = np.arange(u)[:, None] * w + np.arange(c.context)[None, :]  # [u, context] into the padded keys

        def context(z):
            z = jnp.pad(z, ((0, 0), (c.past, c.context_right + w - 1), *((0, 0),) * (z.ndim - 2)))
            return z[:, index]

        kc, vc = context(k), context(v)  # f[b, u, context, nh, dh]
        valid = context(key_valid)  # bool[b, u, context]: False past the clip and in the padding
        emb = self.pos_proj(jnp.asarray(timing_signal(g.positions, d), x.dtype)).reshape(-1, nh, dh)
        rel = emb[g.row] * jnp.asarray(g.row_valid, x.dtype)[..., None, None]  # f[chunk, context, nh, dh]
        logits = jnp.einsum("buwnh,bucnh->bnuwc", q, kc) + jnp.einsum("buwnh,wcnh->bnuwc", q, rel)
        logits = jnp.tanh(logits / c.logit_cap) * c.logit_cap
        allowed = jnp.asarray(g.allowed)[None, None, None] & valid[:, None, :, None, :]
        probs = jax.nn.softmax(jnp.where(allowed, logits, NEG).astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnuwc,bucnh->buwnh", probs, vc).reshape(b, u * w, d)[:, :t]
        return self.post(out if head_scale is None else scale_heads(out, head_scale, nh))


class Block(nnx.Module):
    """``Gemma3nAudioConformerBlock`` / ``Gemma4AudioLayer``."""

    def __init__(self, sd, i: int, config: UsmConfig, dtype):
        c, n = config, names(config.kind, i)
        self.ffw_start, self.ffw_end = (FeedForward(sd, n[k], c, dtype) for k in ("ffw_start", "ffw_end"))
        self.attn_pre, self.attn_post = (
            RMSNorm(sd[f"{n[k]}.weight"], RMS_EPS, dtype) for k in ("attn_pre", "attn_post")
        )
        self.attn = ChunkedAttention(sd, n["attn"], c, dtype)
        self.lconv = LightConv(sd, n["lconv"], c, dtype)
        self.norm = RMSNorm(sd[f"{n['norm']}.weight"], RMS_EPS, dtype)
        self.clip = c.clip

    def __call__(self, x, valid, head_scale=None):
        x = self.ffw_start(x)
        h = self.attn(self.attn_pre(jnp.clip(x, -self.clip, self.clip)), valid, head_scale)
        x = x + self.attn_post(jnp.clip(h, -self.clip, self.clip))
        x = self.lconv(x * valid[..., None].astype(x.dtype))
        x = self.ffw_end(x)
        return self.norm(jnp.clip(x, -self.clip, self.clip))


def cumulative_group_norm(x, scale, eps: float):
    """``Gemma3nAudioCumulativeGroupNorm``: ``x: f[batch, time, mel, channel]`` normed by the mean and variance of every
    value of the frames up to each one (the variance summing each frame's squares about its own running mean)."""
    x32 = x.astype(jnp.float32)
    count = jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32)[None, :, None, None] * (x.shape[2] * x.shape[3])
    mean = jnp.cumsum(x32.sum((2, 3), keepdims=True), axis=1) / count
    var = jnp.cumsum(jnp.square(x32 - mean).sum((2, 3), keepdims=True), axis=1) / count
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm_no_bias(x, scale, eps: float):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class Subsampler(nnx.Module):
    """Two ``Conv2d(3x3, stride 2)`` over (time, mel), each normed and ReLU'd, then ``input_proj_linear``."""

    def __init__(self, sd, config: UsmConfig, dtype):
        n = names(config.kind)
        self.kernels = nnx.List(
            [param(np.transpose(np.asarray(sd[f"{n[f'conv{i}']}.conv.weight"]), (2, 3, 1, 0)), dtype) for i in (0, 1)]
        )  # OIHW -> HWIO, H = time, W = mel
        self.scales = nnx.List([param(sd[f"{n[f'conv{i}']}.norm.weight"], dtype) for i in (0, 1)])
        self.proj = linear(sd, n["proj"], dtype, bias=False)
        self.config = config

    def __call__(self, mel, valid):
        """``mel: f[batch, frames, n_mels]``, ``valid: i32[batch]`` -> ``f[batch, frames / 4, width]``."""
        c = self.config
        x = mel[..., None].astype(self.proj.kernel.dtype)
        for kernel, scale in zip(self.kernels, self.scales, strict=True):
            # a conv's input past the valid frames is zero: Gemma 4 masks it, 3n's clip ends there (its padding)
            x = x * (jnp.arange(x.shape[1])[None, :] < valid[:, None])[..., None, None].astype(x.dtype)
            x = jax.lax.conv_general_dilated(
                x, kernel[...], (2, 2), (c.time_padding, (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )  # fmt: skip
            if c.kind == GEMMA3N:
                x = cumulative_group_norm(x, scale[...], c.sub_eps)
            else:
                x = layer_norm_no_bias(x, scale[...], c.sub_eps)
            x, valid = jax.nn.relu(x), conv_length(valid)
        b, t, f, ch = x.shape
        return self.proj(x.reshape(b, t, f * ch))  # mel-major, channel-minor, as transformers flattens


class UsmTower(nnx.Module):
    """The tower, its output (3n: reduction; 4: ``output_proj``) and ``embed_audio``'s soft-token path."""

    def __init__(self, config: UsmConfig, sd: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        n = names(config.kind)
        self.subsampler = Subsampler(sd, config, dtype)
        self.blocks = nnx.List([Block(sd, i, config, dtype) for i in range(config.layers)])
        self.output_proj = linear(sd, n["output_proj"], dtype) if config.has_output_proj else None
        embed = "embed_audio"
        if config.has_projector:
            norm = f"{embed}.soft_embedding_norm.weight"
            self.embed_norm = RMSNorm(sd[norm], config.norm_eps, dtype) if config.kind == GEMMA3N else None
            self.embed_proj = linear(sd, f"{embed}.embedding_projection", dtype, bias=False)

    @property
    def n_layers_out(self) -> int:
        return self.config.layers + 1

    def _check(self, mel, valid):
        c = self.config
        if mel.ndim != 3 or mel.shape[2] != c.n_mels or mel.shape[1] % SUBSAMPLING:
            raise ShapeError(
                f"mel must be f32[batch, frames, {c.n_mels}], frames a multiple of {SUBSAMPLING}; got "
                f"{tuple(mel.shape)}"
            )
        if valid.shape != mel.shape[:1]:
            raise ShapeError(f"valid must be i32[batch] beside mel {tuple(mel.shape)}, got {valid.shape}")

    def _run(self, mel, valid, last: int, head_mask=None):
        """Layers 0..``last`` as a list of ``f[batch, frame, width]``, and the valid frames ``i32[batch]``."""
        valid = jnp.asarray(valid, jnp.int32)
        self._check(mel, valid)
        x = self.subsampler(mel, valid)
        frames = -(-valid // SUBSAMPLING)
        key_valid = jnp.arange(x.shape[1])[None, :] < frames[:, None]
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, self.config.layers, self.config.heads, x.shape[0])
        states = [x]
        for i, block in enumerate(self.blocks[:last]):
            x = block(x, key_valid, None if head_mask is None else head_mask[..., i, :])
            states.append(x)
        return states, frames

    def __call__(self, mel, valid, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """``mel: f32[batch, frames, n_mels]``, ``valid: i32[batch]`` -> ``f[len(layers), batch, frames / 4, width]``
        (default every layer; blocks past the deepest requested are not run)."""
        layers = asked_layers(layers, self.n_layers_out)
        out_dtype = out_dtype or self.subsampler.proj.kernel.dtype
        states, _ = self._run(mel, valid, max(layers), head_mask)
        return jnp.stack([states[i].astype(out_dtype) for i in layers])

    def output_states(self, mel, valid, output: str, out_dtype=None):
        """``f[1, batch, frame, width']``: the tower's ``final`` output or the ``projector``'s."""
        out = self.outputs(mel, valid)[output]
        return out.astype(out_dtype or self.subsampler.proj.kernel.dtype)[None]

    def outputs(self, mel, valid) -> dict:
        """``layers`` f[L + 1, batch, frame, width], ``final`` (3n: block L's every ``reduction``-th frame, zero past
        the valid ones; 4: ``output_proj``), ``projector`` (``embed_audio``: what the LLM reads), and the valid frames
        ``frames`` and ``final_frames`` i32[batch]."""
        c = self.config
        states, frames = self._run(mel, valid, c.layers)
        x, final_frames = states[-1], -(-frames // c.reduction)
        if c.has_output_proj:
            x = self.output_proj(x)
        x = x[:, :: c.reduction]
        x = jnp.where((jnp.arange(x.shape[1])[None, :] < final_frames[:, None])[..., None], x, 0)
        out = {"layers": jnp.stack(states), "final": x, "frames": frames, "final_frames": final_frames}
        if c.has_projector:
            if c.kind == GEMMA3N:  # soft_embedding_norm, projection, embedding_post_projection_norm (no scale)
                projected = rms_norm(self.embed_proj(self.embed_norm(x)), None, c.norm_eps)
            else:  # embedding_pre_projection_norm (no scale), projection
                projected = self.embed_proj(rms_norm(x, None, c.norm_eps))
            out |= {"projector": projected, "projector_frames": final_frames}
        return out
