"""The decode's token choice (``engine.models.whisper.select``) against ``jax.lax.top_k`` / ``jnp.argmax`` and the
NumPy twin, on random rows with planted ties, suppressed (-inf) entries and whole -inf rows (a beam not yet live)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.models.whisper.select import first_argmax, reference_top_k, top_k_chunked


def rows(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[0] = -np.inf  # a beam that is not live yet
    flat[1, rng.integers(0, shape[-1], 300)] = flat[1].max() + 1  # many ties at the top, across chunks
    flat[2] = np.round(flat[2], 1)  # ties everywhere
    flat[3, rng.random(shape[-1]) < 0.5] = -np.inf  # suppressed entries
    return x


# whisper's vocabulary (chunks of 451), whole chunks of 512, a prime (padded), two chunks, one chunk (lax.top_k)
@pytest.mark.parametrize("n", [51865, 4096, 3001, 1000, 37])
def test_top_k_chunked_is_top_k(n):
    x = rows(n, (2, 3, n))
    for k in (1, 10):
        values, index = jax.jit(top_k_chunked, static_argnums=1)(x, k)
        want_values, want_index = jax.lax.top_k(x, k)
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(values, want_values)
        ref_values, ref_index = reference_top_k(x, k)
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(values, ref_values)


def test_first_argmax_is_argmax():
    x = rows(1, (6, 51865))
    index, best = jax.jit(first_argmax)(x)
    np.testing.assert_array_equal(index, np.argmax(x, axis=-1))
    np.testing.assert_array_equal(best, x.max(axis=-1))
    assert index.dtype == jnp.int32
