"""kernels.frames: the shared frame helpers against torch's F.normalize and by their properties."""

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import frames


def test_normalize_frames_is_torch_normalize_on_valid_frames_and_zero_on_padding():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 16)).astype(np.float32)
    x[2] = 0.0  # an all-zero valid frame: torch divides by eps and gives zeros
    x[6:] = np.nan  # poisoned padding
    got = np.asarray(frames.normalize_frames(jnp.asarray(x), 6))
    want = torch.nn.functional.normalize(torch.from_numpy(x[:6]), dim=-1, eps=frames.COS_EPS).numpy()
    np.testing.assert_allclose(got[:6], want, rtol=1e-6, atol=1e-7)  # float32 rounding of one norm and divide
    assert not got[6:].any()
    bf16 = frames.normalize_frames(jnp.asarray(x, jnp.bfloat16), 6)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32)[:6], want, atol=1e-2)  # bf16: 8 bits of mantissa
    # unit_rows multiplies by rsqrt in float32, the twin divides by the float64 norm: float32 rounding apart.
    want64 = frames.reference_unit_rows(x[:6].astype(np.float64))
    np.testing.assert_allclose(np.asarray(frames.unit_rows(jnp.asarray(x[:6]))), want64, rtol=1e-6, atol=1e-7)


def test_check_lengths_names_the_argument():
    frames.check_lengths("len_A", np.array([1, 5]), 2, 5, "utterance")
    with pytest.raises(ShapeError, match=r"len_A must be i32\[3\] \(one length per utterance\)"):
        frames.check_lengths("len_A", np.array([1, 5]), 3, 5, "utterance")
    with pytest.raises(ShapeError, match=r"len_A must lie in 1..5, got 0..6"):
        frames.check_lengths("len_A", np.array([0, 6]), 2, 5, "utterance")


@pytest.mark.parametrize("total, most", [(1, 1), (7, 3), (10, 5), (100, 7), (5, 100), (9, 0)])
def test_even_split_uses_the_fewest_blocks_with_the_least_padding(total, most):
    size = frames.even_split(total, most)
    blocks = -(-total // size)
    assert 1 <= size <= max(1, min(most, total))
    assert blocks == -(-total // max(1, min(most, total)))  # no more blocks than the largest allowed size needs
    assert blocks * size - total < blocks  # padding less than one row per block
