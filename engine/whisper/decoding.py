"""Greedy decoding with a key/value cache, language detection, teacher forcing, early exit.

All functions are batched over utterances and jitted; the model travels as NNX
``(graphdef, state)`` so that one compiled program serves every call of the same shapes.

Suppression follows CTranslate2's ``Whisper.generate`` (and OpenAI's ``SuppressTokens`` /
``SuppressBlank``): ``suppress_ids`` are masked at every step, ``suppress_ids_begin`` (blank and
end-of-text) at the first sampled step only; without timestamps no timestamp rules apply.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.whisper.model import Whisper

TASKS = ("transcribe", "translate")


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # Whisper code ("en"); None = detect per utterance
    max_new_tokens: int = 224  # CTranslate2's default: min(448 // 2, 448 - prompt)
    suppress_blank: bool = True  # mask blank and end-of-text at the first sampled step
    suppress_tokens: tuple[int, ...] | None = None  # None = the checkpoint's (or OpenAI's) default set
    encoder_layer: int | None = None  # early exit: decode from this encoder layer (None = L+1)
    apply_ln_post: bool = True  # normalise an intermediate layer with ln_post before decoding

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclasses.dataclass(frozen=True)
class DecodingResult:
    tokens: list[list[int]]  # text tokens per utterance, without prompt and end-of-text
    texts: list[str]
    languages: list[str]  # Whisper codes used for the prompt (given or detected)
    language_probs: np.ndarray | None  # f32[utterance, language] when detected, in tokenizer order
    avg_logprob: np.ndarray  # f32[utterance], over sampled tokens incl. end-of-text


def _split(model: Whisper):
    return nnx.split(model)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _language_logits(graphdef, state, xa, sot, lang_ids):
    model = nnx.merge(graphdef, state)
    dec = model.decoder
    tokens = jnp.full((xa.shape[0], 1), sot, jnp.int32)
    logits, _, _ = dec(tokens, dec.cross_kv(xa))
    return jax.nn.softmax(logits[:, 0, lang_ids], axis=-1)


def language_probs(model: Whisper, xa, sot: int, lang_ids: Sequence[int]) -> np.ndarray:
    """Language probabilities ``f32[batch, len(lang_ids)]`` from the logits after ``<|startoftranscript|>``.

    ``xa: f[batch, frame, embed]`` is the decoder's audio input. Like OpenAI and CTranslate2,
    the softmax runs over the language tokens only.
    """
    graphdef, state = _split(model)
    return np.asarray(_language_logits(graphdef, state, xa, sot, jnp.asarray(lang_ids, jnp.int32)))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy(graphdef, state, xa, prompt, suppress, suppress_begin, eot, max_new_tokens):
    model = nnx.merge(graphdef, state)
    dec = model.decoder
    batch, n_prompt = prompt.shape
    kv = dec.cross_kv(xa)
    cache = dec.init_cache(batch, xa.dtype)
    logits, cache, _ = dec(prompt, kv, cache=cache, offset=0)
    neg_inf = jnp.float32(-jnp.inf)

    def pick(last_logits, first):
        logprobs = jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1)
        mask = suppress | (first & suppress_begin)
        logprobs = jnp.where(mask[None, :], neg_inf, logprobs)
        token = jnp.argmax(logprobs, axis=-1).astype(jnp.int32)
        return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]

    out = jnp.full((batch, max_new_tokens), eot, jnp.int32)
    token, logprob = pick(logits[:, -1], True)

    def cond(carry):
        step, _, done, *_ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, token, done, out, cache, total, count, logprob = carry
        token = jnp.where(done, eot, token)
        out = out.at[:, step].set(token)
        total = total + jnp.where(done, 0.0, logprob)
        count = count + (~done).astype(jnp.int32)
        done = done | (token == eot)
        logits, cache, _ = dec(token[:, None], kv, cache=cache, offset=n_prompt + step)
        token, logprob = pick(logits[:, -1], False)
        return step + 1, token, done, out, cache, total, count, logprob

    zeros = jnp.zeros((batch,), jnp.float32)
    carry = (0, token, jnp.zeros((batch,), bool), out, cache, zeros, jnp.zeros((batch,), jnp.int32), logprob)
    carry = jax.lax.while_loop(cond, body, carry)
    _, _, _, out, _, total, count, _ = carry
    return out, total / jnp.maximum(count, 1)


def greedy_decode(
    model: Whisper,
    xa,
    prompt: np.ndarray,
    *,
    eot: int,
    suppress_tokens: Sequence[int] = (),
    suppress_begin: Sequence[int] = (),
    max_new_tokens: int = 224,
) -> tuple[list[list[int]], np.ndarray]:
    """Greedy decoding of ``xa: f[batch, frame, embed]`` after ``prompt: i32[batch, p]``.

    Returns the sampled tokens per utterance (up to, not including, end-of-text) and the
    average log-probability of the sampled tokens (end-of-text included, as CTranslate2 scores).
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[0] != xa.shape[0]:
        raise ValueError(f"prompt must be i32[batch={xa.shape[0]}, p], got {prompt.shape}")
    max_new_tokens = min(max_new_tokens, model.dims.n_text_ctx - prompt.shape[1])
    vocab = model.dims.n_vocab
    suppress = np.zeros(vocab, bool)
    suppress[[t for t in suppress_tokens if 0 <= t < vocab]] = True
    begin = np.zeros(vocab, bool)
    begin[[t for t in suppress_begin if 0 <= t < vocab]] = True
    graphdef, state = _split(model)
    out, avg = _greedy(
        graphdef, state, xa, jnp.asarray(prompt), jnp.asarray(suppress), jnp.asarray(begin), eot, max_new_tokens
    )
    out = np.asarray(out)
    tokens = []
    for row in out:
        ends = np.flatnonzero(row == eot)
        tokens.append(row[: ends[0] if len(ends) else len(row)].tolist())
    return tokens, np.asarray(avg)


def heads_cross_attention(model: Whisper, xa, tokens, heads, cross=True):
    """Teacher-forced decoder on ``tokens: i32[batch, t]``: (logits f32[batch, t, vocab], the cross-attention of
    ``heads: i32[n, 2]`` as f32[batch, n, t, frame]): softmax weights (``cross=True``) or the logits before the
    softmax (``cross="logits"``). Traceable; ``teacher_forced`` is the checked, jitted entry point."""
    dec = model.decoder
    logits, _, attention = dec(tokens, dec.cross_kv(xa), return_cross_attention=cross)
    # attention: f32[layer, batch, head, t, frame] -> chosen heads f32[batch, n_heads, t, frame]
    return logits, jnp.transpose(attention[heads[:, 0], :, heads[:, 1]], (1, 0, 2, 3))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _teacher_forced(graphdef, state, xa, tokens, heads):
    return heads_cross_attention(nnx.merge(graphdef, state), xa, tokens, heads)


def teacher_forced(model: Whisper, xa, tokens: np.ndarray, heads: np.ndarray):
    """Run the decoder on known ``tokens: i32[batch, t]`` and return the cross-attention of ``heads``.

    ``heads: i32[n, 2]`` lists (decoder layer, head) pairs (a checkpoint's alignment heads).
    Returns ``(logits f32[batch, t, vocab], weights f32[batch, n, t, frame])``; the weights are
    the softmax over all ``frame``s of ``xa`` (crop and renormalise downstream as needed).
    """
    heads = np.asarray(heads, np.int32).reshape(-1, 2)
    dims = model.dims
    bad = [
        (int(h[0]), int(h[1])) for h in heads if not (0 <= h[0] < dims.n_text_layer and 0 <= h[1] < dims.n_text_head)
    ]
    if bad:
        raise ValueError(
            f"alignment heads {bad} out of range for {dims.n_text_layer} layers x {dims.n_text_head} heads"
        )
    graphdef, state = _split(model)
    logits, weights = _teacher_forced(graphdef, state, xa, jnp.asarray(tokens, jnp.int32), jnp.asarray(heads))
    return logits, weights


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "apply_ln_post"))
def _audio_features(graphdef, state, mel, layer, apply_ln_post):
    return nnx.merge(graphdef, state).audio_features(mel, layer, apply_ln_post)


def audio_features(model: Whisper, mel, layer: int | None = None, apply_ln_post: bool = True):
    """The decoder's input ``f[batch, frame, embed]`` from encoder layer ``layer`` (early exit)."""
    graphdef, state = _split(model)
    return _audio_features(graphdef, state, jnp.asarray(mel), layer, apply_ln_post)
