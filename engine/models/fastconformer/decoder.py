"""Flax (NNX) Canary Transformer decoder as transformers' ``CanaryDecoder`` + ``proj_out`` build it, and its greedy
decoding with a KV cache (issue 47).

Config (``DecoderConfig``, from ``config.json``'s ``decoder_config`` with ``CanaryDecoderConfig``'s defaults, the
real model's: width 1024, 8 layers, 8 heads of 128, feed-forward 4096 with ReLU, 16384 tokens, 1024 positions).

Decoder: token embedding (no ``sqrt(width)`` scale) plus NeMo's ``FixedPositionalEncoding`` (sin and cos halves,
timescales up to ``10000 ** ((width - 2) / width)``, divided by ``sqrt(width)``), then ``embedding_layernorm``;
pre-norm blocks (``input_layernorm`` + causal self-attention, ``post_attention_layernorm`` + cross-attention over the
encoder states with their padding masked, ``final_layernorm`` + feed-forward), ``norm``, ``proj_out`` (its weight
the token embedding when ``tie_word_embeddings``, its bias always). Attention heads may be grouped
(``num_key_value_heads``), scaled by ``head_dim ** -0.5``. Layer norms use torch's default eps 1e-5.

There is no projection between encoder and decoder in transformers' ``CanaryModel``: the decoder reads
``encoder_outputs.last_hidden_state`` (layer L, the encoder has no final norm) as it is, so early exit feeds layer k
the same way (its width must be the decoder's).

Cohere ASR's decoder (``CohereAsrDecoder``, ``engine.models.fastconformer.cohere``) is this one with its sizes at the
top level of ``config.json``, positions read from the stored table ``model.decoder.pos_emb.weight`` (``positions``
set to ``stored``), and a linear ``model.decoder.proj`` from the encoder's width (``memory_width``) to the decoder's,
applied to the encoder states before every cross-attention's keys and values (``cross``); early exit reads layer k
through it too.

Greedy (``greedy``) equals ``CanaryForConditionalGeneration.generate(num_beams=1, do_sample=False)`` continuing the
prompt: each step the argmax of the logits, rows stopping at an ``eos`` id. The prompt is fed one position at a time
through the cache (transformers feeds it in one call: the same arithmetic, summed in another order, so logits agree
to float32 rounding; tests/models/fastconformer/test_canary.py bounds how far and checks no step is that close to a
tie).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError, ShapeError
from engine.models.common.layers import linear, norm, param
from engine.models.fastconformer import cohere

LN_EPS = 1e-5  # nn.LayerNorm's default: CanaryDecoder passes none
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": functools.partial(jax.nn.gelu, approximate=False), "silu": jax.nn.silu}
DEFAULTS = dict(vocab_size=16384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, hidden_act="relu", max_position_embeddings=1024, attention_bias=True,
                head_dim=128)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The decoder's dimensions and the ids generation needs (``config.json``: ``decoder_config`` and the top level)."""

    n_vocab: int
    width: int
    ffn_width: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_width: int
    activation: str
    max_positions: int
    attention_bias: bool
    tied: bool  # proj_out's weight is the token embedding (tie_word_embeddings)
    eos: tuple[int, ...]  # generation stops at any of these
    pad: int  # what transformers' generate writes after a row's eos
    start: int  # decoder_start_token_id (Canary: <|startofcontext|>, its prompt's first token; Cohere: else bos)
    memory_width: int | None = None  # Cohere ASR: the encoder width its ``proj`` maps to ``width``; None: no proj
    stored_positions: bool = False  # Cohere ASR: positions are the stored pos_emb table, not NeMo's formula

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise ValueError(f"num_attention_heads={self.n_head} is not a multiple of num_key_value_heads")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.width % 2:
            raise ValueError(f"hidden_size {self.width} must be even (sinusoidal positions)")


def decoder_config(config: Mapping, generation: Mapping | None = None, source: str = "config.json") -> DecoderConfig:
    """``DecoderConfig`` of a Canary or Cohere ASR ``config.json`` dict; ``generation``: its ``generation_config.json``
    (eos and pad ids there win, as ``generate`` reads them)."""
    is_cohere = config.get("model_type") == cohere.COHERE
    given = config if is_cohere else config.get("decoder_config") or {}
    defaults = cohere.DECODER_DEFAULTS if is_cohere else DEFAULTS
    d = {**defaults, **{k: v for k, v in given.items() if k in defaults}}
    if d["head_dim"] is None:
        d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    if d["num_key_value_heads"] is None:
        d["num_key_value_heads"] = d["num_attention_heads"]
    gen = {k: v for k, v in (generation or {}).items() if v is not None}
    eos = gen.get("eos_token_id", config.get("eos_token_id", 3))
    start = gen.get("decoder_start_token_id", config.get("decoder_start_token_id", None if is_cohere else 7))
    if start is None:  # generate's fallback: the bos token (CohereAsrConfig sets no decoder start)
        start = gen.get("bos_token_id", config.get("bos_token_id", cohere.IDS["bos_token_id"]))
    encoder = config.get("encoder_config") or {}
    try:
        return DecoderConfig(
            n_vocab=int(d["vocab_size"]), width=int(d["hidden_size"]), ffn_width=int(d["intermediate_size"]),
            n_layer=int(d["num_hidden_layers"]), n_head=int(d["num_attention_heads"]),
            n_kv_head=int(d["num_key_value_heads"]), head_width=int(d["head_dim"]), activation=str(d["hidden_act"]),
            max_positions=int(d["max_position_embeddings"]), attention_bias=bool(d["attention_bias"]),
            tied=bool(config.get("tie_word_embeddings", not is_cohere)),
            eos=tuple(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])),
            pad=int(gen.get("pad_token_id", config.get("pad_token_id", 2))),
            start=int(start),
            memory_width=int(encoder.get("hidden_size", cohere.ENCODER_DEFAULTS["hidden_size"])) if is_cohere else None,
            stored_positions=is_cohere,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        what = "Cohere ASR" if is_cohere else "Canary"
        raise CheckpointError(f"'{source}' has an unusable {what} decoder: {e}") from None


def decoder_shapes(c: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """transformers' name (under ``model.decoder.`` / ``proj_out.``) -> shape of every tensor the decoder reads."""
    w, q, kv = c.width, c.n_head * c.head_width, c.n_kv_head * c.head_width
    shapes = {"model.decoder.embed_tokens.weight": (c.n_vocab, w), "proj_out.bias": (c.n_vocab,)}
    if not c.tied:
        shapes["proj_out.weight"] = (c.n_vocab, w)
    if c.stored_positions:
        shapes["model.decoder.pos_emb.weight"] = (c.max_positions, w)
    if c.memory_width is not None:
        shapes |= {"model.decoder.proj.weight": (w, c.memory_width), "model.decoder.proj.bias": (w,)}
    for name in ("norm", "embedding_layernorm"):
        shapes |= {f"model.decoder.{name}.weight": (w,), f"model.decoder.{name}.bias": (w,)}
    for i in range(c.n_layer):
        p = f"model.decoder.layers.{i}"
        for attn in ("self_attn", "encoder_attn"):
            for m, (out, inp) in {"q": (q, w), "k": (kv, w), "v": (kv, w), "o": (w, q)}.items():
                shapes[f"{p}.{attn}.{m}_proj.weight"] = (out, inp)
                if c.attention_bias:
                    shapes[f"{p}.{attn}.{m}_proj.bias"] = (out,)
        for name in ("input_layernorm", "post_attention_layernorm", "final_layernorm"):
            shapes |= {f"{p}.{name}.weight": (w,), f"{p}.{name}.bias": (w,)}
        shapes |= {f"{p}.mlp.fc1.weight": (c.ffn_width, w), f"{p}.mlp.fc1.bias": (c.ffn_width,)}
        shapes |= {f"{p}.mlp.fc2.weight": (w, c.ffn_width), f"{p}.mlp.fc2.bias": (w,)}
    return shapes


def positions(length: int, channels: int) -> np.ndarray:
    """``CanaryPositionalEmbedding``'s table divided by ``sqrt(channels)``: f32[length, channels]."""
    max_timescale = 10000 ** ((channels - 2) / channels)
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return (np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1) / math.sqrt(channels)).astype(np.float32)


class Attention(nnx.Module):
    def __init__(self, sd, prefix: str, c: DecoderConfig, dtype):
        self.q, self.k, self.v, self.o = (linear(sd, f"{prefix}.{m}_proj", dtype, c.attention_bias) for m in "qkvo")
        self.n_head, self.n_kv_head, self.head_width = c.n_head, c.n_kv_head, c.head_width

    def heads(self, x, n):
        """f[b, t, n * hw] -> f[b, n, t, hw]."""
        b, t, _ = x.shape
        return jnp.transpose(x.reshape(b, t, n, self.head_width), (0, 2, 1, 3))

    def kv(self, x):
        return self.heads(self.k(x), self.n_kv_head), self.heads(self.v(x), self.n_kv_head)

    def attend(self, x, k, v, mask):
        """x f[b, q, width], k/v f[b, kv_head, key, hw], mask bool broadcast to [b, 1, q, key] -> f[b, q, width]."""
        q = self.heads(self.q(x), self.n_head) * jnp.asarray(self.head_width**-0.5, x.dtype)
        b, h, t, hw = q.shape
        q = q.reshape(b, self.n_kv_head, h // self.n_kv_head, t, hw)  # grouped heads share their key/value head
        logits = jnp.einsum("bgrqd,bgkd->bgrqk", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bgrqk,bgkd->bgrqd", weights, v).reshape(b, h, t, hw)
        return self.o(jnp.transpose(out, (0, 2, 1, 3)).reshape(b, t, h * hw))


class Block(nnx.Module):
    def __init__(self, sd, prefix: str, c: DecoderConfig, dtype):
        self.ln1, self.ln2, self.ln3 = (
            norm(sd, f"{prefix}.{n}", LN_EPS, dtype)
            for n in ("input_layernorm", "post_attention_layernorm", "final_layernorm")
        )
        self.self_attn = Attention(sd, f"{prefix}.self_attn", c, dtype)
        self.cross_attn = Attention(sd, f"{prefix}.encoder_attn", c, dtype)
        self.fc1, self.fc2 = linear(sd, f"{prefix}.mlp.fc1", dtype), linear(sd, f"{prefix}.mlp.fc2", dtype)
        self.activation = ACTIVATIONS[c.activation]

    def __call__(self, x, self_k, self_v, self_mask, cross_k, cross_v, cross_mask):
        x = x + self.self_attn.attend(self.ln1(x), self_k, self_v, self_mask)
        x = x + self.cross_attn.attend(self.ln2(x), cross_k, cross_v, cross_mask)
        return x + self.fc2(self.activation(self.fc1(self.ln3(x))))


class CanaryDecoder(nnx.Module):
    """The decoder and ``proj_out``; ``state_dict`` holds ``decoder_shapes(config)`` under transformers' names."""

    def __init__(self, config: DecoderConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        self.config = c = config
        sd, p = state_dict, "model.decoder"
        self.embedding = param(sd[f"{p}.embed_tokens.weight"], dtype)
        if c.stored_positions:  # Cohere ASR: an nn.Embedding, trained (a parameter here too)
            self.positions = param(sd[f"{p}.pos_emb.weight"], dtype)
        else:  # NeMo's fixed table: a constant
            self.positions = nnx.Variable(jnp.asarray(positions(c.max_positions, c.width)))
        self.memory_proj = None if c.memory_width is None else linear(sd, f"{p}.proj", dtype)
        self.embed_norm = norm(sd, f"{p}.embedding_layernorm", LN_EPS, dtype)
        self.blocks = nnx.List([Block(sd, f"{p}.layers.{i}", c, dtype) for i in range(c.n_layer)])
        self.final_norm = norm(sd, f"{p}.norm", LN_EPS, dtype)
        self.out_weight = None if c.tied else param(sd["proj_out.weight"], dtype)
        self.out_bias = param(sd["proj_out.bias"], dtype)

    def embed(self, tokens, start):
        """tokens i32[b, n] at positions ``start..start+n-1`` -> f[b, n, width]."""
        x = self.embedding[...][tokens]
        pos = jax.lax.dynamic_slice_in_dim(self.positions[...], start, tokens.shape[1]).astype(x.dtype)
        return self.embed_norm(x + pos)

    def project(self, x):
        """Final norm and ``proj_out``: f[..., width] -> f32[..., vocab]."""
        w = self.embedding[...] if self.out_weight is None else self.out_weight[...]
        x = self.final_norm(x)
        return (jnp.einsum("...d,vd->...v", x, w.astype(x.dtype)) + self.out_bias[...]).astype(jnp.float32)

    def cross(self, memory, valid):
        """memory f[b, frame, memory width], valid i32[b] -> per block (keys, values), and the key mask bool[b, 1, 1,
        frame] (the frames past ``valid`` masked). Cohere ASR's ``proj`` maps the memory to the decoder's width
        first."""
        width = self.config.memory_width or self.config.width
        if memory.ndim != 3 or memory.shape[-1] != width:
            raise ShapeError(f"memory must be f[batch, frame, {width}], got {tuple(memory.shape)}")
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)
        mask = (jnp.arange(memory.shape[1])[None] < valid[:, None])[:, None, None, :]
        return [block.cross_attn.kv(memory) for block in self.blocks], mask

    def logits(self, tokens, memory, valid):
        """Teacher forcing: tokens i32[b, n], memory f[b, frame, width], valid i32[b] -> f32[b, n, vocab], position
        ``i`` scoring the token after ``tokens[:, :i+1]`` (transformers' ``logits``)."""
        n = tokens.shape[1]
        causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
        cross, cross_mask = self.cross(memory, valid)
        x = self.embed(tokens, 0)
        for block, (ck, cv) in zip(self.blocks, cross, strict=True):
            k, v = block.self_attn.kv(block.ln1(x))
            x = block(x, k, v, causal, ck, cv, cross_mask)
        return self.project(x)

    def step(self, tokens, t, cache, cross, cross_mask):
        """tokens i32[b] at position ``t``; cache f[layer, 2, b, kv_head, total, hw] -> (logits f32[b, vocab] of the
        token after, the cache with position ``t`` filled)."""
        x = self.embed(tokens[:, None], t)
        mask = (jnp.arange(cache.shape[4]) <= t)[None, None, None, :]
        layers = []
        for i, (block, (ck, cv)) in enumerate(zip(self.blocks, cross, strict=True)):
            k_new, v_new = block.self_attn.kv(block.ln1(x))
            k = jax.lax.dynamic_update_slice_in_dim(cache[i, 0], k_new, t, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cache[i, 1], v_new, t, axis=2)
            layers.append(jnp.stack([k, v]))
            x = block(x, k, v, mask, ck, cv, cross_mask)
        return self.project(x[:, 0]), jnp.stack(layers)

    def greedy(self, prompt, memory, valid, max_tokens: int):
        """prompt i32[b, p], memory f[b, frame, width], valid i32[b] -> (tokens i32[b, max_tokens], n i32[b]):
        ``tokens[r, :n[r]]`` follow the prompt, eos excluded; the rest is eos. Trace under ``jax.jit``."""
        c = self.config
        b, p = prompt.shape
        total = p + max_tokens
        if total > c.max_positions:
            raise ShapeError(f"{p} prompt + {max_tokens} new tokens exceed the decoder's {c.max_positions} positions")
        cross, cross_mask = self.cross(memory, valid)
        cache = jnp.zeros((c.n_layer, 2, b, c.n_kv_head, total, c.head_width), self.embedding.dtype)
        eos = jnp.asarray(c.eos, jnp.int32)

        def step(carry):
            t, token, cache, out, done = carry
            logits, cache = self.step(token, t, cache, cross, cross_mask)
            best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            in_prompt = t + 1 < p  # inside the prompt the next prompt token is fed; after it, the argmax
            nxt = jnp.where(in_prompt, prompt[:, jnp.minimum(t + 1, p - 1)], jnp.where(done, eos[0], best))
            out = jnp.where(in_prompt, out, jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], t + 1 - p, axis=1))
            done = done | (~in_prompt & jnp.isin(nxt, eos))
            return t + 1, nxt, cache, out, done

        def more(carry):
            t, _, _, _, done = carry
            return (t + 1 < total) & ~jnp.all(done)

        out = jnp.full((b, max_tokens), eos[0], jnp.int32)
        init = (jnp.int32(0), prompt[:, 0], cache, out, jnp.zeros(b, bool))
        _, _, _, out, _ = jax.lax.while_loop(more, step, init)
        ended = jnp.concatenate([jnp.isin(out, eos), jnp.ones((b, 1), bool)], axis=1)
        return out, jnp.argmax(ended, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_tokens"))
def greedy_fn(graphdef, state, prompt, memory, valid, *, max_tokens):
    """Jitted ``CanaryDecoder.greedy`` on a split model (one compilation per shape and length)."""
    return nnx.merge(graphdef, state).greedy(prompt, memory, valid, max_tokens)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def avg_logprob_fn(graphdef, state, prompt, ids, lengths, memory, valid):
    """f32[b]: mean log-probability of ``ids[:, :lengths+1]`` (the text and the eos after it) after ``prompt``."""
    decoder = nnx.merge(graphdef, state)
    p = prompt.shape[1]
    logp = jax.nn.log_softmax(decoder.logits(jnp.concatenate([prompt, ids], axis=1), memory, valid), axis=-1)
    picked = jnp.take_along_axis(logp[:, p - 1 : -1], ids[..., None], axis=-1)[..., 0]
    mask = jnp.arange(ids.shape[1])[None] <= lengths[:, None]
    return (picked * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
