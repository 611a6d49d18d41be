"""The Qwen3 audio encoder (Qwen3-ASR, Qwen3-Omni's AuT) in Flax NNX; ``engine.models.speechllm.qwen3_config`` says
what it computes. Parameter names follow the released checkpoints' (``conv2d1``, ``conv_out``, ``layers.N.self_attn``,
``ln_post``, ``proj1``, ``proj2``) under ``audio_tower.``.

Fixed shapes: a batch is ``mel f32[batch, n_mels, frames]`` (30 s windows: 3000 mel frames, 30 chunks) with each
row's valid mel frames; every chunk runs through the downsampler, giving ``f[batch, chunks * 13, width]`` whose first
``frames_of(mel_frames)`` frames are the clip's (the valid frames transformers packs, in the same order). The frames
are then laid out as attention windows, ``f[batch * windows, 104, width]``, with the frames past each clip masked as
keys: the block-diagonal attention of transformers' ``cu_seqlens``, whose windows are aligned with the chunks.

Layers (``QWEN3_LAYERS``): 0 = the downsampler's output (three convolutions, ``conv_out``, positions), 1..L = block
outputs, L + 1 = ``ln_post``; ``outputs`` also gives the projection's (``proj1``, GELU, ``proj2``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask
from engine.models.common.layers import Conv1d, FeedForward, linear, norm, param
from engine.models.speechllm.calls import asked_layers
from engine.models.speechllm.model import Block as SpeechBlock
from engine.models.speechllm.qwen3_config import LN_EPS, Qwen3AudioConfig, frames_of, pooled_frames

TOWER = "audio_tower"


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


@functools.cache
def sinusoids(length: int, channels: int) -> np.ndarray:
    """``SinusoidsPositionEmbedding``: f32[length, channels], sines then cosines, timescales 1 .. 10000."""
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


class Conv2d(nnx.Module):
    """``nn.Conv2d(k3, s2, p1)`` on ``x: f[batch, mel, time, in]`` (NHWC: mels as height, time as width).

    On CPU, a layer with more than one input channel runs as the sum of its 9 taps, each a strided slice times a
    ``[in, out]`` matrix: XLA:CPU's convolution took 10.4-11.1 s for conv2d2 of two 30 s windows at the released 480
    channels where the taps took 6.3-7.8 s (2 cores under load, 2026-11-27; equal to 2e-6 of the peak)."""

    def __init__(self, weight, bias, dtype):
        self.kernel = param(np.transpose(np.asarray(weight), (2, 3, 1, 0)), dtype)  # OIHW -> HWIO
        self.bias = param(bias, dtype)

    def __call__(self, x):
        x, k = x.astype(self.kernel.dtype), self.kernel[...]
        if jax.default_backend() != "cpu" or x.shape[-1] == 1:
            y = jax.lax.conv_general_dilated(
                x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )  # fmt: skip
            return y + self.bias[...]
        _, h, w, _ = x.shape
        ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = self.bias[...]
        for a in range(3):
            for b in range(3):
                y = y + jnp.dot(xp[:, a : a + 2 * ho - 1 : 2, b : b + 2 * wo - 1 : 2], k[a, b])
        return y


class Block(SpeechBlock):
    """``Qwen3OmniMoeAudioEncoderLayer``: pre-LN attention (biased q, k, v, out) and feed-forward, called as the other
    towers' ``model.Block`` (``x: f[windows, frame, width]``, ``key_valid: bool[windows, frame]``)."""

    def __init__(self, sd: Mapping[str, np.ndarray], prefix: str, config: Qwen3AudioConfig, dtype):
        a = f"{prefix}.self_attn"
        self.q, self.v = linear(sd, f"{a}.q_proj", dtype), linear(sd, f"{a}.v_proj", dtype)
        self.k = linear(sd, f"{a}.k_proj", dtype, bias=config.key_bias)
        self.out = linear(sd, f"{a}.out_proj", dtype)
        self.attn_ln = norm(sd, f"{prefix}.self_attn_layer_norm", LN_EPS, dtype)
        self.mlp_ln = norm(sd, f"{prefix}.final_layer_norm", LN_EPS, dtype)
        self.mlp = FeedForward(sd, prefix, dtype, gelu, names=("fc1", "fc2"))
        self.heads = config.heads


class Qwen3AudioTower(nnx.Module):
    """The tower and its output projection."""

    def __init__(self, config: Qwen3AudioConfig, sd: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        t = TOWER
        if config.conv_channels:  # Qwen3: three Conv2d, then conv_out
            self.convs = nnx.List(
                [Conv2d(sd[f"{t}.conv2d{i}.weight"], sd[f"{t}.conv2d{i}.bias"], dtype) for i in (1, 2, 3)]
            )
            self.conv_out = linear(sd, f"{t}.conv_out", dtype, bias=False)
        else:  # Qwen2.5-Omni: Whisper's stem, per chunk
            self.conv1 = Conv1d(sd[f"{t}.conv1.weight"], sd[f"{t}.conv1.bias"], 1, dtype, padding=1)
            self.conv2 = Conv1d(sd[f"{t}.conv2.weight"], sd[f"{t}.conv2.bias"], 2, dtype, padding=1)
        self.blocks = nnx.List([Block(sd, f"{t}.layers.{i}", config, dtype) for i in range(config.layers)])
        self.ln_post = norm(sd, f"{t}.ln_post", LN_EPS, dtype)
        two = config.has_projector and not config.pooled
        self.proj1 = linear(sd, f"{t}.proj1" if two else f"{t}.proj", dtype) if config.has_projector else None
        self.proj2 = linear(sd, f"{t}.proj2", dtype) if two else None

    @property
    def n_layers_out(self) -> int:
        """0..L, and ``ln_post`` as L + 1 where it runs at the blocks' rate (not Qwen2.5-Omni's, after pooling)."""
        return self.config.layers + 1 + (not self.config.pooled)

    def _check(self, mel, mel_frames):
        c = self.config
        if mel.ndim != 3 or mel.shape[1] != c.n_mels or mel.shape[2] % c.chunk:
            raise ShapeError(
                f"mel must be f32[batch, {c.n_mels}, frames], frames a multiple of {c.chunk}; got {tuple(mel.shape)}"
            )
        if mel_frames.shape != mel.shape[:1]:
            raise ShapeError(f"mel_frames must be i32[batch] beside mel {tuple(mel.shape)}, got {mel_frames.shape}")

    def downsample(self, mel, mel_frames):
        """``f[batch, chunks * 13, width]``: every chunk's frames, positions added (layer 0)."""
        c = self.config
        b, m, t = mel.shape
        n = t // c.chunk
        if c.tail == "zeros":  # the Omni thinkers pass the valid mel frames only: the last chunk is zero-padded
            mel = jnp.where(jnp.arange(t)[None, None, :] < mel_frames[:, None, None], mel, 0)
        if not c.conv_channels:
            return self._conv1d_stem(mel, mel_frames)
        x = mel.reshape(b, m, n, c.chunk).transpose(0, 2, 1, 3).reshape(b * n, m, c.chunk, 1)
        for conv in self.convs:
            x = gelu(conv(x))
        _, f, frames, ch = x.shape
        x = jnp.transpose(x, (0, 2, 3, 1)).reshape(b * n, frames, ch * f)  # channel-major, as transformers flattens
        x = self.conv_out(x) + jnp.asarray(sinusoids(frames, c.width), x.dtype)
        return x.reshape(b, n * frames, c.width)

    def _conv1d_stem(self, mel, mel_frames):
        """Qwen2.5-Omni's stem on each chunk: conv1, GELU, zero past the chunk's valid mel frames, conv2 (stride 2),
        GELU, positions 0..99 restarting in every chunk."""
        c = self.config
        b, m, t = mel.shape
        n = t // c.chunk
        x = mel.reshape(b, m, n, c.chunk).transpose(0, 2, 3, 1).reshape(b * n, c.chunk, m)
        valid = jnp.clip(mel_frames[:, None] - c.chunk * jnp.arange(n)[None, :], 0, c.chunk).reshape(b * n)
        x = gelu(self.conv1(x)) * (jnp.arange(c.chunk)[None, :] < valid[:, None])[..., None].astype(x.dtype)
        x = gelu(self.conv2(x))
        x = x + jnp.asarray(sinusoids(x.shape[1], c.width), x.dtype)
        return x.reshape(b, n * x.shape[1], c.width)

    def _windows(self, x, mel_frames):
        """``f[batch, frame, width]`` -> attention windows ``f[batch * windows, W, width]`` and their valid keys."""
        b, t, d = x.shape
        w = self.config.window_frames
        nw = -(-t // w)
        x = jnp.pad(x, ((0, 0), (0, nw * w - t), (0, 0))).reshape(b * nw, w, d)
        valid = jnp.arange(nw * w)[None, :] < frames_of(self.config, mel_frames)[:, None]
        return x, valid.reshape(b * nw, w), nw

    def _run(self, mel, mel_frames, last: int, head_mask=None):
        """The downsampler and blocks 1..``last``: the list of layers 0..last as ``f[batch, frame, width]``."""
        mel_frames = jnp.asarray(mel_frames, jnp.int32)
        self._check(mel, mel_frames)
        x0 = self.downsample(mel, mel_frames)
        b, t, d = x0.shape
        x, key_valid, nw = self._windows(x0, mel_frames)
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, self.config.layers, self.config.heads, b)
            if head_mask.ndim == 3:  # a mask per row: each of its windows
                head_mask = jnp.repeat(head_mask, nw, axis=0)
        states = [x0]
        for i, block in enumerate(self.blocks[:last], start=1):
            x = block(x, key_valid, None if head_mask is None else head_mask[..., i - 1, :])
            states.append(x.reshape(b, -1, d)[:, :t])
        return states

    def __call__(self, mel, mel_frames, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """``mel: f32[batch, n_mels, frames]``, ``mel_frames: i32[batch]`` -> ``f[len(layers), batch, frames / chunk
        * 13, width]`` (default every stored layer; blocks past the deepest requested are not run)."""
        layers = asked_layers(layers, self.n_layers_out)
        out_dtype = out_dtype or self.ln_post.scale.dtype
        states = self._run(mel, mel_frames, min(max(layers), self.config.layers), head_mask)
        if self.config.layers + 1 in layers and not self.config.pooled:
            states.append(self.ln_post(states[-1]))
        return jnp.stack([states[i].astype(out_dtype) for i in layers])

    def output_states(self, mel, mel_frames, output: str, out_dtype=None):
        """``f[1, batch, frame, width']``: the tower's ``final`` output (``ln_post``) or the ``projector``'s."""
        out = self.outputs(mel, mel_frames)[output]
        return out.astype(out_dtype or self.ln_post.scale.dtype)[None]

    def outputs(self, mel, mel_frames) -> dict:
        """``layers`` f[n_layers_out, batch, frame, width] (downsampler, blocks, Qwen3's ``ln_post``), ``final`` (the
        tower's last hidden state before the projection: ``ln_post``'s, Qwen2.5-Omni's after pooling frame pairs),
        ``projector`` (Qwen3: proj1, GELU, proj2; Qwen2.5-Omni: proj; f[batch, frame', output_dim]) and the valid
        frames (``frames``; ``final_frames``, ``projector_frames``: i32[batch])."""
        states = self._run(mel, mel_frames, self.config.layers)
        frames = frames_of(self.config, jnp.asarray(mel_frames, jnp.int32))
        x, final_frames = states[-1], frames
        if self.config.pooled:  # (h[2i] + h[2i + 1]) / 2 over each clip's frames, then ln_post
            b, t, d = x.shape
            x, final_frames = (x[:, 0 : t - t % 2 : 2] + x[:, 1 : t - t % 2 : 2]) / 2, pooled_frames(frames)
        final = self.ln_post(x)
        layers = states if self.config.pooled else [*states, final]
        out = {"layers": jnp.stack(layers), "final": final, "frames": frames, "final_frames": final_frames}
        if self.proj1 is not None:
            projected = self.proj1(final) if self.proj2 is None else self.proj2(gelu(self.proj1(final)))
            out |= {"projector": projected, "projector_frames": final_frames}
        return out
