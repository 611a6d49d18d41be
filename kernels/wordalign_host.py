"""The CPU path of ``kernels.wordalign.wordalign_pairs``: word pooling by NumPy slices, cosines for the whole block.

``kernels.wordalign.wordalign_pairs`` takes this path when it runs on the CPU backend with concrete arrays (not under an
outer ``jit``), and XLA's (``wordalign_pairs_xla``) on an accelerator. Inputs, outputs and conventions are
``kernels.wordalign``'s (glossary there); the outputs are NumPy arrays.

Why a host path: mean and max are segment reductions, and XLA's CPU backend lowers them to a scatter that costs many
reads of the states; every dense XLA replacement tried was slower still (``bench/RESULTS.md``, "word alignment kernel
(SeqSimInterp)"). A NumPy reduction over one word's contiguous frames ``x[:, s:e]`` runs at read speed, so the cost is
one call per word: ``np.add.reduce`` (mean), ``np.fmax.reduce`` (max, the ufunc without NaN bookkeeping, half the time
of ``np.maximum.reduce``), each straight into its row of one preallocated block; centre is one row gather for the block.
One thread: the per-word calls hold the GIL for most of their time, and a second thread measured no faster under load.
Everything after pooling (standardisation, norms, cosines, mutual best) is a few NumPy calls over the whole block, not
per pair.

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


def host_word_embeddings(words, pooling: str) -> np.ndarray:
    """f32[pair, layer, word, embed]: each valid word's frames pooled, padding words 0 (``words``: batched ``Words``
    of concrete arrays with checked spans)."""
    states, n_frames, spans, n_words = (np.asarray(x) for x in words)
    pairs, layers, frames, embed = states.shape
    width = spans.shape[1]
    real = np.arange(width)[None, :] < n_words[:, None]  # [pair, word]
    start, end = spans[..., 0], spans[..., 1]
    # Frame rows of the whole block, [pair * layer * frame, embed] (a view): the frame f of (pair p, layer l) is row
    # (p * layers + l) * frames + f, and a word of (p, l) a contiguous run of rows.
    rows = np.ascontiguousarray(states, np.float32).reshape(-1, embed)
    base = (np.arange(pairs)[:, None] * layers + np.arange(layers)[None, :]) * frames  # [pair, layer]
    pooled = np.zeros((pairs, layers, width, embed), np.float32)  # padding words stay 0
    out = pooled.reshape(-1, embed)  # row (p * layers + l) * width + k: word k of (p, l)
    p, k = np.nonzero(real)
    first = (base[p] + start[p, k, None]).reshape(-1)  # [valid word * layer]
    last = (base[p] + end[p, k, None]).reshape(-1)
    into = (base[p] // frames * width + k[:, None]).reshape(-1)
    if pooling == "centre":
        out[into] = rows[first + (last - first) // 2]  # one gather of the valid words' rows for the block
        return pooled
    reduce = np.add.reduce if pooling == "mean" else np.fmax.reduce
    # One NumPy call per word and layer, nothing else in the loop: half its cost is the call, half the read.
    for o, s, e in zip(into.tolist(), first.tolist(), last.tolist(), strict=True):
        reduce(rows[s:e], 0, None, out[o])
    if pooling == "mean":
        pooled /= np.where(real, end - start, 1).astype(np.float32)[:, None, :, None]
    return pooled


def host_wordalign_pairs(pairs, threshold, standardise, pooling: str):
    """(cosine f32[pair, layer, word_a, word_b] with -inf touching padding words, mutual bool[same]) of a block of
    concrete pairs (``kernels.wordalign.wordalign_pairs``'s arguments)."""
    real, emb = [], []
    for side in pairs:
        ok = np.arange(side.spans.shape[1])[None, :] < np.asarray(side.n_words)[:, None]  # [pair, word]
        x = host_word_embeddings(side, pooling)
        if standardise is not None:
            mean, scale = (np.asarray(v, np.float32)[None, :, None, :] for v in standardise)
            x = np.where(ok[:, None, :, None], (x - mean) * scale, 0.0).astype(np.float32)
        real.append(ok)
        emb.append(x)
    ea, eb = emb
    norm_a = np.maximum(np.sqrt(np.einsum("plwe,plwe->plw", ea, ea)), COS_EPS)
    norm_b = np.maximum(np.sqrt(np.einsum("plwe,plwe->plw", eb, eb)), COS_EPS)
    cosine = np.matmul(ea, np.swapaxes(eb, -1, -2))  # [pair, layer, word_a, word_b]
    cosine /= norm_a[..., :, None] * norm_b[..., None, :]
    valid = (real[0][:, :, None] & real[1][:, None, :])[:, None]  # [pair, 1, word_a, word_b]
    cosine = np.where(valid, cosine, np.float32(-np.inf))
    best_b = cosine.argmax(axis=-1)  # ties to the lower index, as jnp.argmax
    best_a = cosine.argmax(axis=-2)
    mutual = (best_b[..., :, None] == np.arange(cosine.shape[-1])) & (
        best_a[..., None, :] == np.arange(cosine.shape[-2])[:, None]
    )
    return cosine, mutual & valid & (cosine >= np.float32(threshold))
