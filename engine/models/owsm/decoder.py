"""Flax (NNX) OWSM v3.1 decoder (ESPnet's ``TransformerDecoder``), greedy decoding with a KV cache, and the CTC head.

Decoder: token embedding ``* sqrt(width)`` plus ESPnet's sinusoidal ``PositionalEncoding``; pre-norm blocks
(``norm1`` + causal self-attention, ``norm2`` + source attention over the encoder output, ``norm3`` + ReLU
feed-forward), ``after_norm``, ``output_layer``. No memory mask: the encoder output is a full 30 s window
(``features``).

Prompt (``prompt``): ``<sos> <lang> <task> <notimestamps>``, as ``Speech2Text.__call__`` sets its hyp primer when no
previous text is given and no timestamps are predicted. A previous text of ``<na>`` ("not available") means none, both
there and in training (``ESPnetS2TModel`` drops ``<sop> prev`` when ``prev`` holds ``<na>``), so the ``<na>`` prompt
is this one.

Greedy decoding equals ESPnet's ``BeamSearch`` with ``beam_size=1``, ``ctc_weight=0`` and no length penalty: each step
takes the argmax of the decoder's log-softmax plus the ``ScoreFilter``'s ``-inf`` on timestamp tokens (``<0.00>`` ..
``<30.00>``, suppressed because the prompt holds ``<notimestamps>``). ESPnet's decoder cache holds each layer's
outputs and recomputes keys and values from them; ours caches the keys and values, the same arithmetic. ``step`` (one
position, every row) and ``suppression`` (the filter) are shared with the beam search (``engine.models.owsm.beam``).

Language identification (``language_probs``): ESPnet's ``Speech2Language``, the softmax over the language tokens of
the decoder's log-softmax after ``<sos>`` alone.

CTC head: ``ctc.ctc_lo``, a linear map from the encoder width to the vocabulary, on the encoder output (layer ``L+1``)
as ESPnet applies it; ``ctc_logits`` also takes any other layer, passed through the encoder's ``after_norm`` first (a
logit lens: blocks end in their own norm, but the head was trained on ``after_norm``'s scale).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.layers import FeedForward, linear, param
from engine.models.owsm.config import OwsmConfig
from engine.models.owsm.model import Attention, norm, sinusoids

MAX_POSITIONS = 5000  # PositionalEncoding's default max_len: the longest token sequence ESPnet's decoder takes


class DecoderBlock(nnx.Module):
    def __init__(self, sd, prefix: str, config: OwsmConfig, dtype):
        self.norm1, self.norm2, self.norm3 = (norm(sd, f"{prefix}.norm{i}", dtype) for i in (1, 2, 3))
        self.self_attn = Attention(sd, f"{prefix}.self_attn", config.n_dec_head, dtype)
        self.src_attn = Attention(sd, f"{prefix}.src_attn", config.n_dec_head, dtype)
        self.feed_forward = FeedForward(sd, f"{prefix}.feed_forward", dtype, jax.nn.relu)

    def cross_kv(self, memory):
        """memory f[batch, frame, width] -> keys and values f[batch, head, frame, head_width]."""
        return self.src_attn.heads(self.src_attn.k(memory)), self.src_attn.heads(self.src_attn.v(memory))

    def __call__(self, x, self_k, self_v, self_mask, cross_k, cross_v):
        """x: f[batch, query, width]; self_k/v: f[batch, head, key, hw] (this layer's keys so far, x's included)."""
        a = self.self_attn
        x = x + a.attend(a.heads(a.q(self.norm1(x))), self_k, self_v, self_mask)
        s = self.src_attn
        x = x + s.attend(s.heads(s.q(self.norm2(x))), cross_k, cross_v)
        return x + self.feed_forward(self.norm3(x))


class OwsmDecoder(nnx.Module):
    """The attention decoder and the CTC head. ``state_dict`` holds at least ``decoder_shapes(config)``."""

    def __init__(self, config: OwsmConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = config
        sd = state_dict
        self.embedding = param(sd["decoder.embed.0.weight"], dtype)
        self.positions = nnx.Variable(jnp.asarray(sinusoids(MAX_POSITIONS, config.width)))
        self.blocks = nnx.List(
            [DecoderBlock(sd, f"decoder.decoders.{i}", config, dtype) for i in range(config.n_dec_layer)]
        )
        self.after_norm = norm(sd, "decoder.after_norm", dtype)
        self.output_layer = linear(sd, "decoder.output_layer", dtype)
        self.ctc = linear(sd, "ctc.ctc_lo", dtype)

    def embed(self, tokens, start):
        """tokens i32[batch, n] at positions ``start..start+n-1`` -> f[batch, n, width]."""
        x = self.embedding[...][tokens] * math.sqrt(self.config.width)
        pos = jax.lax.dynamic_slice_in_dim(self.positions[...], start, tokens.shape[1])
        return x + pos.astype(x.dtype)

    def logits(self, tokens, memory):
        """Teacher forcing: tokens i32[batch, n], memory f[batch, frame, width] -> f32[batch, n, vocab], position
        ``i`` scoring the token after ``tokens[:, :i+1]`` (ESPnet's ``decoder.forward`` before any softmax)."""
        if tokens.ndim != 2 or memory.ndim != 3 or memory.shape[-1] != self.config.width:
            raise ShapeError(
                f"tokens must be i32[batch, n] and memory f[batch, frame, {self.config.width}], got "
                f"{tuple(tokens.shape)} and {tuple(memory.shape)}"
            )
        n = tokens.shape[1]
        causal = jnp.tril(jnp.ones((n, n), bool))
        x = self.embed(tokens, 0)
        for block in self.blocks:
            a = block.self_attn
            y = block.norm1(x)
            k, v = a.heads(a.k(y)), a.heads(a.v(y))
            x = block(x, k, v, causal, *block.cross_kv(memory))
        return self.output_layer(self.after_norm(x)).astype(jnp.float32)

    def init_cache(self, rows: int, total: int):
        """Zero keys and values f[layer, 2, rows, head, total, head_width] for ``total`` positions."""
        if total > MAX_POSITIONS:
            raise ShapeError(f"{total} token positions exceed the decoder's {MAX_POSITIONS}")
        h, hw = self.config.n_dec_head, self.config.width // self.config.n_dec_head
        return jnp.zeros((len(self.blocks), 2, rows, h, total, hw), self.embedding.dtype)

    def step(self, tokens, t, cache, cross):
        """One position for every row: tokens i32[rows] at position ``t``, ``cache`` (``init_cache``), ``cross`` the
        blocks' ``cross_kv`` -> (logits f32[rows, vocab] of the token after, the cache with position ``t`` filled)."""
        x = self.embed(tokens[:, None], t)
        mask = (jnp.arange(cache.shape[4]) <= t)[None, None, None, :]
        layers = []
        for i, block in enumerate(self.blocks):
            a = block.self_attn
            y = block.norm1(x)
            k = jax.lax.dynamic_update_slice_in_dim(cache[i, 0], a.heads(a.k(y)), t, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cache[i, 1], a.heads(a.v(y)), t, axis=2)
            layers.append(jnp.stack([k, v]))
            x = block(x, k, v, mask, *cross[i])
        return self.output_layer(self.after_norm(x[:, 0])).astype(jnp.float32), jnp.stack(layers)

    def suppression(self, suppress: tuple[int, int] | None):
        """f32[vocab]: ``-inf`` on ids ``suppress[0]..suppress[1]`` (ESPnet's ``ScoreFilter`` under
        ``<notimestamps>``), 0 elsewhere."""
        vocab = jnp.arange(self.config.n_vocab)
        penalty = jnp.zeros(self.config.n_vocab, jnp.float32)
        if suppress is None:
            return penalty
        return jnp.where((vocab >= suppress[0]) & (vocab <= suppress[1]), -jnp.inf, penalty)

    def greedy(self, prompt, memory, max_tokens: int, suppress: tuple[int, int] | None, eos: int):
        """prompt i32[batch, p], memory f[batch, frame, width] -> (tokens i32[batch, max_tokens], n i32[batch]).

        ``tokens[b, :n[b]]`` are the tokens after the prompt, ``<eos>`` excluded; the rest is ``eos``. ``suppress``
        ``(first, last)``: token ids that get ``-inf`` (timestamps). Trace under ``jax.jit`` (``greedy_fn``).
        """
        b, p = prompt.shape
        total = p + max_tokens
        cross = [block.cross_kv(memory) for block in self.blocks]
        cache = self.init_cache(b, total)
        penalty = self.suppression(suppress)

        def step(carry):
            t, token, cache, out, done = carry
            logits, cache = self.step(token, t, cache, cross)
            best = jnp.argmax(jax.nn.log_softmax(logits, axis=-1) + penalty, axis=-1).astype(jnp.int32)
            # Positions inside the prompt feed the next prompt token; after it, the argmax (eos once done).
            in_prompt = t + 1 < p
            nxt = jnp.where(in_prompt, prompt[:, jnp.minimum(t + 1, p - 1)], jnp.where(done, eos, best))
            gen = t + 1 - p  # index of nxt among generated tokens
            out = jnp.where(in_prompt, out, jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], gen, axis=1))
            done = done | (~in_prompt & (nxt == eos))
            return t + 1, nxt, cache, out, done

        def more(carry):
            t, _, _, _, done = carry
            return (t + 1 < total) & ~jnp.all(done)

        out = jnp.full((b, max_tokens), eos, jnp.int32)
        init = (jnp.int32(0), prompt[:, 0], cache, out, jnp.zeros(b, bool))
        _, _, _, out, _ = jax.lax.while_loop(more, step, init)
        n = jnp.argmax(jnp.concatenate([out, jnp.full((b, 1), eos, jnp.int32)], axis=1) == eos, axis=1)
        return out, n.astype(jnp.int32)

    def language_probs(self, memory, sos: int, languages: tuple[int, int]):
        """memory f[batch, frame, width] -> f32[batch, language]: ESPnet's ``Speech2Language``, the softmax over the
        language ids ``languages[0]..languages[1]`` of the decoder's log-softmax after ``<sos>`` alone."""
        tokens = jnp.full((memory.shape[0], 1), sos, jnp.int32)
        logp = jax.nn.log_softmax(self.logits(tokens, memory)[:, 0], axis=-1)
        return jax.nn.softmax(logp[:, languages[0] : languages[1] + 1], axis=-1)

    def ctc_logits(self, x):
        """Encoder states f[..., frame, width] (already through ``after_norm``) -> f32[..., frame, vocab]."""
        return self.ctc(x).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_tokens", "suppress", "eos"))
def greedy_fn(graphdef, state, prompt, memory, *, max_tokens, suppress, eos):
    """Jitted ``OwsmDecoder.greedy`` on a split model (one compilation per shape and length)."""
    return nnx.merge(graphdef, state).greedy(prompt, memory, max_tokens, suppress, eos)


@functools.partial(jax.jit, static_argnames=("graphdef", "sos", "languages"))
def language_probs_fn(graphdef, state, memory, *, sos, languages):
    """Jitted ``OwsmDecoder.language_probs`` on a split model."""
    return nnx.merge(graphdef, state).language_probs(memory, sos, languages)


def decoder_shapes(config: OwsmConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every decoder and CTC tensor, in ESPnet's names and PyTorch layouts."""
    w, f, n = config.width, config.dec_ffn_width, config.n_vocab
    shapes = {
        "decoder.embed.0.weight": (n, w),
        "decoder.after_norm.weight": (w,),
        "decoder.after_norm.bias": (w,),
        "decoder.output_layer.weight": (n, w),
        "decoder.output_layer.bias": (n,),
        "ctc.ctc_lo.weight": (n, w),
        "ctc.ctc_lo.bias": (n,),
    }
    for i in range(config.n_dec_layer):
        p = f"decoder.decoders.{i}"
        for attn in ("self_attn", "src_attn"):
            for m in ("q", "k", "v", "out"):
                shapes |= {f"{p}.{attn}.linear_{m}.weight": (w, w), f"{p}.{attn}.linear_{m}.bias": (w,)}
        for k in (1, 2, 3):
            shapes |= {f"{p}.norm{k}.weight": (w,), f"{p}.norm{k}.bias": (w,)}
        shapes |= {f"{p}.feed_forward.w_1.weight": (f, w), f"{p}.feed_forward.w_1.bias": (f,)}
        shapes |= {f"{p}.feed_forward.w_2.weight": (w, f), f"{p}.feed_forward.w_2.bias": (w,)}
    return shapes


def prompt(config: OwsmConfig, language: str, task: str) -> list[int]:
    """``<sos> <lang> <task> <notimestamps>`` ids; ``language`` like ``eng`` or ``<eng>``, ``task`` like ``asr`` or
    ``st_eng``."""
    lang, task = f"<{language.strip('<>')}>", f"<{task.strip('<>')}>"
    if lang not in config.languages():
        raise ShapeError(
            f"language '{language}' has no token in this model; it knows {len(config.languages())}, "
            f"e.g. {', '.join(config.languages()[:5])}"
        )
    if task not in config.tasks():
        raise ShapeError(f"task '{task}' has no token in this model; it knows {', '.join(config.tasks()[:6])}, ...")
    return [config.token_id("<sos>"), config.token_id(lang), config.token_id(task), config.token_id("<notimestamps>")]
