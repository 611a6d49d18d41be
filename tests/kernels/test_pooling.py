"""Pooled baselines against their float64 NumPy references, poisoned padding included."""

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import pooling


def ragged(rng, count, frames, embed, poison):
    lengths = rng.integers(1, frames + 1, count).astype(np.int32)
    lengths[0], lengths[-1] = 1, frames
    x = rng.standard_normal((count, frames, embed)).astype(np.float32) + 0.3
    for i, length in enumerate(lengths):
        x[i, length:] = poison
    return x, lengths


@pytest.mark.parametrize("poison", [np.nan, 1e30, 0.0])
def test_pooled_cosines_vs_reference(poison):
    rng = np.random.default_rng(0)
    A, len_A = ragged(rng, 6, 11, 16, poison)
    B, len_B = ragged(rng, 5, 8, 16, poison)
    mean = pooling.mean_pooled_cosine_matrix(A, len_A, B, len_B)
    centre = pooling.center_frame_cosine_matrix(A, len_A, B, len_B)
    assert mean.shape == centre.shape == (6, 5) and mean.dtype == jnp.float32
    np.testing.assert_allclose(mean, pooling.reference_mean_pooled_cosine_matrix(A, len_A, B, len_B), atol=1e-6)
    np.testing.assert_allclose(centre, pooling.reference_center_frame_cosine_matrix(A, len_A, B, len_B), atol=1e-6)


def test_bf16_pooled_cosines():
    rng = np.random.default_rng(1)
    A, len_A = ragged(rng, 4, 9, 32, np.nan)
    A = A.astype(jnp.bfloat16)
    got = pooling.mean_pooled_cosine_matrix(A, len_A, A, len_A)
    np.testing.assert_allclose(np.diag(np.asarray(got)), 1.0, atol=1e-5)  # pooled in float32
    np.testing.assert_allclose(got, pooling.reference_mean_pooled_cosine_matrix(A, len_A, A, len_A), atol=1e-5)


def test_center_frame_index():
    x = np.arange(5 * 2, dtype=np.float32).reshape(1, 5, 2)
    for length, index in [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]:
        np.testing.assert_array_equal(pooling.center_frame(x[0], length), x[0, index])


def test_duration_similarity_vs_reference():
    rng = np.random.default_rng(2)
    len_A = rng.integers(1, 1500, 9).astype(np.int32)
    len_B = np.concatenate([len_A[:3], rng.integers(1, 1500, 4)]).astype(np.int32)
    got = pooling.duration_similarity_matrix(len_A, len_B)
    want = pooling.reference_duration_similarity_matrix(len_A, len_B)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[np.arange(3), np.arange(3)], 1.0)
    assert float(pooling.duration_similarity(100, 400)) == pytest.approx(0.25)


def test_any_block_of_utterances_gives_the_bits_of_the_whole_grid():
    """A seqsim run whose --memory_budget splits a pair scores it in blocks of utterances; a run that does not, whole.
    XLA's float32 pooling (batches of 1 and 2) and product (any block) gave other last bits, and two workers with two
    budgets mixed them in one store. Every block, at every embed, must give the whole grid's bits."""
    rng = np.random.default_rng(3)
    for embed in (8, 384, 512):
        A, len_A = ragged(rng, 40, 300, embed, np.nan)
        B, len_B = ragged(rng, 30, 250, embed, 1e30)
        for matrix in (pooling.mean_pooled_cosine_matrix, pooling.center_frame_cosine_matrix):
            whole = matrix(A, len_A, B, len_B)
            for stop in range(1, 40, 3):
                rows = slice(stop // 2, stop)
                for cols in (slice(0, 1), slice(3, 5), slice(0, 17), slice(1, 30)):
                    frames_a, frames_b = int(len_A[rows].max()), int(len_B[cols].max())
                    block = matrix(A[rows, :frames_a], len_A[rows], B[cols, :frames_b], len_B[cols])
                    np.testing.assert_array_equal(block, whole[rows, cols])
