"""Word alignment kernel against its float64 NumPy reference, on random ragged inputs with poisoned padding."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import wordalign as wa


def ragged_pairs(rng, pairs, layers, frames, words, embed, poison):
    """A block of utterance pairs whose padding frames, padding words and padding spans hold ``poison``."""
    side = []
    for _ in range(2):
        n_frames = rng.integers(words, frames + 1, pairs).astype(np.int32)
        n_words = rng.integers(1, words + 1, pairs).astype(np.int32)
        n_words[0] = 1
        n_words[-1] = words
        states = rng.standard_normal((pairs, layers, frames, embed)).astype(np.float32) + 0.2
        spans = np.full((pairs, words, 2), -7 if np.isnan(poison) else 10**6, np.int32)  # garbage spans on padding
        for p in range(pairs):
            states[p, :, n_frames[p] :] = poison
            # Ragged words: random cuts of the valid frames (some words one frame wide, some long, with gaps).
            cuts = np.sort(rng.choice(np.arange(1, n_frames[p]), n_words[p] - 1, replace=False))
            bounds = np.concatenate([[0], cuts, [n_frames[p]]])
            for w in range(n_words[p]):
                start, end = bounds[w], bounds[w + 1]
                spans[p, w] = start + rng.integers(0, max(1, (end - start) // 3)), end
        side.append((states, n_frames, spans, n_words))
    return side


@pytest.mark.parametrize("pooling", wa.POOLINGS)
@pytest.mark.parametrize("poison", [np.nan, 1e30, -np.inf])
def test_wordalign_vs_reference(pooling, poison):
    rng = np.random.default_rng(zlib.crc32(f"{pooling}{poison}".encode()))  # fixed per case, not per process
    (A, fa, sa, na), (B, fb, sb, nb) = ragged_pairs(rng, pairs=5, layers=3, frames=40, words=7, embed=16, poison=poison)
    wa.check_spans("spans_a", sa, na, fa)
    wa.check_spans("spans_b", sb, nb, fb)
    for threshold in (-np.inf, 0.1):
        got = wa.wordalign_pairs(A, fa, sa, na, B, fb, sb, nb, np.float32(threshold), pooling=pooling)
        assert got.cosine.shape == got.mutual.shape == (5, 3, 7, 7) and got.cosine.dtype == jnp.float32
        for p in range(5):
            c, m = wa.reference_wordalign(
                A[p], fa[p], sa[p], na[p], B[p], fb[p], sb[p], nb[p], threshold, pooling=pooling
            )
            np.testing.assert_allclose(got.cosine[p], c, atol=1e-5, rtol=0)  # -inf on padding words, equal too
            np.testing.assert_array_equal(got.mutual[p], m)
            assert np.asarray(got.mutual[p]).sum(axis=-1).max() <= 1  # a word is in at most one pair


def test_mutual_best_is_a_permutation_for_shuffled_words():
    # b's words are a's in another order (plus noise): the mutual pairs must be exactly that permutation.
    rng = np.random.default_rng(3)
    words, embed = 6, 32
    vec = rng.standard_normal((words, embed)).astype(np.float32)
    perm = rng.permutation(words)
    a = np.repeat(vec, 4, axis=0)[None]  # [layer, frame, embed], each word 4 frames
    b = np.repeat(vec[perm], 4, axis=0)[None] + 0.01 * rng.standard_normal((1, words * 4, embed)).astype(np.float32)
    spans = np.stack([np.arange(words) * 4, np.arange(words) * 4 + 4], axis=1).astype(np.int32)
    for pooling in wa.POOLINGS:
        out = wa.wordalign(a, 24, spans, words, b, 24, spans, words, pooling=pooling)
        i, j = np.nonzero(np.asarray(out.mutual[0]))
        np.testing.assert_array_equal(perm[j], i)


def test_check_spans_names_the_fix():
    spans = np.array([[[0, 3], [2, 12]]], np.int32)
    with pytest.raises(ShapeError, match=r"spans_a\[0, 1\].*overlapping"):
        wa.check_spans("spans_a", spans, np.array([2]), np.array([12]))
    with pytest.raises(ShapeError, match=r"spans_a\[0, 0\]"):
        wa.check_spans("spans_a", spans, np.array([1]), np.array([2]))
    wa.check_spans("spans_a", spans, np.array([1]), np.array([3]))  # the overlapping word is padding here
