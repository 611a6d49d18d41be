"""Voxtral Realtime's audio encoder in Flax NNX; ``engine.models.speechllm.realtime_config`` says what it computes.
Parameter names follow transformers' (``embedder.conv1``, ``layers.N.self_attn.q_proj``, ``mlp.gate_proj``, ``norm``)
under ``audio_tower.``, and ``multi_modal_projector.linear_1``/``linear_2``.

Fixed shapes: a batch is ``mel f32[batch, n_mels, frames]`` (frames even; 30 s windows: 3000) with each row's valid mel
frames ``i32[batch]``; the embedder gives ``f[batch, frames / 2, width]``, each row's first ``mel_frames // 2`` valid.
Every piece is causal, so a valid frame never reads the padding after its row's clip: no key mask is needed, and a
window's states never depend on its batch mates. Positions restart at 0 in every row (each window is its own clip).

Layers (``REALTIME_LAYERS``): 0 = the embedder's output (the first block's input), 1..L = block outputs (the residual
stream), L + 1 = ``norm``'s (the tower's last hidden state); ``outputs`` also gives the projector's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, scale_heads
from engine.models.common.layers import head_major, linear, param
from engine.models.speechllm import usm_model
from engine.models.speechllm.calls import asked_layers
from engine.models.speechllm.realtime_config import CONV_STRIDE, RealtimeConfig

TOWER, PROJECTOR = "audio_tower", "multi_modal_projector"


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


@functools.cache
def rotary(frames: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` f32[frames, head_dim] of positions 0..frames-1: transformers' default RoPE (the frequencies in
    float32, each half of the head dimension holding them all), each value rounded once from float64."""
    inv = (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)
    angles = np.arange(frames, dtype=np.float32)[:, None] * inv[None, :]  # a float32 product, as torch's
    angles = np.concatenate([angles, angles], axis=1).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate(x, cos, sin):
    """``x: f[b, t, h, dh]`` rotated (``apply_rotary_pos_emb``: ``x * cos + rotate_half(x) * sin``)."""
    half = x.shape[-1] // 2
    turned = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + turned * sin[None, :, None, :]


_LOW = float(np.finfo(np.float32).min)


@functools.cache
def band(frames: int, window: int) -> np.ndarray:
    """``bool[query, key]``: causal within ``window`` keys (the query's own included), transformers'
    ``create_sliding_window_causal_mask``: ``query - window < key <= query``."""
    q, k = np.arange(frames)[:, None], np.arange(frames)[None, :]
    return (k <= q) & (k > q - window)


HEADS_AT_ONCE = 4  # the CPU's blocks: 0.38 s a layer against 0.45 for 1 head and 0.47 for 32 (4 x 1500 frames, AVX-512)


def query_block(window: int) -> int:
    """Queries a block of the CPU's banded attention takes at once: a third of the band (250 of 750 frames)."""
    return max(1, window // 3)


def banded_attention(q, k, v, window: int, batched: bool | None = None):
    """``q, k, v: f[b, t, h, dh]`` (q already scaled) -> ``f[b, t, h * dh]``, each query over its ``window`` keys.

    On CPU in blocks whose shapes do not depend on ``t``: 4 heads of one row, ``query_block`` queries (250) against
    the ``window + query_block`` keys they can see (1000; the first blocks, within ``window`` of the clip's start,
    the 250, 500 or 750 keys from the start), a block at a time (``jax.lax.map``), so that a block of logits stays in
    cache and the band's keys alone are multiplied. As every reduction runs in a block of a fixed shape, a
    frame's output does not depend on how many frames the batch holds: a batch cut to its longest window
    (``realtime_encoder.RealtimeEncoder.collate``) gives the same bits as a full 30 s one. Elsewhere every head at
    once over the whole ``t x t`` band (``batched``: force either, for the tests)."""
    b, t, h, dh = q.shape
    if (jax.default_backend() != "cpu") if batched is None else batched:
        allowed = jnp.asarray(band(t, window))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(jnp.where(allowed[None, None], logits, _LOW), axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, h * dh)
    size, g = query_block(window), math.gcd(h, HEADS_AT_ONCE)
    blocks, rows = -(-t // size), b * h // g
    tail = blocks * size - t
    qs = jnp.pad(head_major(q).reshape(rows, g, t, dh), ((0, 0), (0, 0), (0, tail), (0, 0)))
    ks, vs = (jnp.pad(head_major(x).reshape(rows, g, t, dh), ((0, 0), (0, 0), (window, tail), (0, 0))) for x in (k, v))

    def run(first: int, count: int, keys: int):
        """Blocks ``first .. first + count - 1`` of every row and head, each block's queries against the ``keys``
        keys up to its last query: f[rows, g, count * size, dh]."""
        a, j = np.arange(size)[:, None], np.arange(keys)[None, :]
        inside = jnp.asarray((j <= a + keys - size) & (j > a + keys - size - window))  # the band

        def one(i):
            r, start = i // count, (first + i % count) * size
            qi = jax.lax.dynamic_slice(qs, (r, 0, start, 0), (1, g, size, dh))[0]
            at = (r, 0, start + size - keys + window, 0)  # ks, vs hold ``window`` zeros before the clip
            ki, vi = (jax.lax.dynamic_slice(x, at, (1, g, keys, dh))[0] for x in (ks, vs))
            logits = jnp.einsum("gqd,gkd->gqk", qi, ki, preferred_element_type=jnp.float32)
            weights = jax.nn.softmax(jnp.where(inside, logits, _LOW), axis=-1).astype(vi.dtype)
            return jnp.einsum("gqk,gkd->gqd", weights, vi)

        out = jax.lax.map(one, jnp.arange(rows * count)).reshape(rows, count, g, size, dh)
        return jnp.swapaxes(out, 1, 2).reshape(rows, g, count * size, dh)

    # a block starting within ``window`` of the clip's start reads the keys from the start only, in a shape of its own
    first = min(blocks, -(-window // size))
    parts = [run(n, 1, min(n * size, window) + size) for n in range(first)]
    if blocks > first:
        parts.append(run(first, blocks - first, window + size))
    out = jnp.concatenate(parts, axis=2)[:, :, :t].reshape(b, h, t, dh)
    return head_major(out).reshape(b, t, h * dh)


def reference_banded_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int) -> np.ndarray:
    """``banded_attention``'s NumPy twin, a query at a time in float64."""
    b, t, h, dh = q.shape
    out = np.zeros((b, t, h, dh))
    for r in range(b):
        for j in range(h):
            for i in range(t):
                keys = slice(max(0, i - window + 1), i + 1)
                logits = k[r, keys, j].astype(np.float64) @ q[r, i, j].astype(np.float64)
                w = np.exp(logits - logits.max())
                out[r, i, j] = (w / w.sum()) @ v[r, keys, j]
    return out.reshape(b, t, h * dh)


def rms_norm(x, scale, eps: float):
    """``VoxtralRealtimeRMSNorm``: ``x * (mean(x^2) + eps)^-1/2 * scale`` in float32, the sum of squares taken as a
    product with a vector of ones. On CPU, XLA fuses ``jnp.mean``'s reduction with the steps after it and compiles
    that fusion per shape: the same rows normed in a shorter batch differed by 1e-6 (batches of 4 rows of 600 to
    1,000 frames against 1,500), where a product's rows do not change with the number of rows."""
    x32 = x.astype(jnp.float32)
    squares = jnp.dot(jnp.square(x32), jnp.ones((x.shape[-1], 1), jnp.float32), precision="highest")
    return (x32 * jax.lax.rsqrt(squares / x.shape[-1] + eps) * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(usm_model.RMSNorm):
    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps)


class CausalConv(nnx.Module):
    """``VoxtralRealtimeCausalConv1d`` (kernel 3) on ``x: f[batch, frame, in]``: ``kernel - stride`` zeros before the
    frames, none after, as the sum of its 3 taps (each a strided slice times an ``[in, out]`` matrix)."""

    def __init__(self, weight, bias, stride: int, dtype):
        self.kernel = param(np.transpose(np.asarray(weight), (2, 1, 0)), dtype)  # [out, in, k] -> [k, in, out]
        self.bias = param(bias, dtype)
        self.stride = stride

    def __call__(self, x):
        taps, s = self.kernel.shape[0], self.stride
        x = jnp.pad(x.astype(self.kernel.dtype), ((0, 0), (taps - s, 0), (0, 0)))
        n = (x.shape[1] - taps) // s + 1
        y = self.bias[...]
        for i in range(taps):
            y = y + jnp.dot(x[:, i : i + s * (n - 1) + 1 : s], self.kernel[i])
        return y


class Block(nnx.Module):
    """``VoxtralRealtimeEncoderLayer``: RMSNorm, rotary sliding-window attention; RMSNorm, SwiGLU feed-forward."""

    def __init__(self, sd: Mapping[str, np.ndarray], prefix: str, config: RealtimeConfig, dtype):
        a, m, eps = f"{prefix}.self_attn", f"{prefix}.mlp", config.norm_eps
        self.q, self.v, self.o = (linear(sd, f"{a}.{n}_proj", dtype) for n in ("q", "v", "o"))
        self.k = linear(sd, f"{a}.k_proj", dtype, bias=False)
        self.attn_norm = RMSNorm(sd[f"{prefix}.self_attn_layer_norm.weight"], eps, dtype)
        self.mlp_norm = RMSNorm(sd[f"{prefix}.final_layer_norm.weight"], eps, dtype)
        self.gate, self.up = (linear(sd, f"{m}.{n}_proj", dtype, bias=False) for n in ("gate", "up"))
        self.down = linear(sd, f"{m}.down_proj", dtype)
        self.heads, self.head_dim, self.window = config.heads, config.head_dim, config.window

    def __call__(self, x, cos, sin, head_scale=None):
        """``x: f[batch, frame, width]``, ``cos, sin: f[frame, head_dim]``, ``head_scale: f[heads]`` or
        ``f[batch, heads]``."""
        b, t, _ = x.shape
        h, dh = self.heads, self.head_dim
        y = self.attn_norm(x)
        q = rotate(self.q(y).reshape(b, t, h, dh), cos, sin) * jnp.asarray(dh**-0.5, y.dtype)
        k = rotate(self.k(y).reshape(b, t, h, dh), cos, sin)
        out = banded_attention(q, k, self.v(y).reshape(b, t, h, dh), self.window)
        x = x + self.o(out if head_scale is None else scale_heads(out, head_scale, h))
        y = self.mlp_norm(x)
        return x + self.down(jax.nn.silu(self.gate(y)) * self.up(y))


class RealtimeTower(nnx.Module):
    """The tower and its projector."""

    def __init__(self, config: RealtimeConfig, sd: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        t = TOWER
        self.conv1 = CausalConv(sd[f"{t}.embedder.conv1.weight"], sd[f"{t}.embedder.conv1.bias"], 1, dtype)
        self.conv2 = CausalConv(sd[f"{t}.embedder.conv2.weight"], sd[f"{t}.embedder.conv2.bias"], CONV_STRIDE, dtype)
        self.blocks = nnx.List([Block(sd, f"{t}.layers.{i}", config, dtype) for i in range(config.layers)])
        self.norm = RMSNorm(sd[f"{t}.norm.weight"], config.norm_eps, dtype)
        if config.has_projector:
            self.linear_1 = linear(sd, f"{PROJECTOR}.linear_1", dtype, bias=False)
            self.linear_2 = linear(sd, f"{PROJECTOR}.linear_2", dtype, bias=False)

    @property
    def n_layers_out(self) -> int:
        """0..L, and ``norm`` as L + 1."""
        return self.config.layers + 2

    def _check(self, mel, mel_frames):
        c = self.config
        if mel.ndim != 3 or mel.shape[1] != c.n_mels or mel.shape[2] % (CONV_STRIDE * c.group):
            raise ShapeError(
                f"mel must be f32[batch, {c.n_mels}, frames], frames a multiple of {CONV_STRIDE * c.group}; got "
                f"{tuple(mel.shape)}"
            )
        if mel_frames.shape != mel.shape[:1]:
            raise ShapeError(f"mel_frames must be i32[batch] beside mel {tuple(mel.shape)}, got {mel_frames.shape}")

    def _run(self, mel, mel_frames, last: int, head_mask=None):
        """Layers 0..``last`` as a list of ``f[batch, frame, width]``."""
        self._check(mel, jnp.asarray(mel_frames))
        c = self.config
        x = gelu(self.conv1(jnp.swapaxes(mel, 1, 2)))
        x = gelu(self.conv2(x))
        cos, sin = (jnp.asarray(a, x.dtype) for a in rotary(x.shape[1], c.head_dim, c.rope_theta))
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, c.layers, c.heads, x.shape[0])
        states = [x]
        for i, block in enumerate(self.blocks[:last]):
            x = block(x, cos, sin, None if head_mask is None else head_mask[..., i, :])
            states.append(x)
        return states

    def __call__(self, mel, mel_frames, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """``mel: f32[batch, n_mels, frames]``, ``mel_frames: i32[batch]`` -> ``f[len(layers), batch, frames / 2,
        width]`` (default every layer; blocks past the deepest requested are not run)."""
        layers = asked_layers(layers, self.n_layers_out)
        out_dtype = out_dtype or self.norm.scale.dtype
        states = self._run(mel, mel_frames, min(max(layers), self.config.layers), head_mask)
        if self.config.layers + 1 in layers:
            states.append(self.norm(states[-1]))
        return jnp.stack([states[i].astype(out_dtype) for i in layers])

    def output_states(self, mel, mel_frames, output: str, out_dtype=None):
        """``f[1, batch, frame, width']``: the tower's ``final`` output (``norm``) or the ``projector``'s."""
        out = self.outputs(mel, mel_frames)[output]
        return out.astype(out_dtype or self.norm.scale.dtype)[None]

    def outputs(self, mel, mel_frames) -> dict:
        """``layers`` f[L + 2, batch, frame, width], ``final`` (``norm``: the tower's last hidden state), ``projector``
        (4 frames joined, linear_1, GELU, linear_2: f[batch, frame / 4, text_width]) and the valid frames
        (``frames``, ``final_frames``, ``projector_frames``: i32[batch])."""
        c = self.config
        states = self._run(mel, mel_frames, c.layers)
        final = self.norm(states[-1])
        frames = jnp.asarray(mel_frames, jnp.int32) // CONV_STRIDE  # realtime_config.encoder_frames
        out = {"layers": jnp.stack([*states, final]), "final": final, "frames": frames, "final_frames": frames}
        if c.has_projector:
            b, t, d = final.shape
            joined = final.reshape(b, t // c.group, c.group * d)
            out |= {"projector": self.linear_2(gelu(self.linear_1(joined))), "projector_frames": frames // c.group}
        return out
