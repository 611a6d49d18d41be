"""The CPU path of ``kernels.wordalign.wordalign_pairs``: word pooling by NumPy slices, cosines for the whole block.

``kernels.wordalign.wordalign_pairs`` takes this path when it runs on the CPU backend with concrete arrays (not under
an outer ``jit``), and XLA's (``wordalign_pairs_xla``) on an accelerator. Inputs, outputs and conventions are
``kernels.wordalign``'s (glossary there); the outputs are NumPy arrays.

Why a host path: mean and max are segment reductions, and XLA's CPU backend lowers them to a scatter that costs
many reads of the states; every dense XLA replacement tried was slower still (``bench/RESULTS.md``, "word alignment
kernel (SeqSimInterp)"). A NumPy reduction over one word's contiguous frames ``x[:, s:e]`` runs at read speed, so
the cost is one call per word: ``np.add.reduce`` (mean), ``np.fmax.reduce`` (max, the ufunc without NaN
bookkeeping, half the time of ``np.maximum.reduce``), each straight into its row of one preallocated block. Words are
pooled on every CPU core (``kernels._cpu``'s pool; NumPy releases the GIL inside the reductions). Everything after
pooling (standardisation, norms, cosines, mutual best) is a few NumPy calls over the whole block, not per pair.

Differences from the XLA path, by contract rather than by accident:

- Spans are checked (``check_spans``): a bad span raises instead of counting a frame for the earlier word only.
- max ignores a NaN in a valid frame (``fmax``) where XLA would propagate it; valid frames are encoder outputs, and
  padding is never read by either path.
- Cosines are the dot products of the pooled words divided by the product of their norms (the reference's order),
  not the dot of unit rows: equal within float32 rounding (the parity tests' 1e-5).
"""

from __future__ import annotations

import numpy as np

from kernels._cpu import cpu_workers, on_threads
from kernels.frames import COS_EPS


def host_word_embeddings(words, pooling: str, workers: int) -> np.ndarray:
    """f32[pair, layer, word, embed]: each valid word's frames pooled, padding words 0 (``words``: batched ``Words``
    of concrete arrays with checked spans)."""
    states, n_frames, spans, n_words = (np.asarray(x) for x in words)
    pairs, layers, frames, embed = states.shape
    width = spans.shape[1]
    real = np.arange(width)[None, :] < n_words[:, None]  # [pair, word]
    start, end = spans[..., 0], spans[..., 1]
    if pooling == "centre":
        # One gather for the block; padding words read frame 0 (always valid) and are zeroed below.
        index = np.where(real, start + (end - start) // 2, 0)
        pooled = states[np.arange(pairs)[:, None], :, index]  # [pair, word, layer, embed]
        pooled = np.ascontiguousarray(np.moveaxis(pooled, 2, 1), dtype=np.float32)
        pooled[~np.broadcast_to(real[:, None], pooled.shape[:3])] = 0.0
        return pooled
    pooled = np.zeros((pairs, layers, width, embed), np.float32)
    reduce = np.add.reduce if pooling == "mean" else np.fmax.reduce
    spans_list, counts = spans.tolist(), n_words.tolist()

    def pool(pair_range) -> None:
        for p in pair_range:
            x, out = states[p], pooled[p]
            if x.dtype != np.float32:  # bf16 states: one conversion of the valid frames, not one per word
                x = x[:, : int(n_frames[p])].astype(np.float32)
            for k, (s, e) in enumerate(spans_list[p][: counts[p]]):
                reduce(x[:, s:e], axis=1, out=out[:, k])

    on_threads(pool, [range(w, pairs, workers) for w in range(min(workers, pairs))])
    if pooling == "mean":
        length = np.where(real, end - start, 1).astype(np.float32)
        pooled /= length[:, None, :, None]
    return pooled


def host_wordalign_pairs(pairs, threshold, standardise, pooling: str, workers: int | None = None):
    """(cosine f32[pair, layer, word_a, word_b] with -inf touching padding words, mutual bool[same]) of a block of
    concrete pairs (``kernels.wordalign.wordalign_pairs``'s arguments); ``workers`` threads pool the words (default:
    the process's cores)."""
    workers = cpu_workers() if workers is None else workers
    real, emb = [], []
    for side in pairs:
        ok = np.arange(side.spans.shape[1])[None, :] < np.asarray(side.n_words)[:, None]  # [pair, word]
        x = host_word_embeddings(side, pooling, workers)
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
