"""SeqSim kernels against their float64 NumPy references, on random ragged inputs with poisoned padding."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import axes
from engine.errors import ShapeError
from kernels import seqsim as ss
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]

# bf16 rounds each unit frame component by a relative 2**-8 at most, so every cosine moves by at most about
# 2 * 2**-8 = 0.0078 (|sum a_k b_k (da_k + db_k)| <= 2u sum |a_k b_k| <= 2u); max and mean are 1-Lipschitz in the
# largest entry, so SeqSim moves by no more than that either. Random data lands far inside (errors average out).
BF16_ATOL = 1e-2


def ragged(rng, count, frames, embed, *, poison=np.nan, dtype=np.float32, lengths=None):
    """x: [count, frames, embed] normal frames with padding set to ``poison``; lengths span 1..frames."""
    if lengths is None:
        lengths = rng.integers(1, frames + 1, count)
        lengths[0] = 1
        lengths[-1] = frames
    x = rng.standard_normal((count, frames, embed)).astype(np.float32)
    for i, length in enumerate(lengths):
        x[i, length:] = poison
    return x.astype(dtype), np.asarray(lengths, np.int32)


SHAPES = [  # (N, M, m, n, embed)
    (1, 1, 1, 1, 4),
    (5, 4, 7, 9, 8),
    (6, 7, 16, 11, 32),
    (9, 3, 23, 30, 48),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_seqsim_matrix_vs_reference(shape):
    n_a, n_b, m, n, d = shape
    rng = np.random.default_rng(sum(shape))
    A, len_A = ragged(rng, n_a, m, d)
    B, len_B = ragged(rng, n_b, n, d, poison=np.inf)
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    for name, g, w in zip(ss.SeqSim._fields, got, want, strict=True):
        assert g.shape == (n_a, n_b) and g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6, err_msg=name)


def test_seqsim_pair_vs_reference_and_batched_equals_pairwise():
    rng = np.random.default_rng(1)
    A, len_A = ragged(rng, 6, 13, 16)
    B, len_B = ragged(rng, 6, 10, 16, poison=-1e30)
    batched = ss.seqsim_pairs(A, B, len_A, len_B)
    for i in range(6):
        pair = ss.seqsim(A[i], B[i], len_A[i], len_B[i])
        want = ss.reference_seqsim(A[i, : len_A[i]], B[i, : len_B[i]])
        for g, p, w in zip(batched, pair, want, strict=True):
            np.testing.assert_allclose(float(p), w, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(g[i]), float(p), rtol=1e-6, atol=1e-7)
    # The all-pairs matrix agrees with the one-pair kernel on its diagonal.
    matrix = ss.seqsim_matrix(A, len_A, B, len_B, block_a=4, block_b=5)
    np.testing.assert_allclose(np.diag(np.asarray(matrix)), np.asarray(batched.score), rtol=1e-6, atol=1e-7)


def test_bf16_vs_reference():
    rng = np.random.default_rng(2)
    A, len_A = ragged(rng, 7, 20, 64, poison=1e30, dtype=jnp.bfloat16)
    B, len_B = ragged(rng, 5, 17, 64, poison=np.nan, dtype=jnp.bfloat16)
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, block_a=3, block_b=2)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)  # the same bf16 values, in float64
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=BF16_ATOL)
    pair = ss.seqsim(A[1], B[2], len_A[1], len_B[2])
    np.testing.assert_allclose(float(pair.score), want[0][1, 2], rtol=0, atol=BF16_ATOL)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 3e38, -1e20, 0.0])
def test_poisoned_padding_changes_nothing(poison):
    rng = np.random.default_rng(3)
    A, len_A = ragged(rng, 5, 12, 8, poison=0.0)
    B, len_B = ragged(rng, 4, 9, 8, poison=0.0)
    clean = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, block_a=2, block_b=3)
    A_p, B_p = A.copy(), B.copy()
    for x, lengths in ((A_p, len_A), (B_p, len_B)):
        for i, length in enumerate(lengths):
            x[i, length:] = poison
    poisoned = ss.seqsim_matrix(A_p, len_A, B_p, len_B, directional=True, block_a=2, block_b=3)
    for c, p in zip(clean, poisoned, strict=True):
        np.testing.assert_array_equal(np.asarray(c), np.asarray(p))
    pair_clean = ss.seqsim(A[0], B[1], len_A[0], len_B[1])
    pair_poisoned = ss.seqsim(A_p[0], B_p[1], len_A[0], len_B[1])
    np.testing.assert_array_equal(np.asarray(pair_clean), np.asarray(pair_poisoned))


def test_self_similarity_is_one_and_symmetric():
    rng = np.random.default_rng(4)
    A, len_A = ragged(rng, 8, 15, 24)
    B, len_B = ragged(rng, 5, 19, 24)
    self_sim = ss.seqsim_matrix(A, len_A, A, len_A, directional=True, block_a=3, block_b=5)
    for x in self_sim:
        np.testing.assert_allclose(np.diag(np.asarray(x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(self_sim.score), np.asarray(self_sim.score).T, atol=1e-6)
    ab = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    ba = ss.seqsim_matrix(B, len_B, A, len_A, directional=True)
    np.testing.assert_allclose(np.asarray(ab.score), np.asarray(ba.score).T, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ab.a_to_b), np.asarray(ba.b_to_a).T, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ab.b_to_a), np.asarray(ba.a_to_b).T, atol=1e-6)


def test_block_sizes_do_not_change_results():
    rng = np.random.default_rng(5)
    A, len_A = ragged(rng, 11, 14, 16)
    B, len_B = ragged(rng, 7, 10, 16)
    want = np.asarray(ss.seqsim_matrix(A, len_A, B, len_B, block_a=11, block_b=7))
    for block_a, block_b in [(1, 1), (3, 2), (4, 5), (10, 6), (50, 50), (None, 3)]:
        got = ss.seqsim_matrix(A, len_A, B, len_B, block_a=block_a, block_b=block_b)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7, err_msg=f"{block_a}x{block_b}")
    tiny_budget = ss.seqsim_matrix(A, len_A, B, len_B, memory_bytes=1)  # falls back to 1x1 blocks
    np.testing.assert_allclose(np.asarray(tiny_budget), want, rtol=1e-6, atol=1e-7)


def test_zero_and_negative_frames():
    # An all-zero valid frame has cosine 0 with everything; rows whose best match is negative stay negative
    # (padding must not contribute a 0 or any other value to the max).
    rng = np.random.default_rng(6)
    A, len_A = ragged(rng, 3, 6, 5, lengths=[2, 6, 4])
    B, len_B = ragged(rng, 3, 5, 5, lengths=[5, 1, 3])
    A[:, :, 0] = np.abs(A[:, :, 0]) + 5.0  # A points along +x, B along -x: their cosines are all negative
    B[:, :, 0] = -np.abs(B[:, :, 0]) - 5.0
    A[1, 2] = 0.0
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    assert np.all(want[0][[0, 2]] < 0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)


def test_choose_blocks_respects_budget():
    for n_a, n_b, m, n, d in [(64, 64, 500, 500, 512), (400, 300, 500, 480, 1280), (3, 1000, 1500, 20, 384)]:
        for budget in (1, 2**20, 64 * 2**20, ss.CPU_BLOCK_BUDGET_BYTES, 2**40):
            for platform in ("cpu", "gpu"):
                ba, bb = ss.choose_blocks(n_a, n_b, m, n, d, np.float32, budget, platform=platform)
                assert 1 <= ba <= n_a and 1 <= bb <= n_b
                if (ba, bb) != (1, 1):
                    assert 8 * ba * m * bb * n <= budget
    # CPU blocks stay cache-sized; accelerators take the largest blocks the budget allows.
    assert ss.choose_blocks(64, 64, 100, 100, 384, np.float32, 2**30) == (10, 10)
    assert ss.choose_blocks(64, 64, 100, 100, 384, np.float32, 2**30, platform="gpu") == (64, 64)
    assert ss.default_memory_budget() > 0


def test_bad_inputs_name_the_argument():
    A = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(ShapeError, match="len_A"):
        ss.seqsim_matrix(A, np.array([0, 3]), A, np.array([1, 1]))
    with pytest.raises(ShapeError, match="len_B"):
        ss.seqsim_matrix(A, np.array([1, 3]), A, np.array([1, 6]))
    with pytest.raises(ShapeError, match="embed"):
        ss.seqsim_matrix(A, np.array([1, 3]), np.zeros((2, 5, 3), np.float32), np.array([1, 1]))
    with pytest.raises(ShapeError, match="bfloat16"):
        ss.seqsim_matrix(A, np.array([1, 3]), A.astype(jnp.bfloat16), np.array([1, 1]))


def test_sharded_on_one_device_equals_single_device():
    rng = np.random.default_rng(7)
    A, len_A = ragged(rng, 5, 9, 8)
    B, len_B = ragged(rng, 4, 7, 8)
    mesh = jax.make_mesh((1,), (axes.DATA,), devices=jax.devices()[:1])
    got = ss.seqsim_matrix_sharded(A, len_A, B, len_B, mesh, directional=True, block_a=2)
    want = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, block_a=2)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


# Multi-device runs need XLA_FLAGS before JAX initialises, and other test modules import JAX first: a subprocess.
_SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from engine import axes
    from kernels import seqsim as ss
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    # (devices, N, block_a, mesh axis type): N not a multiple of 2 or 8, N below the device count, a multiple.
    cases = [(2, 7, None, "explicit"), (8, 13, 1, "auto"), (8, 3, None, "explicit"), (8, 16, 2, "explicit")]
    for devices, n_a, block_a, mode in cases:
        axis_type = jax.sharding.AxisType.Explicit if mode == "explicit" else jax.sharding.AxisType.Auto
        mesh = jax.make_mesh((devices,), (axes.DATA,), axis_types=(axis_type,), devices=jax.devices()[:devices])
        len_A = rng.integers(1, 10, n_a).astype(np.int32)
        len_B = rng.integers(1, 8, 5).astype(np.int32)
        A = rng.standard_normal((n_a, 9, 8)).astype(np.float32)
        B = rng.standard_normal((5, 7, 8)).astype(np.float32)
        for i, length in enumerate(len_A):
            A[i, length:] = np.nan
        got = ss.seqsim_matrix_sharded(A, len_A, B, len_B, mesh, directional=True, block_a=block_a)
        want = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
        ref = ss.reference_seqsim_matrix(A, len_A, B, len_B)
        assert got.score.shape == (n_a, 5), got.score.shape
        assert len(got.score.sharding.device_set) == devices, got.score.sharding
        if n_a % devices == 0:  # row-sharded: every device holds only its own rows
            assert got.score.addressable_shards[0].data.shape == (n_a // devices, 5)
        for g, w, r in zip(got, want, ref):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-6)
    print("sharded ok")
    """
)


def test_sharded_on_fake_cpu_devices_equals_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(300)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sharded ok" in result.stdout


def test_frames_beyond_the_longest_utterance_are_cropped():
    rng = np.random.default_rng(8)
    A, len_A = ragged(rng, 4, 40, 8, lengths=[3, 9, 1, 17])  # cropped to 32 frames
    B, len_B = ragged(rng, 3, 30, 8, lengths=[2, 5, 4])  # cropped to 16 frames
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    uncropped = ss._seqsim_matrix_jit(A, len_A, B, len_B, block_a=2, block_b=2, directional=True)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    for g, u, w in zip(got, uncropped, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(u), rtol=1e-6, atol=1e-7)
