"""ESPnet's beam search on the OWSM decoder, batched and jitted: one ``jax.lax.while_loop`` over the steps of every
window of a batch, ``beam`` rows per window.

Reproduces ``espnet2.legacy.nets.batch_beam_search.BatchBeamSearch`` as ``Speech2Text(beam_size=beam, ctc_weight=0,
lm_weight=0, ngram_weight=0, penalty=0, normalize_length=False, minlenratio=0, maxlenratio=-max_tokens, nbest=1)``
runs it (``BatchBeamSearch`` is what ``Speech2Text`` picks at batch size 1): with those weights its scorers are the
decoder (weight 1) and the ``ScoreFilter`` (``-inf`` on timestamps under ``<notimestamps>``), and there is no
pre-beam (ESPnet pre-beams only for partial scorers, i.e. CTC). Per window, as its ``forward`` and ``post_process``:

- the running hypotheses start as the prompt alone, score 0;
- each step adds each running hypothesis' score to its next token's log-softmax (filtered) and keeps the ``beam`` best
  (hypothesis, token) pairs of all of them (``batch_beam``: one top-k over the flattened scores, so a window with
  fewer running hypotheses still keeps ``beam`` pairs);
- a pair whose token is ``<eos>`` ends and leaves the running set with its score (fewer than ``beam`` may run on);
  at step ``max_tokens - 1`` every kept pair ends (ESPnet appends ``<eos>`` without scoring it);
- the search stops when none runs or after ``max_tokens`` steps; the result is the ended hypothesis of highest
  score, the earliest ended on a tie (``sorted`` is stable; the steps' top-k lists are in descending order).

Refused by the decode job rather than approximated: CTC prefix scores (``ctc_weight > 0``), language models, the
length bonus (``penalty``), ``normalize_length``, ``minlenratio``, ``maxlenratio=0`` (the encoder length as the
maximum and ``end_detect``), n-best lists. Scores are summed in float32 as ESPnet sums them; the top-k breaks exact
ties towards the lower (hypothesis, token) index, torch's CPU top-k does in practice (ties need equal float32 sums).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from engine.errors import ShapeError


def beam_search(decoder, prompt, memory, beam: int, max_tokens: int, suppress: tuple[int, int] | None, eos: int):
    """prompt i32[batch, p], memory f[batch, frame, width] -> (tokens i32[batch, max_tokens], n i32[batch],
    score f32[batch]).

    ``tokens[b, :n[b]]`` are the best ended hypothesis' tokens after the prompt, ``<eos>`` excluded; the rest is
    ``eos``; ``score`` its summed log-probability. ``decoder``: an ``OwsmDecoder``. Trace under ``jax.jit``
    (``beam_fn``).
    """
    if beam < 1:
        raise ShapeError(f"beam must be at least 1, got {beam}")
    b, p = prompt.shape
    n_vocab, rows, total = decoder.config.n_vocab, b * beam, p + max_tokens
    cache = decoder.init_cache(rows, total)
    # Each window's keys and values, once per beam row: every row of a window attends to the same memory.
    cross = [tuple(jnp.repeat(kv, beam, axis=0) for kv in block.cross_kv(memory)) for block in decoder.blocks]
    penalty = decoder.suppression(suppress)
    row_prompt = jnp.repeat(prompt, beam, axis=0)
    cache = jax.lax.fori_loop(0, p - 1, lambda t, c: decoder.step(row_prompt[:, t], t, c, cross)[1], cache)
    window = jnp.arange(b)

    def step(carry):
        i, feed, cache, seq, score, alive, best_seq, best_score = carry
        logits, cache = decoder.step(feed.reshape(rows), p - 1 + i, cache, cross)
        logp = jax.nn.log_softmax(logits, axis=-1) + penalty
        scores = jnp.where(alive.reshape(rows, 1), logp + score.reshape(rows, 1), -jnp.inf)
        vals, index = jax.lax.top_k(scores.reshape(b, beam * n_vocab), beam)
        parent, token = index // n_vocab, (index % n_vocab).astype(jnp.int32)
        seq = jnp.take_along_axis(seq, parent[..., None], axis=1).at[:, :, i].set(token)
        # A window with nothing running scores -inf everywhere: its pairs neither end nor run.
        ended = jnp.isfinite(vals) & ((token == eos) | (i == max_tokens - 1))
        first = jnp.argmax(ended, axis=1)  # the highest-scoring pair that ended at this step
        candidate = jnp.where(ended.any(axis=1), vals[window, first], -jnp.inf)
        better = candidate > best_score  # strictly: an earlier ended hypothesis wins a tie
        best_score = jnp.where(better, candidate, best_score)
        best_seq = jnp.where(better[:, None], seq[window, first], best_seq)
        cache = cache[:, :, (window[:, None] * beam + parent).reshape(rows)]
        return i + 1, token, cache, seq, vals, jnp.isfinite(vals) & ~ended, best_seq, best_score

    def more(carry):
        i, alive = carry[0], carry[5]
        return (i < max_tokens) & jnp.any(alive)

    init = (
        jnp.int32(0),
        jnp.repeat(prompt[:, -1:], beam, axis=1),
        cache,
        jnp.full((b, beam, max_tokens), eos, jnp.int32),
        jnp.zeros((b, beam), jnp.float32),
        jnp.zeros((b, beam), bool).at[:, 0].set(True),  # the prompt alone runs at first
        jnp.full((b, max_tokens), eos, jnp.int32),
        jnp.full((b,), -jnp.inf, jnp.float32),
    )
    *_, best_seq, best_score = jax.lax.while_loop(more, step, init)
    n = jnp.argmax(jnp.concatenate([best_seq, jnp.full((b, 1), eos, jnp.int32)], axis=1) == eos, axis=1)
    return best_seq, n.astype(jnp.int32), best_score


@functools.partial(jax.jit, static_argnames=("graphdef", "beam", "max_tokens", "suppress", "eos"))
def beam_fn(graphdef, state, prompt, memory, *, beam, max_tokens, suppress, eos):
    """Jitted ``beam_search`` on a split ``OwsmDecoder`` (one compilation per shape, beam and length)."""
    return beam_search(nnx.merge(graphdef, state), prompt, memory, beam, max_tokens, suppress, eos)
