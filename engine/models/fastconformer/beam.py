"""Canary's beam search as transformers' ``GenerationMixin._beam_search`` runs it (transformers 5, ``generate(
num_beams=N)`` with the defaults ``length_penalty=1.0``, ``early_stopping=False``, no sampling), jitted, with the
decoder's KV cache (``engine.models.fastconformer.decoder``).

Each step, for each row: the log-softmax of every running beam's next-token logits plus its running score; the top
``K = max(2, 1 + len(eos)) * N`` (beam, token) continuations of the ``N * vocab``; those ending in an eos or at the
length limit are candidates for the finished set (only among the first ``N`` of the ``K``, scored by the summed
log-probability over ``generated ** length_penalty``, ``generated`` counting the eos), the others the next running
beams (the best ``N``). The finished set keeps the best ``N`` candidates so far. transformers' early-stop heuristic
(``early_stopping=False``): once the finished set is full, a row stops taking candidates when its best running score
over the current generated length does not beat the worst finished score; the loop ends when no row can improve or
every continuation has stopped. The answer is the best finished beam. Scores and masks use transformers' constants
(``-1e9``) and order of operations, in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

NEG = -1.0e9  # transformers' "very large negative value"


def _gather(x, index):
    """x [b, n, ...], index i[b, m] -> [b, m, ...]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(decoder, prompt, memory, valid, beams: int, max_tokens: int, length_penalty: float = 1.0):
    """prompt i32[b, p], memory f[b, frame, width], valid i32[b] -> (tokens i32[b, max_tokens], n i32[b], scores
    f32[b, N]) of each row's best beam: ``tokens[r, :n[r]]``, eos excluded, the rest eos; ``scores`` the finished set's
    length-normalised scores, best first (``scores[:, 0]`` is ``generate``'s ``sequences_scores``). Trace under
    ``jax.jit`` (``beam_fn``)."""
    c = decoder.config
    b, p = prompt.shape
    n_beam, total = beams, p + max_tokens
    k = max(2, 1 + len(c.eos)) * n_beam
    eos = jnp.asarray(c.eos, jnp.int32)
    rows = b * n_beam
    tile = lambda x: jnp.repeat(x, n_beam, axis=0)  # noqa: E731 - [b, ...] -> [b * N, ...], beams of a row together
    cross, cross_mask = decoder.cross(tile(memory), tile(valid))
    cache = jnp.zeros((c.n_layer, 2, rows, c.n_kv_head, total, c.head_width), decoder.embedding.dtype)
    prompt_rows = tile(prompt)

    def feed(t, cache):  # prompt positions 0..p-2 through the cache
        return decoder.step(prompt_rows[:, t], t, cache, cross, cross_mask)[1]

    cache = jax.lax.fori_loop(0, p - 1, feed, cache)
    top_mask = jnp.arange(k) < n_beam
    offset = (jnp.arange(b) * n_beam)[:, None]

    def step(carry):
        g, token, cache, run_seq, run_score, fin_seq, fin_score, fin_flag, fin_len, open_, _ = carry
        logits, cache = decoder.step(token, p - 1 + g, cache, cross, cross_mask)
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, n_beam, -1) + run_score[:, :, None]
        vocab = logp.shape[-1]
        top_score, top_index = jax.lax.top_k(logp.reshape(b, -1), k)
        source, tok = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        top_seq = _gather(run_seq, source).at[:, :, g].set(tok)
        hits = jnp.isin(tok, eos) | (g + 1 >= max_tokens)
        # the next running beams: the best N that did not stop
        chosen = jax.lax.top_k(top_score + hits.astype(jnp.float32) * NEG, n_beam)[1]
        run_seq, run_score = _gather(top_seq, chosen), _gather(top_score + hits.astype(jnp.float32) * NEG, chosen)
        # the finished set: the best N of the old and the new (top-N stopped) candidates
        just = hits & top_mask[None]
        cand = top_score / ((g + 1.0) ** length_penalty)
        cand = cand + (~open_)[:, None].astype(jnp.float32) * NEG + (~just).astype(jnp.float32) * NEG
        keep = jax.lax.top_k(jnp.concatenate([fin_score, cand], axis=1), n_beam)[1]
        fin_seq = _gather(jnp.concatenate([fin_seq, top_seq], axis=1), keep)
        fin_score = _gather(jnp.concatenate([fin_score, cand], axis=1), keep)
        fin_flag = _gather(jnp.concatenate([fin_flag, just], axis=1), keep)
        fin_len = _gather(jnp.concatenate([fin_len, jnp.full((b, k), g + 1, jnp.int32)], axis=1), keep)
        # the cache and the tokens of the running beams, then transformers' early-stop heuristic
        cache = cache[:, :, (offset + _gather(source, chosen)).reshape(-1)]
        best = run_score[:, 0] / ((g + 1.0) ** length_penalty)
        worst = jnp.where(fin_flag, fin_score.min(axis=1, keepdims=True), NEG)
        open_ = open_ & jnp.any(best[:, None] > worst, axis=1)
        more = jnp.any(open_) & ~jnp.all(hits)
        return g + 1, run_seq[:, :, g].reshape(-1), cache, run_seq, run_score, fin_seq, fin_score, fin_flag, fin_len, \
            open_, more  # fmt: skip

    fill = jnp.full((b, n_beam, max_tokens), c.pad, jnp.int32)
    run_score = jnp.where(jnp.arange(n_beam) == 0, 0.0, NEG)[None].repeat(b, 0).astype(jnp.float32)
    fin_score = jnp.full((b, n_beam), NEG, jnp.float32)
    init = (jnp.int32(0), prompt_rows[:, p - 1], cache, fill, run_score, fill, fin_score, jnp.zeros((b, n_beam), bool),
            jnp.zeros((b, n_beam), jnp.int32), jnp.ones(b, bool), jnp.bool_(True))  # fmt: skip
    out = jax.lax.while_loop(lambda carry: carry[-1], step, init)
    seq, length = out[5][:, 0], out[8][:, 0]
    last = jnp.take_along_axis(seq, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
    n = length - (jnp.isin(last, eos) & (length > 0)).astype(jnp.int32)
    tokens = jnp.where(jnp.arange(max_tokens)[None] < n[:, None], seq, eos[0])
    return tokens, n.astype(jnp.int32), out[6]


@functools.partial(jax.jit, static_argnames=("graphdef", "beams", "max_tokens", "length_penalty"))
def beam_fn(graphdef, state, prompt, memory, valid, *, beams, max_tokens, length_penalty=1.0):
    """Jitted ``beam_search`` on a split ``CanaryDecoder`` (one compilation per shape, beam and length)."""
    return beam_search(nnx.merge(graphdef, state), prompt, memory, valid, beams, max_tokens, length_penalty)
