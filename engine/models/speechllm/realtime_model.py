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
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, scale_heads
from engine.models.common.layers import head_major, linear, param
from engine.models.speechllm.calls import asked_layers
from engine.models.speechllm.realtime_config import CONV_STRIDE, RealtimeConfig
from engine.models.speechllm.usm_model import RMSNorm

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


@functools.cache
def band(frames: int, window: int) -> np.ndarray:
    """``bool[query, key]``: causal within ``window`` keys (the query's own included), transformers'
    ``create_sliding_window_causal_mask``: ``query - window < key <= query``."""
    q, k = np.arange(frames)[:, None], np.arange(frames)[None, :]
    return (k <= q) & (k > q - window)


def banded_attention(q, k, v, window: int, batched: bool | None = None):
    """``q, k, v: f[b, t, h, dh]`` (q already scaled) -> ``f[b, t, h * dh]``, each query over its ``window`` keys. On
    CPU one head of one row at a time (``jax.lax.map``, as ``engine.models.common.attention``), so that each ``t x t``
    block of logits stays in cache; elsewhere every head at once (``batched``: force either, for the tests)."""
    b, t, h, dh = q.shape
    allowed = jnp.asarray(band(t, window))
    low = jnp.finfo(jnp.float32).min

    def one(args):
        qi, ki, vi = args  # f[t, dh]
        logits = jnp.where(allowed, jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32), low)
        weights = jax.nn.softmax(logits, axis=-1).astype(vi.dtype)
        return jnp.einsum("qk,kd->qd", weights, vi)

    if not (jax.default_backend() != "cpu" if batched is None else batched):
        out = jax.lax.map(one, tuple(head_major(x).reshape(b * h, t, dh) for x in (q, k, v)))
        return head_major(out.reshape(b, h, t, dh)).reshape(b, t, h * dh)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.where(allowed[None, None], logits, low), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, h * dh)


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
