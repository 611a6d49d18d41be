"""The e4m3 SeqSim kernel against its ml_dtypes NumPy twin and, within the stated bound, the float64 reference."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import seqsim as ss
from kernels import seqsim_fp8 as f8
from tests.kernels.test_seqsim import ragged


def _unit(rng, frames, embed):
    x = rng.standard_normal((frames, embed)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("scale", f8.SCALES)
def test_quantize_is_ml_dtypes_rounding_bit_for_bit(scale):
    rng = np.random.default_rng(0)
    unit = _unit(rng, 40, 96)
    unit[0] = 0.0  # an all-zero valid frame
    unit[1] = np.eye(96, dtype=np.float32)[3]  # one component of 1: the largest a unit frame holds
    unit[2] = -np.eye(96, dtype=np.float32)[5]
    q, inverse = f8.quantize_frames(jnp.asarray(unit), 40, scale)
    assert q.dtype == jnp.float8_e4m3fn and inverse.dtype == jnp.float32
    got = np.asarray(q.astype(jnp.float32)) * np.asarray(inverse)[:, None]
    np.testing.assert_array_equal(got, f8.reference_quantize(unit, scale))


def test_frame_scale_lifts_each_frame_max_into_the_top_binade():
    rng = np.random.default_rng(1)
    unit = _unit(rng, 64, 512)
    unit[:8] *= 2.0 ** -np.arange(8, dtype=np.float32)[:, None]  # frames far from unit norm too
    unit[8] = np.eye(512, dtype=np.float32)[0]
    unit[9] = 448 / 512  # max exactly 0.875: scale 2**9 reaches 448 exactly, not beyond
    s = np.asarray(f8.frame_scales(jnp.asarray(unit), "frame"))
    top = np.abs(unit).max(axis=1) * s
    assert np.all(np.log2(s) == np.round(np.log2(s))), "scales are powers of two"
    assert np.all((top > f8.FP8_MAX / 2) & (top <= f8.FP8_MAX)), top
    q, _ = f8.quantize_frames(jnp.asarray(unit), 64, "frame")
    assert np.isfinite(np.asarray(q.astype(jnp.float32))).all(), "no component overflowed to NaN"


def test_scales_keep_small_components_that_unscaled_e4m3_flushes():
    # A frame dominated by one outlier component (as some encoder layers have): the rest sit near 2**-12.
    unit = np.full((1, 512), 2.0**-12, np.float32)
    unit[0, 0] = np.sqrt(1 - 511 * 2.0**-24)
    q = {s: f8.reference_quantize(unit, s) for s in f8.SCALES}
    assert np.all(q["none"][0, 1:] == 0), "below 2**-10, unscaled e4m3 rounds to zero"
    np.testing.assert_array_equal(q["tensor"][0, 1:], 2.0**-12)  # exact once scaled into the normal range
    np.testing.assert_array_equal(q["frame"], q["tensor"])
    # Dense Gaussian frames: every scale gives about the same cosine errors (the large components' rounding rules).
    unit = _unit(np.random.default_rng(2), 200, 512)
    exact = unit.astype(np.float64) @ unit.T.astype(np.float64)
    errors = {s: np.abs(q @ q.T - exact).max() for s in f8.SCALES for q in [f8.reference_quantize(unit, s)]}
    assert max(errors.values()) < 1.1 * min(errors.values()) < 0.02, errors


SHAPES = [  # (N, M, m, n, embed)
    (1, 1, 1, 1, 16),
    (5, 4, 7, 9, 32),
    (9, 3, 23, 30, 64),
]


@pytest.mark.parametrize("scale", f8.SCALES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_seqsim_matrix_fp8_vs_reference_twin(shape, scale):
    n_a, n_b, m, n, d = shape
    rng = np.random.default_rng(sum(shape))
    A, len_A = ragged(rng, n_a, m, d)
    B, len_B = ragged(rng, n_b, n, d, poison=np.inf)
    got = f8.seqsim_matrix_fp8(A, len_A, B, len_B, scale=scale, directional=True)
    want = f8.reference_seqsim_matrix_fp8(A, len_A, B, len_B, scale)
    for name, g, w in zip(ss.SeqSim._fields, got, want, strict=True):
        assert g.shape == (n_a, n_b) and g.dtype == jnp.float32
        # Same e4m3 values, same exact products: only the float32 accumulation order differs.
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("scale", f8.SCALES)
def test_fp8_within_the_stated_bound_of_float64(scale):
    rng = np.random.default_rng(3)
    A, len_A = ragged(rng, 6, 40, 512, poison=1e30)
    B, len_B = ragged(rng, 5, 33, 512, poison=np.nan)
    got = f8.seqsim_matrix_fp8(A, len_A, B, len_B, scale=scale, directional=True)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    limit = f8.bound(512, scale)
    assert 0.12 < limit < 0.2
    for name, g, w in zip(ss.SeqSim._fields, got, want, strict=True):
        err = np.abs(np.asarray(g, np.float64) - w).max()
        assert err <= limit, (name, err, limit)
        if scale != "none":
            assert err < 0.02, (name, err)  # random roundings average out: far inside the worst case


def test_bf16_inputs_round_once_from_float32():
    rng = np.random.default_rng(4)
    A, len_A = ragged(rng, 4, 19, 64, dtype=jnp.bfloat16)
    B, len_B = ragged(rng, 3, 12, 64, poison=-1e30, dtype=jnp.bfloat16)
    got = f8.seqsim_matrix_fp8(A, len_A, B, len_B)
    want = f8.reference_seqsim_matrix_fp8(A, len_A, B, len_B)[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_one_pair_equals_the_matrix_and_bins_do_not_change_results():
    rng = np.random.default_rng(5)
    A, len_A = ragged(rng, 7, 40, 32)
    B, len_B = ragged(rng, 6, 45, 32, poison=np.inf)
    whole = f8.seqsim_matrix_fp8(A, len_A, B, len_B, directional=True)
    small_bins = f8.seqsim_matrix_fp8(A, len_A, B, len_B, directional=True, bin_frames=48)
    for g, w in zip(small_bins, whole, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
    for i in range(len(A)):
        for j in range(len(B)):
            pair = f8.seqsim_fp8(A[i], B[j], len_A[i], len_B[j])
            for p, w in zip(pair, whole, strict=True):
                np.testing.assert_allclose(float(p), float(w[i, j]), rtol=1e-6, atol=1e-7)


def test_self_similarity_is_one_within_rounding():
    # An e4m3 frame against itself: |q|^2 / s^2, within 2u + u^2 of 1 (and exactly symmetric).
    rng = np.random.default_rng(6)
    A, len_A = ragged(rng, 5, 20, 48)
    got = np.asarray(f8.seqsim_matrix_fp8(A, len_A, A, len_A))
    np.testing.assert_allclose(np.diag(got), 1.0, atol=f8.bound(48))
    np.testing.assert_array_equal(got, got.T)


def test_bad_inputs_name_the_argument():
    A = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(ShapeError, match="len_A"):
        f8.seqsim_matrix_fp8(A, [1, 5], A, [1, 1])
    with pytest.raises(ValueError, match="scale"):
        f8.seqsim_matrix_fp8(A, [1, 1], A, [1, 1], scale="channel")
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(lambda la: f8.seqsim_matrix_fp8(A, la, A, la))(jnp.ones(2, jnp.int32))


def test_e4m3_constants_match_ml_dtypes():
    info = ml_dtypes.finfo(ml_dtypes.float8_e4m3fn)
    assert float(info.max) == f8.FP8_MAX
    assert float(info.eps) / 2 == f8.FP8_UNIT_ROUNDOFF
    assert float(info.smallest_subnormal) / 2 == f8.FP8_HALF_SUBNORMAL_STEP
    assert f8.TENSOR_SCALE <= f8.FP8_MAX < 2 * f8.TENSOR_SCALE


def test_fp8_is_declared_for_hopper_only():
    class Kind:
        def __init__(self, kind):
            self.device_kind = kind

    assert f8.has_fp8(Kind("NVIDIA H100 80GB HBM3")) and f8.has_fp8(Kind("NVIDIA H200"))
    assert not f8.has_fp8(Kind("NVIDIA A100-SXM4-80GB")) and not f8.has_fp8(jax.devices("cpu")[0])
