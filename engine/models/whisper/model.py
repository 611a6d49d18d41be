"""Flax (NNX) Whisper with OpenAI Whisper's numerics, returning every encoder layer.

Encoder layer indexing, used everywhere in babelgrid (stores, jobs, analyses):

- ``0``: the input to the first block: conv stem (conv1, GELU, conv2, GELU) plus positions.
- ``1..L``: the output of block ``i`` (the residual stream, before any final norm), ``L = n_audio_layer``.
- ``L+1``: the encoder output, ``ln_post`` applied: what the decoder consumes.

Hugging Face's ``output_hidden_states`` gives ``0..L-1`` and then ``L+1`` (it replaces the
last block's raw output by the normed one); OpenAI's model returns only ``L+1``.

Glossary of array names: ``mel: f32[batch, n_mels, 2 * n_audio_ctx]`` log-mel windows,
``states: f[layer, batch, frame, embed]`` encoder layers, ``xa: f[batch, frame, embed]``
the audio features the decoder attends to, ``tokens: i32[batch, position]``.

The modules are built from a state dict with OpenAI's names and PyTorch layouts (see
``engine.models.whisper.checkpoints.load``); linear kernels are stored transposed, ``[in, out]``. Layer norms and
softmaxes run in float32 whatever the weight dtype, as OpenAI's ``LayerNorm`` and
``qkv_attention`` do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, fused_attention, scale_heads
from engine.models.common.layers import Conv1d, LayerNorm, Linear, head_major, param
from engine.models.whisper.dims import ModelDimensions, sinusoids
from engine.models.whisper.folded import attend_folded, gradient_barrier

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which OpenAI Whisper uses
# Encoder self-attention on CPU in cache-sized head pairs (see attend_unmasked); read at trace time.
CPU_BLOCKED_ATTENTION = True


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU() default: exact erf form


class MultiHeadAttention(nnx.Module):
    def __init__(self, sd: Mapping[str, np.ndarray], prefix: str, n_head: int, dtype):
        self.n_head = n_head
        self.query = Linear(sd[f"{prefix}.query.weight"], sd[f"{prefix}.query.bias"], dtype)
        self.key = Linear(sd[f"{prefix}.key.weight"], None, dtype)
        self.value = Linear(sd[f"{prefix}.value.weight"], sd[f"{prefix}.value.bias"], dtype)
        self.out = Linear(sd[f"{prefix}.out.weight"], sd[f"{prefix}.out.bias"], dtype)

    def split_heads(self, x):
        b, t, d = x.shape
        return x.reshape(b, t, self.n_head, d // self.n_head)

    def attend(self, q, k, v, mask=None, return_logits=False):
        """q: [b, tq, h, dh], k/v: [b, tk, h, dh], mask: bool[b or 1, 1, tq, tk] (True = keep).

        Returns (out f[b, tq, h*dh], weights f32[b, h, tq, tk]): the softmax, or with ``return_logits``
        the scaled pre-softmax logits (masked keys at -inf).
        """
        dh = q.shape[-1]
        # OpenAI scales q and k by dh**-0.25 each; one dh**-0.5 on the product is the same up to rounding.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (dh**-0.5)
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        b, tq, h, _ = out.shape
        return out.reshape(b, tq, h * dh), (logits if return_logits else weights)

    def attendhead_major(self, q, k, v, mask=None, return_logits=False, keys_transposed=False):
        """``attend`` for the decoder, whose keys and values are stored head-major: ``k/v: f[bk, h, tk, dh]``, or with
        ``keys_transposed`` the keys as ``k: f[bk, h, dh, tk]`` (the cross-attention's, ``TextDecoder.cross_kv``).

        Stored that way (the cross-attention keys once per decode, the self-attention cache as it grows), a decoding
        step reads them as they lie. In the ``[b, tk, h, dh]`` layout XLA on CPU transposed the cross-attention keys
        and values of every block at every step (1.5 GB per step for a beam of 5 x 8 windows of whisper-base).
        ``q: f[b, tq, h, dh]`` with ``b = bk * g``: ``g`` consecutive query rows (the beams of one utterance) share
        one key/value row, so beam search does not copy the encoder states per beam. ``mask: bool[bk or 1, 1, tq,
        tk]``. Returns ``(out f[b, tq, h*dh], weights f32[b, h, tq, tk])`` as ``attend``.
        """
        b, tq, h, dh = q.shape
        bk, tk = k.shape[0], k.shape[3 if keys_transposed else 2]
        if b % bk:
            raise ValueError(f"{b} query rows cannot share {bk} key/value rows")
        g = b // bk
        # Every product in head-major form ("bhqd,bhkd", "bhqk,bhkd->bhqd"): with the output "bqhd" instead, XLA on
        # CPU took a slower kernel for the weights x values product of a beam: 7.2 ms against 1.3 ms for 8 utterances
        # x 8 heads x 5 beams over 1500 frames (one-off timing on the 2-core AVX-512 CPU, 2026-11-22).
        q = head_major(q.reshape(bk, g * tq, h, dh))
        # Transposed keys make the scores a plain [g*tq, dh] x [dh, tk] product per (utterance, head): cross-attention
        # of 6 layers for 8 windows x 5 beams over 1500 frames, 21.8 -> 12.9 ms a step on CPU (bench/RESULTS.md).
        spec = "bhqd,bhdk->bhqk" if keys_transposed else "bhqd,bhkd->bhqk"
        logits = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * (dh**-0.5)
        if mask is not None:
            logits = jnp.where(jnp.tile(mask, (1, 1, g, 1)) if g > 1 else mask, logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
        out = head_major(out).reshape(b, tq, h * dh)
        kept = logits if return_logits else weights
        if g > 1:
            kept = jnp.transpose(kept.reshape(bk, h, g, tq, tk), (0, 2, 1, 3, 4)).reshape(b, h, tq, tk)
        return out, kept

    def attend_unmasked(self, q, k, v):
        """``attend`` without a mask or weights, for the encoder: ``f[b, tq, h*dh]``.

        On CPU the batched form writes all ``b*h`` logit matrices (576 MB for whisper-base at batch
        8) before the softmax reads them back, so it runs at memory speed; one head of one utterance
        at a time keeps its 1500x1500 block in cache. ``bench/whisper_encoder.py --attention`` times both
        forms in one run. The heads are made head-major once per layer, so that each head's two
        products are plain matrix products on contiguous rows (with the heads in the middle, XLA
        copied each head's strided rows first). The softmax's division comes after the product
        with the values: ``t x dh`` divisions instead of ``t x t``, and one pass less over the
        logits. With the scale on ``q`` (``dh**-0.5`` is a power of two for Whisper's ``dh = 64``,
        so exact) whisper-base's outputs on four FLEURS windows stay within 2e-5 of their peak of the
        batched form's (block 1: 1e-6); the CTranslate2 parity tolerance is 2^-11 of the peak.
        Accelerators use the batched form, or cuDNN's fused kernel where switched on (``fused_attention``).
        """
        if jax.default_backend() != "cpu" or not CPU_BLOCKED_ATTENTION:
            fused = fused_attention(q, k, v, q.shape[-1] ** -0.5)  # cuDNN's where switched on (GPU, half precision)
            return self.attend(q, k, v)[0] if fused is None else fused
        b, tq, h, dh = q.shape
        tk = k.shape[1]

        def heads(x, t):  # f[b, t, h, dh] -> f[b*h, t, dh]
            return head_major(x).reshape(b * h, t, dh)

        def one(args):
            qi, ki, vi = args  # f[t, dh]: one head of one utterance
            logits = jnp.einsum("qd,kd->qk", qi, ki, preferred_element_type=jnp.float32)
            e = jnp.exp(logits - logits.max(-1, keepdims=True))
            out = jnp.einsum("qk,kd->qd", e.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
            return (out / e.sum(-1, keepdims=True)).astype(vi.dtype)

        out = jax.lax.map(one, (heads(q * jnp.asarray(dh**-0.5, q.dtype), tq), heads(k, tk), heads(v, tk)))
        return head_major(out.reshape(b, h, tq, dh)).reshape(b, tq, h * dh)


class ResidualBlock(nnx.Module):
    def __init__(self, sd, prefix: str, n_head: int, cross: bool, dtype):
        self.attn = MultiHeadAttention(sd, f"{prefix}.attn", n_head, dtype)
        self.attn_ln = LayerNorm(sd[f"{prefix}.attn_ln.weight"], sd[f"{prefix}.attn_ln.bias"], LN_EPS, dtype)
        if cross:
            self.cross_attn = MultiHeadAttention(sd, f"{prefix}.cross_attn", n_head, dtype)
            self.cross_attn_ln = LayerNorm(
                sd[f"{prefix}.cross_attn_ln.weight"], sd[f"{prefix}.cross_attn_ln.bias"], LN_EPS, dtype
            )
        else:
            self.cross_attn = None
            self.cross_attn_ln = None
        self.mlp_in = Linear(sd[f"{prefix}.mlp.0.weight"], sd[f"{prefix}.mlp.0.bias"], dtype)
        self.mlp_out = Linear(sd[f"{prefix}.mlp.2.weight"], sd[f"{prefix}.mlp.2.bias"], dtype)
        self.mlp_ln = LayerNorm(sd[f"{prefix}.mlp_ln.weight"], sd[f"{prefix}.mlp_ln.bias"], LN_EPS, dtype)

    def mlp(self, x):
        return self.mlp_out(_gelu(self.mlp_in(self.mlp_ln(x))))

    def _self_attended(self, x, head_scale=None, value_scale=None):
        h = self.attn_ln(x)
        a = self.attn
        v = a.split_heads(a.value(h))
        if value_scale is not None:  # value zeroing: each frame's value vectors (bias included) times its scale
            v = v * value_scale.astype(v.dtype)[..., None, None]
        out = a.attend_unmasked(a.split_heads(a.query(h)), a.split_heads(a.key(h)), v)
        return x + a.out(out if head_scale is None else scale_heads(out, head_scale, a.n_head))

    def encoder_block(self, x, head_scale=None, value_scale=None):
        """One encoder block; ``head_scale: f[h]`` or ``f[batch, h]`` scales each head's output (``scale_heads``);
        ``value_scale: f[batch, frame]`` scales every head's value vector of each frame (0 zeroes it: value
        zeroing, ``engine.models.common.value_zeroing``)."""
        x = self._self_attended(x, head_scale, value_scale)
        return x + self.mlp(x)

    def encoder_block_active(self, x, keep):
        """(``encoder_block(x)``, i32[4 d]: at how many frames where ``keep: bool[batch, frame]`` each feed-forward
        unit's GELU output is > 0)."""
        x = self._self_attended(x)
        hidden = _gelu(self.mlp_in(self.mlp_ln(x)))
        active = jnp.sum((hidden > 0) & keep[..., None], axis=(0, 1), dtype=jnp.int32)
        return x + self.mlp_out(hidden), active

    def encoder_block_scaled(self, x, scale):
        """``encoder_block(x)`` with each feed-forward unit's GELU output multiplied by ``scale: f[4 d]`` (1 leaves a
        unit alone, 0 switches it off): the intervention on language-selective units."""
        x = self._self_attended(x)
        return x + self.mlp_out(_gelu(self.mlp_in(self.mlp_ln(x))) * scale.astype(x.dtype))


class AudioEncoder(nnx.Module):
    def __init__(self, dims: ModelDimensions, sd: Mapping[str, np.ndarray], dtype):
        self.dims = dims
        self.conv1 = Conv1d(sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], 1, dtype, padding=1)
        self.conv2 = Conv1d(sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], 2, dtype, padding=1)
        pos = sd.get("encoder.positional_embedding")
        if pos is None:
            pos = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        self.positional_embedding = nnx.Variable(jnp.asarray(np.asarray(pos), dtype=dtype))
        self.blocks = nnx.List(
            [
                ResidualBlock(sd, f"encoder.blocks.{i}", dims.n_audio_head, False, dtype)
                for i in range(dims.n_audio_layer)
            ]
        )
        self.ln_post = LayerNorm(sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"], LN_EPS, dtype)

    def __call__(self, mel, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """mel: f32[batch, n_mels, 2*n_audio_ctx] -> states f[len(layers), batch, n_audio_ctx, embed].

        ``layers`` (default: all, ``0..L+1``) are returned in the order given. Blocks past the
        deepest requested layer are not computed, and layers not requested are not kept. ``head_mask``:
        ``f[L, heads]``, or ``f[batch, L, heads]`` for a mask per row, scales each head's attention output
        (0 ablates it; ``engine.models.common.attention.scale_heads``); None (default) computes no scaling.
        """
        dims = self.dims
        n_out = dims.n_audio_layer + 2
        layers = tuple(range(n_out)) if layers is None else tuple(int(i) for i in layers)
        for i in layers:
            if not 0 <= i < n_out:
                raise ValueError(f"encoder layer {i} out of range 0..{n_out - 1} (0 = stem, L+1 = ln_post)")
        expect = (dims.n_mels, 2 * dims.n_audio_ctx)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expect:
            raise ShapeError(f"mel must be f32[batch, {expect[0]}, {expect[1]}] for this model, got {tuple(mel.shape)}")
        out_dtype = out_dtype or self.positional_embedding.dtype
        wanted = set(layers)
        kept: dict[int, jax.Array] = {}
        x = self._stem(mel)
        deepest = max(layers)
        if 0 in wanted:
            kept[0] = x.astype(out_dtype)
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, dims.n_audio_layer, dims.n_audio_head, len(mel))
        for i, block in enumerate(self.blocks, start=1):
            if i > deepest:
                break
            x = block.encoder_block(x, None if head_mask is None else head_mask[..., i - 1, :])
            if i in wanted:
                kept[i] = x.astype(out_dtype)
        if n_out - 1 in wanted:
            kept[n_out - 1] = self.ln_post(x).astype(out_dtype)
        return jnp.stack([kept[i] for i in layers])

    def resume(self, x, first: int, layers: Sequence[int], head_mask):
        """The layers ``layers`` (each >= ``first``; L+1 = ln_post) from ``x``, the input of block ``first`` (layer
        ``first - 1``'s states, ``f[batch, n_audio_ctx, embed]``), with ``head_mask`` as ``__call__`` takes it: what
        an ablation of block ``first`` or later computes, the blocks before it shared (the heads job)."""
        dims = self.dims
        n_out = dims.n_audio_layer + 2
        head_mask = check_head_mask(head_mask, dims.n_audio_layer, dims.n_audio_head, len(x))
        kept = {}
        for i in range(first, n_out - 1):
            x = self.blocks[i - 1].encoder_block(x, head_mask[..., i - 1, :])
            kept[i] = x
        kept[n_out - 1] = self.ln_post(x)
        return jnp.stack([kept[i].astype(jnp.float32) for i in layers])

    def _stem(self, mel):
        x = jnp.transpose(mel, (0, 2, 1))
        x = _gelu(self.conv1(x))
        x = _gelu(self.conv2(x))
        return x + self.positional_embedding[...]

    def ffn_active(self, mel, frames):
        """i32[L, 4 d]: for each block, at how many valid frames each feed-forward unit is active (its GELU output
        > 0), summed over the batch: ``mel: f32[batch, n_mels, 2 n_audio_ctx]``, ``frames: i32[batch]``, the valid
        encoder frames of each row (the rest is the 30 s window's padding). The counts that language-selective
        units are ranked by (LAPE); nothing per frame is kept."""
        x = self._stem(mel)
        keep = jnp.arange(x.shape[1])[None, :] < jnp.asarray(frames)[:, None]
        counts = []
        for block in self.blocks:
            x, active = block.encoder_block_active(x, keep)
            counts.append(active)
        return jnp.stack(counts)

    def scaled_sums(self, mel, frames, scale):
        """f32[L + 2, batch, embed]: every layer's states (0 = stem, ..., L + 1 = ln_post, as ``__call__``) summed
        over each row's valid frames (``frames: i32[batch]``), with block l's feed-forward units multiplied by
        ``scale[l - 1]`` (``scale: f[L, 4 d]``; all ones is the unchanged model). Divided by ``frames`` they are the
        mean-pooled states the language-ID probe and pooled retrieval read, after switching units off."""
        x = self._stem(mel)
        keep = (jnp.arange(x.shape[1])[None, :] < jnp.asarray(frames)[:, None])[..., None]

        def summed(h):
            return jnp.sum(jnp.where(keep, h, 0), axis=1, dtype=jnp.float32)

        sums = [summed(x)]
        for block, s in zip(self.blocks, scale, strict=True):
            x = block.encoder_block_scaled(x, s)
            sums.append(summed(x))
        sums.append(summed(self.ln_post(x)))
        return jnp.stack(sums)


class TextDecoder(nnx.Module):
    def __init__(self, dims: ModelDimensions, sd: Mapping[str, np.ndarray], dtype):
        self.dims = dims
        self.token_embedding = param(sd["decoder.token_embedding.weight"], dtype)
        self.positional_embedding = param(sd["decoder.positional_embedding"], dtype)
        self.blocks = nnx.List(
            [ResidualBlock(sd, f"decoder.blocks.{i}", dims.n_text_head, True, dtype) for i in range(dims.n_text_layer)]
        )
        self.ln = LayerNorm(sd["decoder.ln.weight"], sd["decoder.ln.bias"], LN_EPS, dtype)

    def cross_kv(self, xa):
        """xa: f[batch, frame, embed] -> per block (keys f[batch, heads, head_dim, frame], values f[batch, heads,
        frame, head_dim]) (``MultiHeadAttention.attend_head_major`` with ``keys_transposed``). A decoder call with
        ``g * batch`` token rows lets each group of ``g`` consecutive rows (the beams of one utterance) attend to one
        row of these."""
        n_head, dh = self.dims.n_text_head, self.dims.n_text_state // self.dims.n_text_head

        def one(x):  # x: f[frame, embed], one utterance
            out = []
            for block in self.blocks:
                a = block.cross_attn
                w = a.key.kernel[...]
                # keys^T = W^T x^T, one product whose output is already [head, head_dim, frame]: no transpose of the
                # keys (a per-utterance product, since a batched one would need the weights copied per utterance).
                kt = jax.lax.dot_general(w, x.astype(w.dtype), (((0,), (1,)), ((), ())))
                v = a.split_heads(a.value(x)[None])[0]
                out.append((kt.reshape(n_head, dh, -1), head_major(v[None])[0]))
            return out

        return jax.lax.map(one, xa)

    def __call__(self, tokens, cross_kv, cache=None, offset=0, xa_mask=None, return_cross_attention=False, emb_t=None):
        """Run the decoder on ``tokens: i32[batch, t]`` at positions ``offset..offset+t-1``.

        ``cross_kv``: ``cross_kv(xa)`` of ``batch / g`` utterances (``g`` consecutive token rows share one), or
        ``xa: f[batch, frame, embed]`` itself for ``folded.attend_folded`` (no mask, no weights). ``cache``:
        None (no cache; tokens start at position 0 and attend causally among themselves) or a tuple of per-block
        (k, v) arrays ``f[batch, heads, length, head_dim]`` (``init_cache``) that are updated at ``offset`` and
        returned. ``xa_mask``: bool[batch / g, frame] of audio frames to attend to (None = all). ``emb_t``: the token
        embedding as ``f[embed, vocab]`` for the logits product (``graph.embedding_t``), or None.

        Returns ``(logits f32[batch, t, n_vocab], new_cache, cross_weights)``, ``cross_weights`` ``f32[layer, batch,
        heads, t, frame]`` when requested, else None: the attention weights for ``return_cross_attention=True``, the
        pre-softmax logits for ``"logits"`` (word timestamps crop frames *before* the softmax, as OpenAI's timing.py).
        """
        b, t = tokens.shape
        folded = not isinstance(cross_kv, (list, tuple))
        if folded and (xa_mask is not None or return_cross_attention):
            raise ValueError("decoder given xa itself (folded cross-attention) takes no xa_mask and returns no weights")
        emb = self.token_embedding[...]
        pos = jax.lax.dynamic_slice_in_dim(self.positional_embedding[...], offset, t, axis=0)
        x = jnp.take(emb, tokens, axis=0) + pos
        q_pos = offset + jnp.arange(t)
        if cache is None:
            self_mask = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None, None]
        else:
            k_pos = jnp.arange(cache[0][0].shape[2])
            self_mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
        cross_mask = None if xa_mask is None else xa_mask[:, None, None, :]
        new_cache = []
        cross_weights = []
        for i, block in enumerate(self.blocks):
            x = gradient_barrier(x)
            a = block.attn
            h = block.attn_ln(x)
            q = a.split_heads(a.query(h))
            k, v = head_major(a.split_heads(a.key(h))), head_major(a.split_heads(a.value(h)))
            if cache is not None:
                ck, cv = cache[i]
                k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), offset, axis=2)
                v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), offset, axis=2)
                new_cache.append((k, v))
            out, _ = a.attendhead_major(q, k, v, self_mask)
            x = x + a.out(out)
            c = block.cross_attn
            h = block.cross_attn_ln(x)
            if folded:
                out = attend_folded(c, c.split_heads(c.query(h)), cross_kv)
            else:
                xk, xv = cross_kv[i]
                out, w = c.attendhead_major(
                    c.split_heads(c.query(h)),
                    xk,
                    xv,
                    cross_mask,
                    return_logits=return_cross_attention == "logits",
                    keys_transposed=True,
                )
                if return_cross_attention:
                    cross_weights.append(w)
            x = x + c.out(out)
            x = x + block.mlp(x)
        x = self.ln(x)
        spec, w = ("btd,vd->btv", emb) if emb_t is None else ("btd,dv->btv", emb_t)  # dv: a plain product, faster
        logits = jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)
        return (
            logits,
            tuple(new_cache) if cache is not None else None,
            jnp.stack(cross_weights) if return_cross_attention else None,
        )

    def init_cache(self, batch: int, dtype=None, length: int | None = None):
        """Per-block (k, v) of ``f[batch, heads, length, head_dim]`` (head-major), zero. ``length``: the positions a
        decode can reach (prompt + new tokens; default ``n_text_ctx``). Decoding attends over the whole cache with the
        positions not yet written masked, and beam search reorders it every step: a cache sized to the decode, not to
        448 positions, saves both."""
        dims = self.dims
        dtype = dtype or self.token_embedding.dtype
        length = dims.n_text_ctx if length is None else min(int(length), dims.n_text_ctx)
        shape = (batch, dims.n_text_head, length, dims.n_text_state // dims.n_text_head)
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(dims.n_text_layer))


class Whisper(nnx.Module):
    """Whisper encoder + decoder. Build with ``Whisper(dims, state_dict, dtype)``."""

    def __init__(self, dims: ModelDimensions, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.dims = dims
        self.encoder = AudioEncoder(dims, state_dict, dtype)
        self.decoder = TextDecoder(dims, state_dict, dtype)

    def audio_features(self, mel, layer: int | None = None, apply_ln_post: bool = True):
        """The decoder's input from encoder layer ``layer`` (default ``L+1``): early exit.

        With ``apply_ln_post`` an intermediate layer ``1..L`` gets the encoder's final norm, so
        its scale matches what the decoder was trained on; layer ``L+1`` already has it.
        """
        top = self.dims.n_audio_layer + 1
        layer = top if layer is None else int(layer)
        if layer == top or not apply_ln_post:
            return self.encoder(mel, (layer,))[0]
        return self.encoder.ln_post(self.encoder(mel, (layer,))[0])
