"""Value zeroing: how much of each word's representation after block ``l`` comes from each word of its utterance.

Mohebbi et al. (EACL 2023; for speech, EMNLP 2023), as the reference code computes it for Whisper and wav2vec2
(hmohebbi/ContextMixingASR, ``scoring/valueZeroing.py`` with ``modeling/customized_modeling_*.py``):

1. block ``l`` runs again from its input (layer ``l - 1``'s states: the whole window the encoder saw, Whisper's 30 s
   padding included) with the value vectors of every head at the frames ``s_t..e_t`` of word ``t`` set to zero (after
   the value projection and its bias, before the attention weights multiply them; queries, keys and the weights
   themselves are unchanged);
2. the block's output (attention, residual, feed-forward and norms: the whole block; after the last block the
   encoder's final norm, as the reference compares transformers' last ``hidden_states`` entry) is compared frame by
   frame with the unchanged output by cosine distance (scikit-learn's ``cosine_distances``: ``1 - cos``, clipped to
   ``[0, 2]``);
3. ``mixing[i, t]`` is the mean of those distances over word ``i``'s frames ``s_i..e_i`` (inclusive);
4. each row is divided by its sum: row ``i`` is the share of word ``i``'s change that zeroing each word ``t`` causes
   (the diagonal: itself; the rest: context).

Spans are inclusive frame ranges, ``s = ceil(start * rate)`` and ``e = ceil(end * rate)`` for a word timed
``start..end`` seconds (the reference's ``get_encoder_word_boundaries``); neighbouring words may share a frame.

A family offers it with ``ValueZeroing`` (``Encoder.value_zeroing``; None where it does not): ``states(model,
*batch)`` returns layers ``0..L`` ``f32[L + 1, batch, frame, embed]`` (block ``l``'s input is layer ``l - 1``), and
``block(model, l, x, keep, value_scale)`` block ``l``'s output ``f32[batch, frame, embed]`` from its input ``x`` with
each frame's value vectors times ``value_scale: f[batch, frame]`` (``keep: bool[batch, frame]``, the valid frames, for
a family that masks keys past them). The spans' masks are the rows of one batch, as the heads job batches its
ablations: one jitted call runs ``chunk`` of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.trainable import SplitModule

AGGREGATES = ("mean", "max")  # the reference's DIM_AGGREGATOR: over a word's frames


@dataclasses.dataclass(frozen=True, eq=False)
class ValueZeroing(SplitModule):
    """A family's encoder blocks run one at a time with value vectors zeroed (module docstring)."""

    model: nnx.Module
    states: Callable  # (model, *batch) -> f32[L + 1, batch, frame, embed]
    block: Callable  # (model, l, x, keep, value_scale) -> f32[batch, frame, embed], the final norm after block L
    blocks: int  # L
    # the blocks' weights are stacked (wav2vec2's scan): ``block`` takes a traced index, and one program serves every
    # block; else (Whisper's modules) each block is its own program
    stacked: bool = False

    @functools.cached_property
    def _states(self):
        graphdef = self._split[0]
        return jax.jit(lambda params, *batch: self.states(nnx.merge(graphdef, params), *batch))

    def layers(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """``f32[L + 1, batch, frame, embed]``: layers ``0..L`` of a collated ``batch`` (the family's ``collate``)."""
        return np.asarray(self._states(self._split[1], *(jnp.asarray(b) for b in batch)))

    @functools.cached_property
    def _distances(self):
        graphdef = self._split[0]

        def run(params, layer, x, keep, scale):
            model = nnx.merge(graphdef, params)
            # row 0 zeroes nothing: the unchanged output, from the same program as the zeroed rows
            scale = jnp.concatenate([jnp.ones((1, x.shape[0]), scale.dtype), scale])
            m = scale.shape[0]
            rows = jnp.broadcast_to(x[None], (m, *x.shape))
            out = self.block(model, layer, rows, jnp.broadcast_to(keep[None], (m, *keep.shape)), scale)
            return cosine_distance(out[1:], out[:1])

        return jax.jit(run, static_argnums=() if self.stacked else (1,))

    def distances(self, layer: int, x: np.ndarray, frames: int, spans: np.ndarray, chunk: int = 8) -> np.ndarray:
        """``f32[span, frames]``: for each span ``[s, e]`` (inclusive frames, ``i[span, 2]``) of one window whose
        block-``layer`` input is ``x: f32[frame, embed]`` (the first ``frames`` valid), the cosine distance of every
        valid frame's block output with that span's value vectors zeroed to its unchanged output. ``chunk`` spans run
        per call, one more row computing the unchanged output (the last call padded with masks that zero nothing,
        whose rows are dropped)."""
        if not 1 <= layer <= self.blocks:
            raise ShapeError(f"block {layer} out of range 1..{self.blocks}")
        x = np.asarray(x, np.float32)
        spans = np.asarray(spans, np.int64).reshape(-1, 2)
        n_frame = x.shape[0]
        keep = jnp.asarray(np.arange(n_frame) < int(frames))
        run, out = self._distances, []
        index = jnp.int32(layer) if self.stacked else int(layer)
        for start in range(0, len(spans), chunk):
            scale = np.ones((chunk, n_frame), np.float32)
            for row, (s, e) in enumerate(spans[start : start + chunk]):
                scale[row, s : e + 1] = 0.0  # the reference's value_states[:, s:e+1] = 0
            got = np.asarray(run(self._split[1], index, jnp.asarray(x), keep, jnp.asarray(scale)))
            out.append(got[: min(chunk, len(spans) - start), : int(frames)])
        return np.concatenate(out) if out else np.zeros((0, int(frames)), np.float32)


def cosine_distance(a, b):
    """``1 - cos`` of ``a`` and ``b`` along the last axis, clipped to ``[0, 2]`` as scikit-learn's
    ``cosine_distances`` (a row of zero norm counts as a zero vector: distance 1). Computed as
    ``|a/|a| - b/|b||^2 / 2``, the same number without the cancellation of ``1 - cos`` near 1: zeroing one word
    moves most frames' outputs by a distance of 1e-4 .. 1e-2, where ``1 - cos`` in float32 keeps one or two
    significant digits."""
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    ua = a / jnp.where(na == 0, 1, na)
    ub = b / jnp.where(nb == 0, 1, nb)
    half = 0.5 * jnp.sum(jnp.square(ua - ub), axis=-1)
    zero = (na[..., 0] == 0) | (nb[..., 0] == 0)
    return jnp.clip(jnp.where(zero, 1.0, half), 0.0, 2.0)


def word_spans(starts: Sequence[float], ends: Sequence[float], frame_rate: float, n_frames: int) -> np.ndarray:
    """``i64[word, 2]``: inclusive frame spans ``[ceil(start * rate), ceil(end * rate)]`` (the reference's
    ``get_encoder_word_boundaries``, its ``total_enc_frame / total_audio_time`` being the frame rate), the end cut
    to the last frame. A word whose start lies past the last frame has no frame: refused."""
    out = []
    for s, e in zip(starts, ends, strict=True):
        first, last = math.ceil(float(s) * frame_rate), math.ceil(float(e) * frame_rate)
        if not 0 <= first < n_frames or last < first:
            raise ShapeError(f"word {s}..{e} s has no frame among {n_frames} at {frame_rate}/s")
        out.append((first, min(last, n_frames - 1)))
    return np.asarray(out, np.int64).reshape(-1, 2)


def mixing_matrix(distances: np.ndarray, spans: np.ndarray, aggregate: str = "mean") -> np.ndarray:
    """``f64[word, word]``: row ``i``, column ``t`` the ``aggregate`` over word ``i``'s frames of the distances that
    zeroing word ``t`` causes (``distances: f[word, frame]``, row ``t`` = word ``t`` zeroed), each row divided by its
    sum (a row of zeros stays zero)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    d = np.asarray(distances, np.float64)
    reduce = np.max if aggregate == "max" else np.mean
    raw = np.stack([reduce(d[:, s : e + 1], axis=1) for s, e in np.asarray(spans)], axis=0) if len(spans) else d[:0]
    sums = raw.sum(-1, keepdims=True)
    return np.divide(raw, sums, out=np.zeros_like(raw), where=sums != 0)
