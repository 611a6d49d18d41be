"""The speech LLMs' audio towers and projectors in Flax NNX (``engine.models.speechllm.config`` says how the three
differ). Parameter names follow transformers' (``conv1``, ``embed_positions``, ``layers.N.self_attn.q_proj``, ...).

Layers, as the family stores them (``engine.models.interface.SPEECHLLM_LAYERS``): 0 = conv stem + positions,
1..L = block outputs, all at 50 frames/s; Voxtral's L + 1 = its final ``layer_norm`` (50 frames/s too). The towers'
reduced-rate outputs (Qwen2-Audio's and Audio Flamingo 3's pooled and normed frames at 25/s) and every projector
output are computed by ``outputs`` (the parity tests and notebooks read them) and not stored yet: a layer store
holds one frame rate and one width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, scale_heads, self_attention
from engine.models.common.layers import Conv1d, FeedForward, linear, norm, param
from engine.models.speechllm.calls import asked_layers
from engine.models.speechllm.config import LN_EPS, SpeechLLMConfig

ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Block(nnx.Module):
    """One pre-LN encoder layer (``Qwen2AudioEncoderLayer``, ``VoxtralEncoderLayer``, ``AudioFlamingo3EncoderLayer``:
    one code)."""

    def __init__(self, sd: Mapping[str, np.ndarray], prefix: str, config: SpeechLLMConfig, dtype):
        a = f"{prefix}.self_attn"
        self.q = linear(sd, f"{a}.q_proj", dtype)
        self.k = linear(sd, f"{a}.k_proj", dtype, bias=False)
        self.v = linear(sd, f"{a}.v_proj", dtype)
        self.out = linear(sd, f"{a}.out_proj", dtype)
        self.attn_ln = norm(sd, f"{prefix}.self_attn_layer_norm", LN_EPS, dtype)
        self.mlp_ln = norm(sd, f"{prefix}.final_layer_norm", LN_EPS, dtype)
        self.mlp = FeedForward(sd, prefix, dtype, activation(config.activation), names=("fc1", "fc2"))
        self.heads = config.heads

    def __call__(self, x, key_valid, head_scale=None):
        """``x: f[batch, frame, width]``; ``key_valid: bool[batch, frame]`` or None (every key attended);
        ``head_scale: f[heads]`` or ``f[batch, heads]`` scales each head's output (``scale_heads``)."""
        b, t, d = x.shape
        dh = d // self.heads
        h = self.attn_ln(x)
        q = (self.q(h) * jnp.asarray(dh**-0.5, h.dtype)).reshape(b, t, self.heads, dh)
        k = self.k(h).reshape(b, t, self.heads, dh)
        v = self.v(h).reshape(b, t, self.heads, dh)
        out = self_attention(q, k, v, key_valid)
        x = x + self.out(out if head_scale is None else scale_heads(out, head_scale, self.heads))
        return x + self.mlp(self.mlp_ln(x))


class Projector(nnx.Module):
    """The module that maps tower frames into the LLM's input space (``*MultiModalProjector``)."""

    def __init__(self, sd: Mapping[str, np.ndarray], config: SpeechLLMConfig, dtype):
        p, bias = "multi_modal_projector", config.projector_bias
        self.group = config.group
        if config.projector_act is None:  # Qwen2-Audio: one linear
            self.linear_1, self.linear_2, self.act = linear(sd, f"{p}.linear", dtype, bias=bias), None, None
        else:
            self.linear_1 = linear(sd, f"{p}.linear_1", dtype, bias=bias)
            self.linear_2 = linear(sd, f"{p}.linear_2", dtype, bias=bias)
            self.act = activation(config.projector_act)

    def __call__(self, x):
        """``x: f[batch, frame, width]`` -> ``f[batch, frame // group, text_width]``."""
        b, t, d = x.shape
        if self.group > 1:  # Voxtral: reshape(-1, intermediate_size) of consecutive frames
            x = x[:, : t - t % self.group].reshape(b, t // self.group, self.group * d)
        h = self.linear_1(x)
        return h if self.linear_2 is None else self.linear_2(self.act(h))


class SpeechTower(nnx.Module):
    """A speech LLM's audio tower, and its projector when the checkpoint has one."""

    def __init__(self, config: SpeechLLMConfig, sd: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        t = "audio_tower"
        self.conv1 = Conv1d(sd[f"{t}.conv1.weight"], sd[f"{t}.conv1.bias"], 1, dtype, padding=1)
        self.conv2 = Conv1d(sd[f"{t}.conv2.weight"], sd[f"{t}.conv2.bias"], 2, dtype, padding=1)
        self.positions = param(sd[f"{t}.embed_positions.weight"], dtype)
        self.blocks = nnx.List([Block(sd, f"{t}.layers.{i}", config, dtype) for i in range(config.layers)])
        self.final_ln = norm(sd, f"{t}.layer_norm", LN_EPS, dtype)
        self.projector = Projector(sd, config, dtype) if config.has_projector else None

    @property
    def n_layers_out(self) -> int:
        """Stored layers: 0..L, and Voxtral's final norm as L + 1 (module docstring)."""
        return self.config.layers + 1 + (not self.config.pooled)

    def _check(self, mel, frames):
        expect = (self.config.n_mels, 2 * self.config.n_ctx)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expect:
            raise ShapeError(f"mel must be f32[batch, {expect[0]}, {expect[1]}] for this model, got {tuple(mel.shape)}")
        if frames.shape != mel.shape[:1]:
            raise ShapeError(f"frames must be i32[batch] beside mel {tuple(mel.shape)}, got {tuple(frames.shape)}")

    def _stem(self, mel):
        x = jax.nn.gelu(self.conv1(jnp.transpose(mel, (0, 2, 1))), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        return x + self.positions[...]

    def _key_valid(self, frames, t):
        return (jnp.arange(t)[None, :] < frames[:, None]) if self.config.masked else None

    def __call__(self, mel, frames, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """``mel: f32[batch, n_mels, 3000]``, ``frames: i32[batch]`` (valid encoder frames: the key mask of
        Qwen2-Audio and Audio Flamingo 3) -> ``f[len(layers), batch, 1500, width]`` (default every stored layer).
        Blocks past the deepest requested layer are not run. ``head_mask: f[L, heads]`` or ``f[batch, L, heads]``
        scales each head's attention output (0 ablates it)."""
        layers = asked_layers(layers, self.n_layers_out)
        frames = jnp.asarray(frames, jnp.int32)
        self._check(mel, frames)
        out_dtype = out_dtype or self.positions.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, self.config.layers, self.config.heads, len(mel))
        x = self._stem(mel)
        key_valid = self._key_valid(frames, x.shape[1])
        kept = {0: x.astype(out_dtype)}
        for i, block in enumerate(self.blocks, start=1):
            if i > max(layers):
                break
            x = block(x, key_valid, None if head_mask is None else head_mask[..., i - 1, :])
            kept[i] = x.astype(out_dtype)
        if self.config.layers + 1 in layers:
            kept[self.config.layers + 1] = self.final_ln(x).astype(out_dtype)
        return jnp.stack([kept[i] for i in layers])

    def output_states(self, mel, frames, output: str, out_dtype=None):
        """``f[1, batch, frames', width']``: the tower's ``final`` output or the ``projector``'s (``outputs``) as one
        stored layer."""
        out = self.outputs(mel, frames)[output]
        return out.astype(out_dtype or self.positions.dtype)[None]

    def outputs(self, mel, frames) -> dict:
        """Everything the tower computes, in float: ``layers`` f[L + 1, batch, 1500, width] (stem and blocks), ``final``
        (the tower's last_hidden_state: pooled and normed f[batch, 750, width], or Voxtral's normed f[batch, 1500,
        width]), ``projector`` (f[batch, frames', text_width], where the checkpoint has one) and their valid frames
        (``final_frames``, ``projector_frames``: i32[batch], as transformers counts them)."""
        frames = jnp.asarray(frames, jnp.int32)
        self._check(mel, frames)
        x = self._stem(mel)
        key_valid = self._key_valid(frames, x.shape[1])
        states = [x]
        for block in self.blocks:
            x = block(x, key_valid)
            states.append(x)
        if self.config.pooled:  # AvgPool1d(2, stride=2) over frames, then the norm
            b, t, d = x.shape
            final = self.final_ln(x[:, : t - t % 2].reshape(b, t // 2, 2, d).mean(axis=2))
            final_frames = jnp.where(frames >= 2, (frames - 2) // 2 + 1, 0)
        else:
            final, final_frames = self.final_ln(x), frames
        out = {"layers": jnp.stack(states), "final": final, "final_frames": final_frames}
        if self.projector is not None:
            out["projector"] = self.projector(final)
            out["projector_frames"] = final_frames // self.config.group
        return out
