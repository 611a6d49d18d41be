"""The CPU path of ``kernels.wordalign.wordalign_pairs``: word pooling by NumPy slices, a few pairs at a time.

``kernels.wordalign.wordalign_pairs`` takes this path when it runs on the CPU backend with concrete arrays (not under an
outer ``jit``), and XLA's (``wordalign_pairs_xla``) on an accelerator. Inputs, outputs and conventions are
``kernels.wordalign``'s (glossary there); the outputs are NumPy arrays.

Why a host path: mean and max are segment reductions, and XLA's CPU backend lowers them to a scatter that costs many
reads of the states; every dense XLA replacement tried was slower still (``bench/RESULTS.md``, "word alignment kernel
(SeqSimInterp)"). A NumPy reduction over one word's contiguous frames ``x[:, s:e]`` runs at read speed, so the cost is
one call per word: ``np.add.reduce`` (mean), ``np.fmax.reduce`` (max, the ufunc without NaN bookkeeping, half the time
of ``np.maximum.reduce``), each straight into its row of a pooled block; centre is one ``np.take`` of the centre rows
into the block. ``np.add.reduceat`` over a whole utterance was 4-7x slower than the per-word calls (measured), and
one thread: the per-word calls hold the GIL for half their time.

Why a few pairs at a time (``CHUNK_BYTES``): the pooled words of a block of pairs are tens of MB, and a fresh array
that size costs its page faults on every call (about as much as the pooling itself, measured). Pooled words are
written into one cache-sized buffer per side, reused for each chunk of pairs, and only the cosines (words x words,
small) are kept for the block; norms, cosines and the mutual mask are a few NumPy calls per chunk or per block.
A chunk is cut to its own longest utterance on each side: the cosine products are one small GEMM per pair, whose cost
follows the padded width (11 us at 25 words, 7.5 at 20, 4.6 at 16, measured). Padding words of centre read a valid
word's centre row instead of being zeroed (their cosines become -inf at the end), and the mutual mask is set at the
few thousand mutual points rather than built from four block-sized boolean arrays.

Tried and not kept (A/B on the benchmark's block, bench/RESULTS.md): taking pairs in order of their word counts
(tighter chunk widths; no faster, the fancy indexing costs what the narrower products save), and a worker thread
pooling the next chunk while this one multiplies (2x slower on a quiet machine: the two threads hand the GIL back
and forth between NumPy calls).

Differences from the XLA path, by contract rather than by accident:

- Spans are checked (``check_spans``): a bad span raises instead of counting a frame for the earlier word only.
- max ignores a NaN in a valid frame (``fmax``) where XLA would propagate it; valid frames are encoder outputs, and
  padding is never read by either path.
- Cosines are the dot products of the pooled words divided by the product of their norms (the reference's order),
  not the dot of unit rows: equal within float32 rounding (the parity tests' 1e-5).
"""

from __future__ import annotations

import numpy as np

from kernels.frames import COS_EPS

# Bytes of pooled words per side and chunk: a chunk's two buffers and cosines stay in L2/L3 (1 MiB: 1.5x the speed of
# 16 MiB on centre, measured).
CHUNK_BYTES = 1 << 20


class _Side:
    """One side of a block on the host: frame rows [pair * layer * frame, embed] (a view of the states), the valid-word
    mask [pair, word], and every valid (pair, word, layer) in that order with its first and last frame rows."""

    def __init__(self, words):
        states, _, spans, n_words = (np.asarray(x) for x in words)
        self.pairs, self.layers, frames, self.embed = states.shape
        self.width = spans.shape[1]
        self.n_words = np.clip(n_words, 0, self.width)
        self.real = np.arange(self.width)[None, :] < self.n_words[:, None]  # [pair, word]
        # Frame f of (pair p, layer l) is row (p * layers + l) * frames + f, and a word of (p, l) a contiguous run.
        self.rows = np.ascontiguousarray(states, np.float32).reshape(-1, self.embed)
        # [pair, layer]: the row of frame 0
        base = (np.arange(self.pairs)[:, None] * self.layers + np.arange(self.layers)[None, :]) * frames
        p, k = np.nonzero(self.real)
        self.first = base[p] + spans[p, k, 0, None]  # [valid word, layer]
        self.last = base[p] + spans[p, k, 1, None]
        self.word = k
        self.offset = np.concatenate([[0], np.cumsum(self.n_words)])  # pair p's words: offset[p]:offset[p + 1]
        # centre's frame row of every (pair, layer, word) slot. A padding slot reads its pair's first word (or the
        # block's first word), a valid frame and never a padding one that may hold anything: its cosines become -inf
        # at the end, so nothing is zeroed per chunk.
        centre = self.first + (self.last - self.first) // 2  # [valid word, layer]
        spare = centre[np.minimum(self.offset[:-1], len(centre) - 1)] if len(centre) else base  # [pair, layer]
        self.centre = np.repeat(spare[:, :, None], self.width, axis=2)
        self.centre[p, :, k] = centre
        self.frames = np.where(self.real, spans[..., 1] - spans[..., 0], 1).astype(np.float32)  # mean's divisor

    def pool(self, lo: int, hi: int, width: int, pooling: str, out: np.ndarray) -> np.ndarray:
        """f32[hi - lo, layer, width, embed]: the first ``width`` words of pairs [lo, hi) pooled into ``out`` (a
        reused buffer); padding words 0 (mean, max) or a valid word's centre (centre)."""
        rows = (hi - lo) * self.layers * width
        block = out[: rows * self.embed].reshape(rows, self.embed)
        pooled = block.reshape(hi - lo, self.layers, width, self.embed)
        if pooling == "centre":
            # mode="clip": the indices are in range, and "raise" would buffer the output (NumPy's documentation).
            np.take(self.rows, self.centre[lo:hi, :, :width].reshape(-1), axis=0, out=block, mode="clip")
            return pooled
        block[...] = 0.0
        s, e = self.offset[lo], self.offset[hi]
        at = np.repeat(np.arange(hi - lo), self.n_words[lo:hi])  # chunk position of each valid word
        into = ((at[:, None] * self.layers + np.arange(self.layers)) * width + self.word[s:e, None]).reshape(-1)
        reduce = np.add.reduce if pooling == "mean" else np.fmax.reduce
        # One NumPy call per word and layer, nothing else in the loop: half its cost is the call, half the read.
        first, last = self.first[s:e].ravel().tolist(), self.last[s:e].ravel().tolist()
        for o, a, b in zip(into.tolist(), first, last, strict=True):
            reduce(self.rows[a:b], 0, None, block[o])
        if pooling == "mean":
            pooled /= self.frames[lo:hi, None, :width, None]
        return pooled


def host_wordalign_pairs(pairs, threshold, standardise, pooling: str):
    """(cosine f32[pair, layer, word_a, word_b] with -inf touching padding words, mutual bool[same]) of a block of
    concrete pairs (``kernels.wordalign.wordalign_pairs``'s arguments)."""
    a, b = _Side(pairs.a), _Side(pairs.b)
    n, layers = a.pairs, a.layers
    if standardise is not None:
        mean, scale = (np.asarray(v, np.float32)[None, :, None, :] for v in standardise)
    cosine = np.full((n, layers, a.width, b.width), -np.inf, np.float32)
    if not (a.n_words.any() and b.n_words.any()):
        return cosine, np.zeros(cosine.shape, bool)  # no word on one side: nothing to compare
    norms = [np.zeros((n, layers, side.width), np.float32) for side in (a, b)]
    per_pair = layers * max(a.width, b.width, 1) * a.embed * 4
    size = max(1, min(n, CHUNK_BYTES // max(per_pair, 1)))
    buffers = [np.empty(size * layers * side.width * side.embed, np.float32) for side in (a, b)]
    for lo in range(0, n, size):
        hi = min(n, lo + size)
        widths = [int(side.n_words[lo:hi].max()) for side in (a, b)]  # the chunk's longest utterance on each side
        emb = []
        for side, width, buffer, norm in zip((a, b), widths, buffers, norms, strict=True):
            x = side.pool(lo, hi, width, pooling, buffer)
            if standardise is not None:
                x -= mean
                x *= scale
                x *= side.real[lo:hi, None, :width, None]  # padding words back to 0
            norm[lo:hi, :, :width] = np.sqrt(np.einsum("plwe,plwe->plw", x, x))
            emb.append(x)
        cosine[lo:hi, :, : widths[0], : widths[1]] = np.matmul(emb[0], np.swapaxes(emb[1], -1, -2))
    norm_a, norm_b = (np.maximum(x, COS_EPS) for x in norms)
    cosine /= norm_a[..., :, None] * norm_b[..., None, :]
    valid = (a.real[:, :, None] & b.real[:, None, :])[:, None]  # [pair, 1, word_a, word_b]
    np.copyto(cosine, np.float32(-np.inf), where=~valid)
    best_b = cosine.argmax(axis=-1)  # [pair, layer, word_a]; ties to the lower index, as jnp.argmax
    best_a = cosine.argmax(axis=-2)  # [pair, layer, word_b]
    # Mutual: a's best b whose best a is a again, a few thousand points set in an all-False mask.
    p, layer, i = np.nonzero(np.take_along_axis(best_a, best_b, axis=-1) == np.arange(a.width))
    j = best_b[p, layer, i]
    keep = valid[p, 0, i, j] & (cosine[p, layer, i, j] >= np.float32(threshold))
    mutual = np.zeros(cosine.shape, bool)
    mutual[p[keep], layer[keep], i[keep], j[keep]] = True
    return cosine, mutual
