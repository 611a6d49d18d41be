"""kernels.filters.median_filter against openai-whisper's median_filter (torch CPU path), scipy and the reference."""

import functools

import jax
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from engine.errors import ShapeError
from kernels.filters import median_filter, reference_median_filter

WIDTHS = [1, 3, 5, 7, 13]
SHAPES = [(10,), (1, 15), (4, 5, 345), (2, 3, 40, 64), (3, 2)]  # whisper's test shapes, the 4-D one smaller


def whisper_median_filter(x: np.ndarray, width: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    timing = pytest.importorskip(
        "whisper.timing", reason="openai-whisper not installed: pip install --no-deps openai-whisper numba tiktoken"
    )
    return timing.median_filter(torch.from_numpy(np.ascontiguousarray(x)), width).numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_median_filter_vs_whisper(shape):
    x = np.random.default_rng(len(shape)).standard_normal(shape, dtype=np.float32)
    for width in WIDTHS:
        np.testing.assert_array_equal(np.asarray(median_filter(x, width)), whisper_median_filter(x, width))


def test_median_filter_vs_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 31), dtype=np.float32)
    n_valid = rng.integers(0, 32, (3, 4))
    for width in WIDTHS:
        np.testing.assert_array_equal(np.asarray(median_filter(x, width)), reference_median_filter(x, width))
        np.testing.assert_array_equal(
            np.asarray(median_filter(x, width, n_valid)), reference_median_filter(x, width, n_valid)
        )


def test_median_filter_vs_scipy():
    """scipy.signal.medfilt in the interior (it zero-pads the edges); scipy.ndimage on a reflect-padded input
    everywhere, as whisper's own test checks."""
    x = np.random.default_rng(2).standard_normal((6, 300), dtype=np.float32)
    for width in WIDTHS:
        half = width // 2
        ours = np.asarray(median_filter(x, width))
        medfilt = np.stack([scipy.signal.medfilt(row, width) for row in x])
        np.testing.assert_array_equal(ours[:, half : x.shape[1] - half], medfilt[:, half : x.shape[1] - half])
        padded = np.pad(x, [(0, 0), (half, half)], mode="reflect")
        ndimage = scipy.ndimage.median_filter(padded, [1, width])[:, half : half + x.shape[1]]
        np.testing.assert_array_equal(ours, ndimage)


def test_median_filter_edges_by_hand():
    x = np.array([1.0, 5.0, 2.0, 8.0, 3.0], np.float32)
    # reflect-padded by 1: [5, 1, 5, 2, 8, 3, 8] -> window medians
    np.testing.assert_array_equal(np.asarray(median_filter(x, 3)), [5, 2, 5, 3, 8])
    # reflect-padded by 2: [2, 5, 1, 5, 2, 8, 3, 8, 2]
    np.testing.assert_array_equal(np.asarray(median_filter(x, 5)), [2, 5, 3, 5, 3])
    # too short to reflect (frames <= width // 2): unchanged, like whisper
    short = np.array([[4.0, 1.0, 9.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(median_filter(short, 7)), short)
    np.testing.assert_array_equal(whisper_median_filter(short, 7), short)


def test_median_filter_nan_sorts_last_like_torch():
    x = np.random.default_rng(3).standard_normal((4, 50), dtype=np.float32)
    x[0, 10] = x[1, 0] = x[2, 48] = x[2, 49] = np.nan
    x[3, 20:24] = np.nan
    for width in (3, 7):
        np.testing.assert_array_equal(np.asarray(median_filter(x, width)), whisper_median_filter(x, width))


def test_median_filter_ragged_rows():
    """Each row filtered as whisper filters its valid frames alone; padding (NaN here) comes back unchanged."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 60), dtype=np.float32)
    n_valid = np.array([[60, 1, 3, 4, 17], [2, 59, 8, 30, 7]])
    for b, r in np.ndindex(n_valid.shape):
        x[b, r, n_valid[b, r] :] = np.nan
    filt = jax.jit(functools.partial(median_filter, width=7))
    got = np.asarray(filt(x, n_valid=n_valid))
    for b, r in np.ndindex(n_valid.shape):
        n = n_valid[b, r]
        np.testing.assert_array_equal(got[b, r, :n], whisper_median_filter(x[b, r, :n], 7), err_msg=f"row {b, r}")
        assert np.all(np.isnan(got[b, r, n:]))
    # n_valid broadcasts over the leading axes; full rows equal the unragged filter
    full = x[:1, :1]
    np.testing.assert_array_equal(np.asarray(median_filter(full, 7, 60)), np.asarray(median_filter(full, 7)))


def test_median_filter_batched_by_vmap():
    x = np.random.default_rng(5).standard_normal((8, 3, 40), dtype=np.float32)
    n_valid = np.arange(8) * 5 + 2
    one = jax.vmap(lambda row, n: median_filter(row, 5, n))(x, n_valid)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(median_filter(x, 5, n_valid[:, None])))


def test_median_filter_rejects_bad_width_and_n_valid():
    x = np.zeros((2, 10), np.float32)
    for width in (0, 2, 6, -3, 3.0):
        with pytest.raises(ValueError, match="positive odd int"):
            median_filter(x, width)
    with pytest.raises(ShapeError, match="n_valid must broadcast"):
        median_filter(x, 3, np.array([1, 2, 3]))
