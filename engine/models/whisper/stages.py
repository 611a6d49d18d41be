"""Decoding in stages: the key/value cache grown as the decode goes, and finished utterances dropped from the batch.

A decode (``decoding.greedy_decode``, ``decoding.beam_decode``) is a host loop over jitted stages. Each stage is one
``lax.while_loop`` over steps of a fixed-shape batch; between stages the host may

- grow the self-attention cache (``cache_stages``: prompt + 32, 64, 128, ... new tokens), so that a step attends to,
  and beam search reorders, a cache about as long as the decode so far;
- drop the finished utterances (``run_stages``): a stage ends early once at most half of its utterances are still
  decoding, and the next one runs on the live ones only, padded to a power of two (1, 2, 4, ...) with finished ones so
  that the compiled programs stay few. A finished utterance would otherwise keep stepping to the batch's longest:
  8 FLEURS windows stepped ~520 row-steps for ~330 live ones, and a step reads each row's cross-attention
  keys/values. CTranslate2 drops finished rows from its batch in the same way.

Glossary: a *slot* is one utterance's place in the current batch (its ``group`` consecutive rows: 1 for greedy, the
beams for beam search); ``carry`` is a stage's loop state, a dict whose leaves lead with slots, except ``step`` (a
scalar) and the ``ROW_LEAVES`` (leading with rows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The key/value cache grows in stages of these many new tokens (doubling, the last one max_new_tokens): FLEURS windows
# end after 30-65 tokens; with one cache of prompt + 224 a beam-5 step of 8 windows copied 224 MB to reorder it
# (bench/RESULTS.md).
FIRST_STAGE = 32  # new tokens in the first stage
ROW_LEAVES = ("cache", "logits")  # carry leaves that lead with rows (slot * group + beam), not slots


def cache_stages(max_new_tokens: int) -> tuple[int, ...]:
    """The new-token counts at which the cache grows: ``(32, 64, ..., max_new_tokens)``, each a stage's limit."""
    stages = []
    limit = FIRST_STAGE
    while limit < max_new_tokens:
        stages.append(limit)
        limit *= 2
    return (*stages, max_new_tokens)


@functools.partial(jax.jit, static_argnames=("length",))
def pad_cache(cache, length: int):
    """Zero-pad each ``f[rows, heads, positions, head_dim]`` of ``cache`` to ``length`` positions (never written
    before the decode reaches them, and masked until then, as in ``TextDecoder.init_cache``)."""
    grow = length - cache[0][0].shape[2]
    return jax.tree.map(lambda a: jnp.pad(a, ((0, 0), (0, 0), (0, grow), (0, 0))), cache)


@functools.partial(jax.jit, static_argnames=("group",))
def _take(kv, carry: dict, slots, group: int):
    """The slots ``slots: i32[new_slots]`` of ``kv`` (per slot) and ``carry`` (module docstring)."""
    rows = (slots[:, None] * group + jnp.arange(group)[None, :]).reshape(-1)
    out = {}
    for name, leaf in carry.items():
        index = None if name == "step" else rows if name in ROW_LEAVES else slots
        out[name] = leaf if index is None else jax.tree.map(lambda a, index=index: a[index], leaf)
    return jax.tree.map(lambda a: a[slots], kv), out


def live_bucket(n_live: int) -> int:
    """The batch size that ``n_live`` live utterances run in: the next power of two."""
    return 1 << max(n_live - 1, 0).bit_length()


def run_stages(
    start: Callable[[int], tuple],
    stage: Callable[..., dict],
    *,
    batch: int,
    n_prompt: int,
    max_new_tokens: int,
    keep: Sequence[str],
    group: int = 1,
) -> dict[str, np.ndarray]:
    """Run a decode stage by stage and return its ``keep`` leaves per utterance, as host arrays ``[batch, ...]``.

    ``start(length) -> (kv, carry)``: the cross-attention keys/values per slot and the first carry, its cache of
    ``length`` positions. ``stage(kv, carry, limit, keep_above) -> carry``: steps while ``carry["step"] < limit`` and
    more than ``keep_above`` slots are not ``carry["done"]``. A finished slot's ``keep`` leaves must not change after
    it is done (they are read when it is dropped).
    """
    stages = cache_stages(max_new_tokens)
    kv, carry = start(n_prompt + stages[0])
    utterance = np.arange(batch)  # the utterance in each slot; -1 = padding (a copy of a finished slot)
    kept: dict[str, np.ndarray] = {}

    def save():
        real = utterance >= 0
        for name in keep:
            leaf = np.asarray(carry[name])
            if name not in kept:
                kept[name] = np.zeros((batch, *leaf.shape[1:]), leaf.dtype)
            kept[name][utterance[real]] = leaf[real]

    index = 0
    while True:
        limit = stages[index]
        length = n_prompt + limit
        if carry["cache"][0][0].shape[2] < length:
            carry = {**carry, "cache": pad_cache(carry["cache"], length)}
        slots = len(utterance)
        carry = stage(kv, carry, np.int32(limit), np.int32(slots // 2 if slots > 1 else 0))
        done = np.asarray(carry["done"])
        step = int(carry["step"])
        if done.all() or step >= max_new_tokens:
            break
        live = np.flatnonzero(~done)
        if len(live) <= slots // 2:
            save()  # the finished slots' results, before they are dropped
            n = live_bucket(len(live))
            pad = np.full(n - len(live), np.flatnonzero(done)[0])
            take = np.concatenate([live, pad]).astype(np.int32)
            kv, carry = _take(kv, carry, jnp.asarray(take), group)
            utterance = np.concatenate([utterance[live], np.full(len(pad), -1)])
        if step >= limit:
            index += 1
    save()
    return kept
