"""Word alignment between two utterances from encoder states (SeqSimInterp, arXiv 2505.19606).

Each word of an utterance is a span of encoder frames ``[start, end)``; it is embedded at every given layer by
pooling its frames, the words of two utterances are compared by cosine, and mutual best matches (a's best in b is
j and j's best in a is a) are the word pairs.

Glossary (axis names as in ``engine.axes`` where they exist): ``layer`` an encoder layer, ``frame`` an encoder frame
(50 per second), ``embed`` the model width, ``word`` a word of one utterance, ``pair`` a pair of utterances of two
languages.

Poolings (``POOLINGS``):

- ``centre``: the frame at ``start + (end - start) // 2`` (the paper's choice; the later of two middle frames, as
  ``kernels.pooling.center_frame``);
- ``mean``: mean of the word's frames (float32 accumulation);
- ``max``: per-dimension maximum over the word's frames.

Inputs: one utterance's side is a ``Words`` (states, valid frames, word spans, valid words), a pair of
utterances a ``WordPair`` of two; the ``*_pairs`` functions take the same structures with a leading ``pair`` axis
on every array.

Conventions (as in ``kernels.frames``):

- Frames at index ``>= n_frames`` and words at index ``>= n_words`` are padding and may hold anything, NaN and inf
  included (spans of padding words too): they are removed with ``where`` before arithmetic touches them.
- A valid word has ``0 <= start < end <= n_frames`` and starts at or after the end of the words before it (words
  do not overlap); ``check_spans`` checks concrete spans. Under an outer ``jit`` a frame inside two words counts
  for the earlier one only (mean and max).
- Cosines divide by ``max(|x|, COS_EPS)``. Entries touching a padding word are ``-inf`` (below every cosine) and
  never mutual.
- Mutual best: ``j = argmax_j c[i, j]`` and ``i = argmax_i c[i, j]``, ties to the lower index (``argmax``), and
  ``c[i, j] >= threshold``.

Standardisation (optional, ``Standardisation``): before the cosine, every state is z-scored per embedding dimension,
``(x - mean) * scale`` with ``scale = 1 / std``, so that a few high-variance ("rogue") dimensions do not dominate the
cosine (Timkey & van Schijndel 2021, "All bark and no bite"). ``layer_standardisation`` computes mean and std over a
set of valid frames (the caller says which: ``engine.pipelines.interp.run`` takes every valid frame of the utterances a
(language pair, layer) unit reads). Pooling commutes with it (centre and mean are affine, max is monotone for
``scale >= 0``), so the kernel applies it to the pooled words (word x embed, not frame x embed); the reference
applies it to the frames, as written, which checks that equivalence.

Soft alignment (issue 17, ``word_plan``): the entropic optimal-transport plan between the pooled words of the two
utterances, cost ``1 - cos`` (the same cosines), word weights uniform (``1 / n_words``) or proportional to the
word's frame count (``WORD_WEIGHTS``), solved by ott-jax's Sinkhorn with ``kernels.ot.OtConfig``'s epsilon and
stopping rule. ``plan_links`` turns a plan into links: ``share[i, j] = P[i, j] / min(w_a[i], w_b[j])``, the part of
the smaller word's mass that the link carries, at least ``mass``; one word may have several links.

Two paths behind ``wordalign_pairs``: on the CPU backend with concrete arrays the host one (``kernels.wordalign_host``,
NumPy reductions over each word's contiguous frames), elsewhere one jitted XLA call (``wordalign_pairs_xla``, whose
segment reductions are scatters: fast on a GPU, several reads of the states on XLA's CPU backend).

Measurements (against a NumPy loop, and the pooling variants tried): ``bench/RESULTS.md``, sections "word alignment
kernel (SeqSimInterp)" (CPU) and "word alignment kernel (SeqSimInterp) on an H100".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from engine.errors import ShapeError
from kernels.frames import COS_EPS, reference_unit_rows, unit_rows
from kernels.ot import reference_sinkhorn
from kernels.settings import DEFAULT_OT, INNER_ITERATIONS, OT_MASS, POOLINGS, WORD_WEIGHTS, OtConfig
from kernels.wordalign_host import host_wordalign_pairs

# A dimension whose std over the frames is at most this carries nothing to compare: its scale is 0 (dropped) rather
# than 1 / ~0, which would blow up the rounding of the pooled word minus the mean.
STD_EPS = 1e-6


class Words(NamedTuple):
    """The words of one utterance (a leading ``pair`` axis on every field in the ``*_pairs`` functions).

    states: f32|bf16[layer, frame, embed]; n_frames: i32[] valid frames; spans: i32[word, 2] frame [start, end) of
    each word, not overlapping; n_words: i32[] valid words (>= 1).
    """

    states: jax.Array
    n_frames: jax.Array
    spans: jax.Array
    n_words: jax.Array


class WordPair(NamedTuple):
    """Two utterances whose words are aligned: ``a`` and ``b`` share the layer and embed axes."""

    a: Words
    b: Words


class Standardisation(NamedTuple):
    """Per-dimension z-scoring ``(x - mean) * scale`` of states: mean, scale f32[layer, embed], scale >= 0."""

    mean: jax.Array
    scale: jax.Array


def layer_standardisation(states, n_frames) -> Standardisation:
    """Mean and 1 / std per (layer, dimension) over the valid frames of a set of utterances (float64, host).

    states: a sequence of f32|bf16[layer, frame, embed] (one per utterance, any frame count); n_frames: the valid
    frames of each (frames ``[0, n)`` count, the rest is padding and never read). std is the population std
    (``ddof=0``); a dimension with std <= ``STD_EPS`` gets scale 0. Returns float32 arrays [layer, embed].
    """
    states, n_frames = list(states), [int(n) for n in n_frames]
    if not states or len(states) != len(n_frames):
        raise ShapeError(f"states and n_frames must be non-empty and of one length, got {len(states)}, {len(n_frames)}")
    shapes = {(x.shape[0], x.shape[-1]) for x in states}
    if len(shapes) != 1 or any(x.ndim != 3 for x in states):
        raise ShapeError(f"states must all be [layer, frame, embed] with one layer count and width, got {shapes}")
    for k, (x, n) in enumerate(zip(states, n_frames, strict=True)):
        if not 0 < n <= x.shape[1]:
            raise ShapeError(f"n_frames[{k}] = {n} is not in 1..{x.shape[1]} (the frames of states[{k}])")
    total = sum(n_frames)
    mean = sum(np.asarray(x[:, :n], np.float64).sum(axis=1) for x, n in zip(states, n_frames, strict=True)) / total
    # Two passes (deviations from the mean), not E[x^2] - E[x]^2: dimensions with a large mean keep their digits.
    var = (
        sum(
            np.square(np.asarray(x[:, :n], np.float64) - mean[:, None]).sum(axis=1)
            for x, n in zip(states, n_frames, strict=True)
        )
        / total
    )
    std = np.sqrt(var)
    scale = np.where(std > STD_EPS, 1.0 / np.maximum(std, STD_EPS), 0.0)
    return Standardisation(mean.astype(np.float32), scale.astype(np.float32))


class WordAlignment(NamedTuple):
    """Word cosines and mutual-best mask: ``f32|bool[layer, word_a, word_b]`` for one pair, ``[pair, ...]`` batched."""

    cosine: jax.Array
    mutual: jax.Array


def check_spans(name: str, spans, n_words, n_frames) -> None:
    """Concrete spans ``i32[pair, word, 2]`` of valid words must satisfy ``0 <= start < end <= n_frames`` and not
    overlap (``start`` of a word >= ``end`` of every earlier one); padding words are not looked at."""
    spans, n_words, n_frames = np.asarray(spans), np.asarray(n_words), np.asarray(n_frames)
    if spans.ndim != 3 or spans.shape[-1] != 2:
        raise ShapeError(f"{name} must be i32[pair, word, 2] (start, end frame of each word), got {spans.shape}")
    valid = np.arange(spans.shape[1])[None, :] < n_words[:, None]
    start, end = spans[..., 0], spans[..., 1]
    earlier_end = np.maximum.accumulate(np.where(valid, end, 0), axis=1)
    overlap = np.zeros_like(valid)
    overlap[:, 1:] = start[:, 1:] < earlier_end[:, :-1]
    bad = valid & ((start < 0) | (end <= start) | (end > n_frames[:, None]) | overlap)
    if bad.any():
        p, w = np.argwhere(bad)[0]
        raise ShapeError(
            f"{name}[{p}, {w}] = {spans[p, w].tolist()} is not a span 0 <= start < end <= {n_frames[p]} frames "
            "after the previous word's end: clip word times to the utterance and trim overlapping words "
            "(engine.pipelines.interp.run.word_frames does both)"
        )


def word_embeddings(words: Words, pooling: str) -> jax.Array:
    """Pool each word's frames at every layer: f32[layer, word, embed] (zeros for padding words).

    mean and max are segment reductions over the frames (each frame belongs to at most one word): work is
    frame x embed whatever the words' lengths, and sums run within a word only (no cancellation, as a difference
    of prefix sums would have). On XLA's CPU backend the scatter behind them costs several reads of the states;
    every replacement tried was slower or no faster (bench/RESULTS.md, "word alignment kernel (SeqSimInterp)").
    """
    states, n_frames, spans, n_words = words
    layers, frames, _ = states.shape
    words = spans.shape[0]
    start, end = spans[:, 0], spans[:, 1]
    real = jnp.arange(words) < n_words
    if pooling == "centre":
        index = jnp.clip(start + (end - start) // 2, 0, frames - 1)
        centre = jnp.take(states, index, axis=1).astype(jnp.float32)  # [layer, word, embed]
        ok = (real & (index < n_frames))[None, :, None]
        return jnp.where(ok, centre, 0.0)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    f = jnp.arange(frames)
    inside = real[:, None] & (f >= start[:, None]) & (f < end[:, None]) & (f < n_frames)  # [word, frame]
    in_word = jnp.any(inside, axis=0)
    # The word of each frame; frames of no word go to an extra segment that is dropped.
    segment = jnp.where(in_word, jnp.argmax(inside, axis=0), words)
    x = jnp.where(in_word[None, :, None], states.astype(jnp.float32), 0.0)
    x = jnp.swapaxes(x, 0, 1)  # [frame, layer, embed]: segment ops reduce the leading axis
    if pooling == "mean":
        total = jax.ops.segment_sum(x, segment, num_segments=words + 1)[:words]
        pooled = total / jnp.maximum(jnp.sum(inside, axis=1), 1)[:, None, None]  # padding words: no 0/0
    else:
        pooled = jax.ops.segment_max(x, segment, num_segments=words + 1)[:words]  # empty segments: -inf
    return jnp.where(real[None, :, None], jnp.swapaxes(pooled, 0, 1), 0.0)


def _standardised(emb: jax.Array, standardise: Standardisation | None, real: jax.Array) -> jax.Array:
    """emb f32[layer, word, embed] z-scored per dimension (valid words; padding words stay 0)."""
    if standardise is None:
        return emb
    z = (emb - standardise.mean[:, None, :]) * standardise.scale[:, None, :]
    return jnp.where(real[None, :, None], z, 0.0)


def _unit_words(words: Words, pooling, standardise) -> jax.Array:
    """f32[layer, word, embed]: pooled, standardised when asked, unit length (zeros for padding words)."""
    emb = word_embeddings(words, pooling)
    return unit_rows(_standardised(emb, standardise, jnp.arange(words.spans.shape[0]) < words.n_words))


def mutual_best(c: jax.Array) -> jax.Array:
    """bool[..., word_a, word_b]: c[i, j] is the maximum of its row and of its column (first index on ties)."""
    best_b = jnp.argmax(c, axis=-1)  # [..., word_a]
    best_a = jnp.argmax(c, axis=-2)  # [..., word_b]
    rows = best_b[..., :, None] == jnp.arange(c.shape[-1])
    cols = best_a[..., None, :] == jnp.arange(c.shape[-2])[:, None]
    return rows & cols


def wordalign(
    pair: WordPair, threshold=-jnp.inf, standardise: Standardisation | None = None, *, pooling: str = "centre"
) -> WordAlignment:
    """Word cosines and mutual best matches of one pair of utterances at every layer.

    pair: the words of both utterances (``Words``: same layers and embed). threshold: f32[], the lowest cosine a
    mutual pair may have. standardise: per-dimension z-scoring of the states of both sides (one
    ``Standardisation`` for the pair), or None for the plain cosine. Returns WordAlignment of f32 and bool
    ``[layer, word_a, word_b]``.
    """
    a, b = pair
    emb_a = _unit_words(a, pooling, standardise)
    emb_b = _unit_words(b, pooling, standardise)
    c = jnp.einsum("lie,lje->lij", emb_a, emb_b, precision=jax.lax.Precision.HIGHEST)
    valid = (jnp.arange(a.spans.shape[0]) < a.n_words)[:, None] & (jnp.arange(b.spans.shape[0]) < b.n_words)[None, :]
    c = jnp.where(valid[None], c, -jnp.inf)
    return WordAlignment(c, mutual_best(c) & valid[None] & (c >= threshold))


def wordalign_pairs(
    pairs: WordPair, threshold, standardise: Standardisation | None = None, *, pooling
) -> WordAlignment:
    """``wordalign`` over a block of pairs: every array of ``pairs`` with a leading ``pair`` axis (states
    f32|bf16[pair, layer, frame, embed], n_frames i32[pair], spans i32[pair, word, 2], n_words i32[pair]);
    threshold f32[] and standardise (f32[layer, embed] pair) shared by the block. Returns
    ``[pair, layer, word_a, word_b]``.

    On the CPU backend with concrete arrays the block runs on the host (``kernels.wordalign_host``: NumPy arrays
    out, spans checked); on an accelerator, or traced under an outer ``jit``, it is ``wordalign_pairs_xla``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if _on_host(pairs, threshold, standardise):
        for name, side in (("spans_a", pairs.a), ("spans_b", pairs.b)):
            check_spans(name, side.spans, side.n_words, side.n_frames)
        return WordAlignment(*host_wordalign_pairs(pairs, threshold, standardise, pooling))
    return wordalign_pairs_xla(pairs, threshold, standardise, pooling=pooling)


def _on_host(*args) -> bool:
    """Whether ``wordalign_pairs`` takes the host path: CPU backend, no array a tracer, none on an accelerator."""
    leaves = jax.tree_util.tree_leaves(args)
    if jax.default_backend() != "cpu" or any(isinstance(x, jax.core.Tracer) for x in leaves):
        return False
    return all(d.platform == "cpu" for x in leaves if isinstance(x, jax.Array) for d in x.devices())


@functools.partial(jax.jit, static_argnames=("pooling",))
def wordalign_pairs_xla(
    pairs: WordPair, threshold, standardise: Standardisation | None = None, *, pooling
) -> WordAlignment:
    """``wordalign_pairs`` as one jitted XLA call (the accelerator path; arguments and result as there)."""
    one = functools.partial(wordalign, pooling=pooling)
    return jax.vmap(one, in_axes=(0, None, None))(pairs, threshold, standardise)


class WordPlan(NamedTuple):
    """Soft word alignment: plan f32[layer, word_a, word_b] (sums to 1 over valid words, exactly 0 on padding),
    weights f32[word_a] / f32[word_b] (the marginals asked for), converged bool[layer]; ``[pair, ...]`` batched."""

    plan: jax.Array
    weight_a: jax.Array
    weight_b: jax.Array
    converged: jax.Array


def word_weights(spans: jax.Array, n_words, weights: str) -> jax.Array:
    """f32[word] summing to 1 over the valid words, 0 on padding: ``uniform`` or by ``duration`` (frames)."""
    real = jnp.arange(spans.shape[0]) < n_words
    if weights == "uniform":
        w = real.astype(jnp.float32)
    elif weights == "duration":
        w = jnp.where(real, jnp.maximum(spans[:, 1] - spans[:, 0], 0), 0).astype(jnp.float32)
    else:
        raise ValueError(f"word weights must be one of {WORD_WEIGHTS}, got {weights!r}")
    return w / jnp.maximum(jnp.sum(w), 1.0)


def word_plan(
    pair: WordPair,
    standardise: Standardisation | None = None,
    *,
    pooling: str = "centre",
    weights: str = "uniform",
    config: OtConfig = DEFAULT_OT,
) -> WordPlan:
    """The entropic OT plan between the words of one pair of utterances at every layer (inputs as ``wordalign``).

    Cost ``1 - cos`` of the pooled words, Sinkhorn of ott-jax (``kernels.ot``'s solver settings: absolute
    ``epsilon`` in cost units, L1 row-marginal ``threshold``, ``max_iterations``). Padding words get zero weight,
    so their rows and columns of the plan are 0.
    """
    a, b = pair
    weight_a = word_weights(a.spans, a.n_words, weights)
    weight_b = word_weights(b.spans, b.n_words, weights)
    emb_a = _unit_words(a, pooling, standardise)
    emb_b = _unit_words(b, pooling, standardise)
    solver = sinkhorn.Sinkhorn(
        threshold=config.threshold, max_iterations=config.max_iterations, inner_iterations=INNER_ITERATIONS
    )

    def one_layer(ea, eb):
        # Unit rows: Cosine's norms are 1 (0 on padding words, whose finite cost 1 carries no weight).
        geom = pointcloud.PointCloud(ea, eb, cost_fn=costs.Cosine(), epsilon=config.epsilon)
        out = solver(linear_problem.LinearProblem(geom, weight_a, weight_b))
        plan = out.matrix
        return plan, out.converged & jnp.all(jnp.isfinite(plan))

    plan, converged = jax.vmap(one_layer)(emb_a, emb_b)
    return WordPlan(plan, weight_a, weight_b, converged)


@functools.partial(jax.jit, static_argnames=("pooling", "weights", "config"))
def word_plan_pairs(
    pairs: WordPair, standardise: Standardisation | None = None, *, pooling, weights, config
) -> WordPlan:
    """``word_plan`` over a block of pairs (shapes as ``wordalign_pairs``, standardise shared): WordPlan of
    ``[pair, layer, word_a, word_b]`` plans, ``[pair, word]`` weights and ``[pair, layer]`` flags."""
    one = functools.partial(word_plan, pooling=pooling, weights=weights, config=config)
    return jax.vmap(one, in_axes=(0, None))(pairs, standardise)


def plan_links(plan, weight_a, weight_b, mass: float = OT_MASS) -> tuple[np.ndarray, np.ndarray]:
    """(share f64[..., word_a, word_b] = P / min(w_a, w_b), 0 where a weight is 0; links bool: share >= mass).

    plan: [..., word_a, word_b]; weight_a: [..., word_a]; weight_b: [..., word_b] (host arrays)."""
    if not 0 < mass <= 1:
        raise ValueError(f"OT link mass must be in (0, 1] (a share of the smaller word's mass), got {mass}")
    plan = np.asarray(plan, np.float64)
    smaller = np.minimum(np.asarray(weight_a, np.float64)[..., :, None], np.asarray(weight_b, np.float64)[..., None, :])
    share = np.divide(plan, smaller, out=np.zeros_like(plan), where=smaller > 0)
    return share, share >= mass


# ----------------------------------------------------------------------------------------------------------------
# Reference: slow, obvious, float64, one word at a time.


def reference_word_embedding(states: np.ndarray, start: int, end: int, pooling: str) -> np.ndarray:
    """f64[layer, embed] for the word spanning frames [start, end) of states: [layer, frame, embed]."""
    frames = np.asarray(states, np.float64)[:, start:end]
    if pooling == "centre":
        return frames[:, (end - start) // 2]
    if pooling == "mean":
        return frames.mean(axis=1)
    return frames.max(axis=1)


def reference_standardised(states, standardise) -> np.ndarray:
    """f64 states [layer, frame, embed] z-scored frame by frame (``standardise`` None: unchanged)."""
    states = np.asarray(states, np.float64)
    if standardise is None:
        return states
    mean, scale = (np.asarray(v, np.float64)[:, None, :] for v in standardise)
    return (states - mean) * scale


def reference_wordalign(
    pair: WordPair, threshold=-np.inf, standardise=None, *, pooling
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of ``wordalign`` for one pair: (f64[layer, word_a, word_b] with -inf on padding, bool mask).
    With ``standardise`` the valid frames are z-scored before pooling (the kernel pools first)."""
    a, b = pair
    n_words_a, n_words_b = int(a.n_words), int(b.n_words)
    layers, wa, wb = a.states.shape[0], a.spans.shape[0], b.spans.shape[0]
    states_a = reference_standardised(a.states[:, : int(a.n_frames)], standardise)
    states_b = reference_standardised(b.states[:, : int(b.n_frames)], standardise)
    c = np.full((layers, wa, wb), -np.inf)
    for i in range(n_words_a):
        u = reference_word_embedding(states_a, *a.spans[i], pooling)
        for j in range(n_words_b):
            v = reference_word_embedding(states_b, *b.spans[j], pooling)
            for layer in range(layers):
                norm = max(np.linalg.norm(u[layer]), COS_EPS) * max(np.linalg.norm(v[layer]), COS_EPS)
                c[layer, i, j] = np.dot(u[layer], v[layer]) / norm
    mutual = np.zeros(c.shape, bool)
    for layer in range(layers):
        for i in range(n_words_a):
            j = int(np.argmax(c[layer, i]))
            if int(np.argmax(c[layer, :, j])) == i and c[layer, i, j] >= threshold:
                mutual[layer, i, j] = True
    return c, mutual


def reference_word_plan(pair: WordPair, standardise=None, *, pooling, weights, epsilon) -> np.ndarray:
    """NumPy twin of ``word_plan`` for one pair: f64[layer, word_a, word_b], the float64 log-domain Sinkhorn of
    ``kernels.ot`` on the valid words (padding rows and columns 0)."""
    a, b = pair
    layers, wa, wb = a.states.shape[0], a.spans.shape[0], b.spans.shape[0]
    na, nb = int(a.n_words), int(b.n_words)

    def side(states, n_frames, spans, n):
        states = reference_standardised(states[:, : int(n_frames)], standardise)
        emb = np.stack([reference_word_embedding(states, *spans[i], pooling) for i in range(n)])
        emb = reference_unit_rows(emb)  # [word, layer, embed]
        w = np.ones(n) if weights == "uniform" else np.array([spans[i][1] - spans[i][0] for i in range(n)], float)
        return emb, w / w.sum()

    ea, weight_a = side(a.states, a.n_frames, a.spans, na)
    eb, weight_b = side(b.states, b.n_frames, b.spans, nb)
    out = np.zeros((layers, wa, wb))
    for layer in range(layers):
        cost = 1.0 - ea[:, layer] @ eb[:, layer].T
        plan, converged = reference_sinkhorn(weight_a, weight_b, cost, epsilon)
        assert converged, "reference Sinkhorn did not converge: raise epsilon"
        out[layer, :na, :nb] = plan
    return out
