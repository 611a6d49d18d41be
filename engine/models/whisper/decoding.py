"""Greedy decoding and beam search with a key/value cache, language detection, teacher forcing, early exit.

All functions are batched over utterances and jitted; the model travels as NNX
``(graphdef, state)`` so that one compiled program serves every call of the same shapes. Greedy decoding and beam
search run in stages (``stages.run_stages``): the cache grows between them and finished utterances leave the batch.

Suppression follows CTranslate2's ``Whisper.generate`` (and OpenAI's ``SuppressTokens`` /
``SuppressBlank``): ``suppress_ids`` are masked at every step, ``suppress_ids_begin`` (blank and
end-of-text) at the first sampled step only; without timestamps no timestamp rules apply.

Beam search follows CTranslate2's ``BeamSearch`` (what faster-whisper runs), so that its output is comparable token
for token: each step keeps the ``2 * beam_size`` best (beam, token) continuations by cumulative log-probability; a
continuation among the first ``beam_size`` that ends in end-of-text becomes a finished hypothesis and its place goes
to the next unfinished one among the second ``beam_size``; the search stops when ``round(beam_size * patience)``
hypotheses are finished (or, with ``length_penalty == 0``, as soon as the best beam ends), and the hypothesis with the
best ``sum_logprob / n_tokens ** length_penalty`` wins (``n_tokens`` without end-of-text). ``length_penalty=1`` is
OpenAI Whisper's default ranking (``length_penalty=None``: the log-probability divided by the length); OpenAI's
Google-NMT penalty ``((5 + n) / 6) ** alpha`` is not offered. ``patience`` has Whisper's meaning (arXiv 2204.05424).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.whisper import select, stages
from engine.models.whisper.graph import embedding_t
from engine.models.whisper.graph import merge as _merge
from engine.models.whisper.graph import split as _split
from engine.models.whisper.model import Whisper
from engine.models.whisper.vocab import TASKS


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # Whisper code ("en"); None = detect per utterance
    max_new_tokens: int = 224  # CTranslate2's default: min(448 // 2, 448 - prompt)
    suppress_blank: bool = True  # mask blank and end-of-text at the first sampled step
    suppress_tokens: tuple[int, ...] | None = None  # None = the checkpoint's (or OpenAI's) default set
    encoder_layer: int | None = None  # early exit: decode from this encoder layer (None = L+1)
    apply_ln_post: bool = True  # normalise an intermediate layer with ln_post before decoding
    beam_size: int = 1  # 1 = greedy; > 1 = beam search (CTranslate2's algorithm, module docstring)
    patience: float = 1.0  # beam search stops after round(beam_size * patience) finished hypotheses
    length_penalty: float = 1.0  # rank by sum_logprob / n_tokens ** length_penalty; 0 = no normalisation

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1 (1 = greedy), got {self.beam_size}")
        if self.patience <= 0 or round(self.beam_size * self.patience) < 1:
            raise ValueError(f"patience must be > 0 with round(beam_size * patience) >= 1, got {self.patience}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")


@dataclasses.dataclass(frozen=True)
class DecodingResult:
    tokens: list[list[int]]  # text tokens per utterance, without prompt and end-of-text
    texts: list[str]
    languages: list[str]  # Whisper codes used for the prompt (given or detected)
    language_probs: np.ndarray | None  # f32[utterance, language] when detected, in tokenizer order
    avg_logprob: np.ndarray  # f32[utterance], over sampled tokens incl. end-of-text


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _language_logits(graphdef, state, xa, sot, lang_ids):
    model = _merge(graphdef, state)
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


@functools.partial(jax.jit, static_argnames=("graphdef", "length", "max_new_tokens"))
def _greedy_start(graphdef, state, emb_t, xa, prompt, suppress, suppress_begin, eot, length, max_new_tokens):
    """The cross-attention keys/values and the first carry of a greedy decode (``stages.run_stages``)."""
    dec = _merge(graphdef, state).decoder
    batch = prompt.shape[0]
    kv = dec.cross_kv(xa)
    cache = dec.init_cache(batch, xa.dtype, length=length)
    logits, cache, _ = dec(prompt, kv, cache=cache, offset=0, emb_t=emb_t)
    token, logprob = select.greedy_pick(logits[:, -1], True, suppress, suppress_begin)
    carry = dict(
        step=jnp.int32(0),
        token=token,
        done=jnp.zeros((batch,), bool),
        out=jnp.full((batch, max_new_tokens), eot, jnp.int32),
        cache=cache,
        total=jnp.zeros((batch,), jnp.float32),
        count=jnp.zeros((batch,), jnp.int32),
        logprob=logprob,
    )
    return kv, carry


@functools.partial(jax.jit, static_argnames=("graphdef", "n_prompt"), donate_argnames=("carry",))
def _greedy_stage(graphdef, state, emb_t, suppress, eot, n_prompt, kv, carry, limit, keep_above):
    """Greedy steps while ``step < limit`` and more than ``keep_above`` rows decode (``stages.run_stages``)."""
    dec = _merge(graphdef, state).decoder

    def cond(c):
        return (c["step"] < limit) & (jnp.sum(~c["done"]) > keep_above)

    def body(c):
        step, done = c["step"], c["done"]
        token = jnp.where(done, eot, c["token"])
        logits, cache, _ = dec(token[:, None], kv, cache=c["cache"], offset=n_prompt + step, emb_t=emb_t)
        next_token, next_logprob = select.greedy_pick(logits[:, -1], False, suppress)
        return dict(
            step=step + 1,
            token=next_token,
            done=done | (token == eot),
            out=c["out"].at[:, step].set(token),
            cache=cache,
            total=c["total"] + jnp.where(done, 0.0, c["logprob"]),
            count=c["count"] + (~done).astype(jnp.int32),
            logprob=next_logprob,
        )

    return jax.lax.while_loop(cond, body, carry)


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
    suppress, begin = _suppress_masks(model.dims.n_vocab, suppress_tokens, suppress_begin)
    graphdef, state = _split(model)
    emb_t = embedding_t(model)
    n_prompt = prompt.shape[1]
    prompt = jnp.asarray(prompt)
    kept = stages.run_stages(
        lambda length: _greedy_start(graphdef, state, emb_t, xa, prompt, suppress, begin, eot, length, max_new_tokens),
        functools.partial(_greedy_stage, graphdef, state, emb_t, suppress, eot, n_prompt),
        batch=len(prompt),
        n_prompt=n_prompt,
        max_new_tokens=max_new_tokens,
        keep=("out", "total", "count"),
    )
    out = kept["out"]
    avg = kept["total"] / np.maximum(kept["count"], 1).astype(np.float32)
    tokens = []
    for row in out:
        ends = np.flatnonzero(row == eot)
        tokens.append(row[: ends[0] if len(ends) else len(row)].tolist())
    return tokens, avg


def _suppress_masks(vocab: int, suppress_tokens: Sequence[int], suppress_begin: Sequence[int]):
    suppress = np.zeros(vocab, bool)
    suppress[[t for t in suppress_tokens if 0 <= t < vocab]] = True
    begin = np.zeros(vocab, bool)
    begin[[t for t in suppress_begin if 0 <= t < vocab]] = True
    return jnp.asarray(suppress), jnp.asarray(begin)


@functools.partial(jax.jit, static_argnames=("graphdef", "beam_size", "max_candidates", "length", "max_new_tokens"))
def _beam_start(graphdef, state, emb_t, xa, prompt, eot, beam_size, max_candidates, length, max_new_tokens):
    """The cross-attention keys/values and the first carry of CTranslate2's beam search (module docstring) on a
    fixed-shape batch, run by ``stages.run_stages``: an utterance that is done keeps stepping, registering nothing,
    until it is dropped between stages.

    Rows ``b * K .. b * K + K - 1`` are utterance ``b``'s beams; ``logits`` and ``cache`` lead with rows, the rest
    with utterances. The best hypothesis per utterance is ``_beam_best``'s.
    """
    dec = _merge(graphdef, state).decoder
    batch = prompt.shape[0]
    k_beam, n_hyp = beam_size, max_candidates + beam_size
    # One cross-attention key/value per utterance, shared by its beams (rows b * K .. b * K + K - 1): the decoder
    # groups them (TextDecoder.__call__), where CTranslate2 replicates its memory per beam.
    kv = dec.cross_kv(xa)
    cache = dec.init_cache(batch * k_beam, xa.dtype, length=length)
    logits, cache, _ = dec(jnp.repeat(prompt, k_beam, axis=0), kv, cache=cache, offset=0, emb_t=emb_t)
    neg_inf = jnp.float32(-jnp.inf)
    # Only beam 0 is live at the first step (CTranslate2's initialize_beam_scores): the others start at -inf.
    scores = jnp.where(jnp.arange(k_beam)[None, :] == 0, 0.0, neg_inf) * jnp.ones((batch, 1), jnp.float32)
    carry = dict(
        step=jnp.int32(0),
        logits=logits[:, -1],
        scores=scores,
        seqs=jnp.full((batch, k_beam, max_new_tokens), eot, jnp.int32),
        cache=cache,
        hyp_seqs=jnp.full((batch, n_hyp, max_new_tokens), eot, jnp.int32),
        hyp_len=jnp.zeros((batch, n_hyp), jnp.int32),
        hyp_sum=jnp.full((batch, n_hyp), neg_inf, jnp.float32),
        hyp_ended=jnp.zeros((batch, n_hyp), bool),
        n_found=jnp.zeros((batch,), jnp.int32),
        top_finished=jnp.zeros((batch,), bool),
        done=jnp.zeros((batch,), bool),
    )
    return kv, carry


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "n_prompt", "max_candidates", "max_new_tokens", "early_exit"),
    donate_argnames=("carry",),
)
def _beam_stage(
    graphdef,
    state,
    emb_t,
    suppress,
    suppress_begin,
    eot,
    n_prompt,
    max_candidates,
    max_new_tokens,
    early_exit,
    kv,
    carry,
    limit,
    keep_above,
):
    """Beam search steps while ``step < limit`` and more than ``keep_above`` utterances decode (``_beam_start``)."""
    dec = _merge(graphdef, state).decoder
    batch, k_beam = carry["scores"].shape
    n_cand, n_hyp = 2 * k_beam, carry["hyp_len"].shape[1]
    rows = batch * k_beam
    neg_inf = jnp.float32(-jnp.inf)
    b_idx = jnp.arange(batch)[:, None]

    def cond(c):
        return (c["step"] < limit) & (jnp.sum(~c["done"]) > keep_above)

    def body(c):
        step = c["step"]
        vocab = c["logits"].shape[-1]
        logprobs = jax.nn.log_softmax(c["logits"].astype(jnp.float32), axis=-1)
        mask = suppress | ((step == 0) & suppress_begin)
        logprobs = jnp.where(mask[None, :], neg_inf, logprobs).reshape(batch, k_beam, vocab)
        # The best 2K of K * vocab continuations, in two stages: the best 2K of each beam, then the best 2K of those
        # K * 2K (the same set, in the same order: ties go to the lower beam, then the lower token, in both). One
        # top_k over K * vocab became a full sort of 259k values per utterance per step in XLA on CPU: 8 windows of
        # beam 5 took 29 s with it, 4 s without (bench/decode.py: 0.42x -> 2.92x CTranslate2 with the other fixes).
        beam_best, beam_token = select.top_k_chunked(logprobs + c["scores"][:, :, None], n_cand)  # [batch, K, 2K]
        cand_score, flat = jax.lax.top_k(beam_best.reshape(batch, k_beam * n_cand), n_cand)  # sorted best first
        origin = flat // n_cand
        token = jnp.take_along_axis(beam_token.reshape(batch, k_beam * n_cand), flat, axis=1).astype(jnp.int32)
        cand_seqs = c["seqs"][b_idx, origin].at[:, :, step].set(token)  # i32[batch, 2K, T]
        is_eot = token == eot
        last = step + 1 == max_new_tokens
        live = ~c["done"][:, None]
        finished = (is_eot[:, :k_beam] | last) & live  # bool[batch, K]: registered this step
        # Register finished continuations in the next free hypothesis slots (out-of-range slots are dropped).
        slot = jnp.where(finished, c["n_found"][:, None] + jnp.cumsum(finished, axis=1) - 1, n_hyp)
        ended = is_eot[:, :k_beam]
        hyp_seqs = c["hyp_seqs"].at[b_idx, slot].set(cand_seqs[:, :k_beam], mode="drop")
        hyp_len = c["hyp_len"].at[b_idx, slot].set(jnp.where(ended, step, step + 1), mode="drop")
        hyp_sum = c["hyp_sum"].at[b_idx, slot].set(cand_score[:, :k_beam], mode="drop")
        hyp_ended = c["hyp_ended"].at[b_idx, slot].set(ended, mode="drop")
        n_found = c["n_found"] + finished.sum(axis=1)
        top_finished = c["top_finished"] | finished[:, 0]
        if early_exit:
            now_done = top_finished & (n_found >= 1)
        else:
            now_done = n_found >= max_candidates
        done = c["done"] | (now_done | last)
        # The r-th finished beam takes the r-th unfinished continuation among the second K (CTranslate2's
        # secondary candidates); with none left it keeps its own place.
        spare = k_beam + jnp.argsort(is_eot[:, k_beam:], axis=1, stable=True)  # unfinished first, in order
        n_spare = (~is_eot[:, k_beam:]).sum(axis=1, keepdims=True)
        rank = jnp.cumsum(is_eot[:, :k_beam], axis=1) - 1
        take = is_eot[:, :k_beam] & (rank < n_spare)
        pick = jnp.where(take, jnp.take_along_axis(spare, jnp.clip(rank, 0, k_beam - 1), axis=1), jnp.arange(k_beam))
        token = jnp.take_along_axis(token, pick, axis=1)
        scores = jnp.take_along_axis(cand_score, pick, axis=1)
        seqs = jnp.take_along_axis(cand_seqs, pick[:, :, None], axis=1)
        rows_from = (b_idx * k_beam + jnp.take_along_axis(origin, pick, axis=1)).reshape(rows)
        cache = jax.tree.map(lambda a: a[rows_from], c["cache"])
        logits, cache, _ = dec(token.reshape(rows, 1), kv, cache=cache, offset=n_prompt + step, emb_t=emb_t)
        return dict(
            step=step + 1,
            logits=logits[:, -1],
            scores=scores,
            seqs=seqs,
            cache=cache,
            hyp_seqs=hyp_seqs,
            hyp_len=hyp_len,
            hyp_sum=hyp_sum,
            hyp_ended=hyp_ended,
            n_found=n_found,
            top_finished=top_finished,
            done=done,
        )

    return jax.lax.while_loop(cond, body, carry)


@jax.jit
def _beam_best(hyp_seqs, hyp_len, hyp_sum, hyp_ended, n_found, length_penalty):
    """The best of each utterance's finished hypotheses by ``sum_logprob / n_tokens ** length_penalty``:
    ``(tokens i32[batch, max_new_tokens], n_tokens i32[batch], sum_logprob f32[batch], ended bool[batch])``
    (``ended``: it finished with end-of-text, whose log-probability the sum includes)."""
    n_hyp = hyp_len.shape[1]
    length = hyp_len.astype(jnp.float32)
    ranked = hyp_sum / jnp.power(length, length_penalty)
    ranked = jnp.where(jnp.arange(n_hyp)[None, :] < n_found[:, None], ranked, jnp.float32(-jnp.inf))
    best = jnp.argmax(ranked, axis=1)[:, None]
    pick = lambda a: jnp.take_along_axis(a, best, axis=1)[:, 0]  # noqa: E731
    tokens = jnp.take_along_axis(hyp_seqs, best[:, :, None], axis=1)[:, 0]
    return tokens, pick(hyp_len), pick(hyp_sum), pick(hyp_ended)


def beam_decode(
    model: Whisper,
    xa,
    prompt: np.ndarray,
    *,
    eot: int,
    beam_size: int = 5,
    patience: float = 1.0,
    length_penalty: float = 1.0,
    suppress_tokens: Sequence[int] = (),
    suppress_begin: Sequence[int] = (),
    max_new_tokens: int = 224,
) -> tuple[list[list[int]], np.ndarray]:
    """Beam search of ``xa: f[batch, frame, embed]`` after ``prompt: i32[batch, p]`` (module docstring).

    Returns the best hypothesis per utterance (without end-of-text) and its average log-probability per sampled
    token, end-of-text included when it was sampled (as ``greedy_decode``).
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[0] != xa.shape[0]:
        raise ValueError(f"prompt must be i32[batch={xa.shape[0]}, p], got {prompt.shape}")
    max_new_tokens = min(max_new_tokens, model.dims.n_text_ctx - prompt.shape[1])
    max_candidates = int(round(beam_size * patience))
    if 2 * beam_size > model.dims.n_vocab or max_candidates < 1:
        raise ValueError(
            f"beam_size {beam_size} with patience {patience} needs 2 * beam_size <= {model.dims.n_vocab} (the "
            "vocabulary) and round(beam_size * patience) >= 1"
        )
    suppress, begin = _suppress_masks(model.dims.n_vocab, suppress_tokens, suppress_begin)
    graphdef, state = _split(model)
    emb_t = embedding_t(model)
    n_prompt = prompt.shape[1]
    prompt = jnp.asarray(prompt)
    hyp = ("hyp_seqs", "hyp_len", "hyp_sum", "hyp_ended", "n_found")
    consts = (suppress, begin, eot, n_prompt, max_candidates, max_new_tokens, length_penalty == 0)
    kept = stages.run_stages(
        lambda length: _beam_start(
            graphdef, state, emb_t, xa, prompt, eot, beam_size, max_candidates, length, max_new_tokens
        ),
        functools.partial(_beam_stage, graphdef, state, emb_t, *consts),
        batch=len(prompt),
        n_prompt=n_prompt,
        max_new_tokens=max_new_tokens,
        keep=hyp,
        group=beam_size,
    )
    best = _beam_best(*(kept[name] for name in hyp), jnp.float32(length_penalty))
    out, n, total, ended = (np.asarray(a) for a in best)
    tokens = [row[:k].tolist() for row, k in zip(out, n, strict=True)]
    return tokens, total / np.maximum(n + ended, 1)


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
    return heads_cross_attention(_merge(graphdef, state), xa, tokens, heads)


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
    return _merge(graphdef, state).audio_features(mel, layer, apply_ln_post)


def audio_features(model: Whisper, mel, layer: int | None = None, apply_ln_post: bool = True):
    """The decoder's input ``f[batch, frame, embed]`` from encoder layer ``layer`` (early exit)."""
    graphdef, state = _split(model)
    return _audio_features(graphdef, state, jnp.asarray(mel), layer, apply_ln_post)
