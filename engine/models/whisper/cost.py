"""What Whisper's encoder computes on one 30 s window, for the ``--plan`` of encode and decode (decode recomputes the
encoder from the audio).

FLOPs count a multiply-add as 2. Encoder, per 30 s window (T = 1500 positions, width d, L blocks, M mel bins):
stem ``2*3*(2T*M*d + T*d*d)``, each block ``24*T*d^2 + 4*T^2*d`` (projections, MLP, scores and weighted values).
Every window costs the full T: Whisper pads audio to 30 s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from engine.models.interface import DecoderCost, EncoderCost
from engine.models.whisper.dims import ModelDimensions

N_CTX = 1500  # encoder positions per 30 s window
N_FEATURE_FRAMES = 3000  # mel frames per window (10 ms hop)


def encoder_flops_per_window(dims: ModelDimensions) -> tuple[float, float]:
    """(stem, one block) FLOPs of one 30 s window."""
    d, t = dims.n_audio_state, dims.n_audio_ctx
    stem = 2 * 3 * (N_FEATURE_FRAMES * dims.n_mels * d + t * d * d)
    block = 24 * t * d * d + 4 * t * t * d
    return float(stem), float(block)


def encoder_cost(dims: ModelDimensions) -> EncoderCost:
    """One 30 s window through the encoder, as the family interface counts it (every window costs a full one)."""
    stem, block = encoder_flops_per_window(dims)
    return EncoderCost(front=stem, layer=block, n_layers=dims.n_audio_layer, frames=dims.n_audio_ctx,
                       n_head=dims.n_audio_head, params=encoder_params(dims),
                       input_bytes=float(dims.n_mels * N_FEATURE_FRAMES * 4))  # fmt: skip


def encoder_params(dims: ModelDimensions) -> int:
    d = dims.n_audio_state
    return 3 * dims.n_mels * d + 3 * d * d + dims.n_audio_layer * 12 * d * d


def encoder_block(dims: ModelDimensions, compute_dtype: str) -> tuple[Callable, jax.Array]:
    """``(block, x)``: one encoder block (pre-LN attention + GELU MLP, as Whisper's), jitted, and one window's input
    for it, to time on this machine (``engine.runtime.plan.timed(block, x)``); the plans scale its FLOP/s."""
    d, t, h = dims.n_audio_state, dims.n_audio_ctx, dims.n_audio_head
    dt = jnp.dtype(compute_dtype)
    keys = jax.random.split(jax.random.key(0), 5)
    w_qkv, w_o = (jax.random.normal(keys[0], (d, 3 * d), dt) * 0.02, jax.random.normal(keys[1], (d, d), dt) * 0.02)
    w_1, w_2 = (jax.random.normal(keys[2], (d, 4 * d), dt) * 0.02, jax.random.normal(keys[3], (4 * d, d), dt) * 0.02)
    x = jax.random.normal(keys[4], (1, t, d), dt)

    @jax.jit
    def block(x):
        def norm(y):
            y32 = y.astype(jnp.float32)
            return ((y32 - y32.mean(-1, keepdims=True)) * jax.lax.rsqrt(y32.var(-1, keepdims=True) + 1e-5)).astype(dt)

        q, k, v = jnp.split(norm(x) @ w_qkv, 3, axis=-1)
        q, k, v = (z.reshape(1, t, h, d // h) for z in (q, k, v))
        att = jax.nn.softmax(jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32), axis=-1).astype(dt)
        x = x + jnp.einsum("bhqk,bkhc->bqhc", att, v).reshape(1, t, d) @ w_o
        return x + jax.nn.gelu(norm(x) @ w_1, approximate=False) @ w_2

    return block, x


PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>


def decoder_flops_per_token(dims: ModelDimensions, ctx: int = N_CTX) -> float:
    """One token of one beam: self-attention and MLP projections, cross-attention queries/outputs and scores over
    ``ctx`` encoder frames, and the logits."""
    d = dims.n_text_state
    per_layer = 2 * (4 * d * d + 2 * d * d + 8 * d * d) + 4 * ctx * d + 4 * dims.n_text_ctx // 2 * d
    return float(dims.n_text_layer * per_layer + 2 * d * dims.n_vocab)


def decoder_step(dims: ModelDimensions, rows: int, compute_dtype: str) -> tuple[Callable, jax.Array, float]:
    """``(step, x, flops)``: a decoder step's matmuls on ``rows`` rows (batch x beams), jitted, its input and its
    FLOPs, to time on this machine."""
    d = dims.n_text_state
    dt = jnp.dtype(compute_dtype)
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (rows, d), dt)
    w = jax.random.normal(k[1], (d, 4 * d), dt)
    emb = jax.random.normal(k[2], (dims.n_vocab, d), dt)
    step = functools.partial(_decoder_matmuls, w=w, emb=emb)
    return step, x, 2.0 * rows * (8 * d * d + d * dims.n_vocab)


@jax.jit
def _decoder_matmuls(x, w, emb):
    # The weights are arguments: closed over, they were constants of the program (the embedding 13 MB at the tiny
    # test model's vocabulary), which XLA compiled into it, every call of decoder_step anew.
    return (jax.nn.gelu(x @ w) @ w.T) @ emb.T


def decode_cost(dims_dict: dict) -> DecoderCost:
    """What decode --plan prices of Whisper's decoder on a store of these dimensions (``ModelDimensions.to_dict()``):
    the encoder recomputed from the audio over every 30 s window, the decoder reading all its 1500 frames."""
    dims = ModelDimensions.from_dict(dims_dict)
    stem, block = encoder_flops_per_window(dims)
    d = dims.n_text_state
    return DecoderCost(
        top=dims.n_encoder_layers_out - 1, n_blocks=dims.n_audio_layer, stem=stem, block=block, window_frames=N_CTX,
        per_token=decoder_flops_per_token(dims), cross_kv=2.0 * 2 * N_CTX * d * d * dims.n_text_layer,
        weight_count=dims.n_text_layer * 16 * d * d + dims.n_vocab * d,
        cache_per_row=dims.n_text_layer * 2 * (N_CTX + dims.n_text_ctx) * d, prompt_tokens=PROMPT_TOKENS,
        encoder_block=lambda dtype: encoder_block(dims, dtype),
        decoder_step=lambda rows, dtype: decoder_step(dims, rows, dtype),
    )  # fmt: skip
