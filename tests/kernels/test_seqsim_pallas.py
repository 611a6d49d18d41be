"""The fused Pallas SeqSim kernel (kernels.seqsim_pallas), in interpret mode, against the XLA block path and the
float64 NumPy reference: d of 384, 512 and 1280, ragged lengths that cross tile boundaries, one-frame utterances,
utterances that are all padding but one frame, poisoned padding. Sizes are small: interpret mode runs every grid
program as a loop on the CPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import seqsim as ss
from kernels import seqsim_pallas as sp
from tests.kernels.test_seqsim import BF16_ATOL, ragged

EMBEDS = (384, 512, 1280)  # Whisper base, small/medium-like, large-v3: none but 512 a power of two
F32_ATOL = 1e-6  # the bound: same f32 products, only the order of the float32 sums differs (seen: 4e-8)
U32 = 2.0**-24  # float32 unit roundoff


def bf16_vs_xla_atol(embed: int, frames: int) -> float:
    """Bound on |Pallas - XLA| given the same bfloat16 inputs.

    Both paths round the same unit frames to bf16 (``normalize_frames``) and accumulate in f32. A product of two
    bf16 numbers (8-bit significands) is exact in f32 (24 bits), so the two cosines differ only by the order of the
    f32 sum of ``embed`` exact products: each order is within gamma_(embed-1) ~ (embed - 1) * u of the exact sum
    times sum_k |a_k b_k| <= |a| |b| <= (1 + 2**-8)**2 (unit vectors after bf16 rounding), so they differ by at most
    twice that. max and mean are 1-Lipschitz in the largest entry, and the sums over ``frames`` maxima add at most
    ``frames * u`` each (cosines <= 1.02). For d = 1280 and 70 frames: 1.6e-4; random data lands far inside (seen:
    4e-8), because rounding errors of different signs cancel.
    """
    return 2 * ((embed - 1) * (1 + 2**-8) ** 2 + frames * 1.02) * U32 * 1.01


def xla(A, len_A, B, len_B):
    return ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=False)


def pallas(A, len_A, B, len_B, **kw):
    return sp.seqsim_matrix_pallas(A, len_A, B, len_B, directional=True, **kw)


def check(got, want, atol, rtol=0.0):
    for name, g, w in zip(ss.SeqSim._fields, got, want, strict=True):
        assert np.shape(g) == np.shape(w) and np.asarray(g).dtype == np.float32, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("embed", EMBEDS)
def test_f32_vs_xla_and_reference(embed):
    # 70 and 45 frames cross the 32-frame interpret tiles (3 and 2 tiles); lengths 1..frames, NaN / inf padding.
    rng = np.random.default_rng(embed)
    A, len_A = ragged(rng, 3, 70, embed)
    B, len_B = ragged(rng, 4, 45, embed, poison=np.inf)
    got = pallas(A, len_A, B, len_B)
    check(got, xla(A, len_A, B, len_B), F32_ATOL)
    check(got, ss.reference_seqsim_matrix(A, len_A, B, len_B), 1e-6, rtol=1e-5)  # the XLA path's own bound


@pytest.mark.parametrize("embed", EMBEDS)
def test_bf16_vs_xla_and_reference(embed):
    rng = np.random.default_rng(embed + 1)
    A, len_A = ragged(rng, 3, 70, embed, poison=1e30, dtype=jnp.bfloat16)
    B, len_B = ragged(rng, 4, 45, embed, poison=np.nan, dtype=jnp.bfloat16)
    got = pallas(A, len_A, B, len_B)
    check(got, xla(A, len_A, B, len_B), bf16_vs_xla_atol(embed, 70))
    A32, B32 = np.asarray(A, np.float32), np.asarray(B, np.float32)
    check(got, ss.reference_seqsim_matrix(A32, len_A, B32, len_B), BF16_ATOL)  # bf16 rounding (test_seqsim)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_one_frame_and_all_padding_but_one_frame(dtype):
    rng = np.random.default_rng(5)
    # A: 40 frames (two 32-frame tiles), two utterances all NaN padding but their first frame, one of 40 valid frames;
    # B: arrays of one frame.
    A, len_A = ragged(rng, 3, 40, 384, poison=np.nan, dtype=dtype, lengths=[1, 40, 1])
    B, len_B = ragged(rng, 2, 1, 384, dtype=dtype, lengths=[1, 1])
    atol = F32_ATOL if dtype == np.float32 else bf16_vs_xla_atol(384, 40)
    for (x, lx), (y, ly) in (((A, len_A), (B, len_B)), ((A, len_A), (A, len_A))):
        got = pallas(x, lx, y, ly)
        check(got, xla(x, lx, y, ly), atol)
        want = ss.reference_seqsim_matrix(np.asarray(x, np.float32), lx, np.asarray(y, np.float32), ly)
        check(got, want, 1e-6 if dtype == np.float32 else BF16_ATOL, rtol=1e-5)
        # A one-frame utterance against another is that frame pair's cosine in both directions.
        ones = np.ix_(np.asarray(lx) == 1, np.asarray(ly) == 1)
        np.testing.assert_array_equal(np.asarray(got.a_to_b)[ones], np.asarray(got.b_to_a)[ones])


POISONS = (np.nan, np.inf, -np.inf, 3e38)


def test_poisoned_padding_changes_nothing():
    """Each utterance's padding holds another of ``POISONS``, on both sides: one interpret-mode run checks all four."""
    rng = np.random.default_rng(7)
    A, len_A = ragged(rng, 4, 50, 384, poison=0.0, lengths=[1, 20, 35, 49])
    B, len_B = ragged(rng, 4, 37, 384, poison=0.0, lengths=[1, 12, 30, 36])
    clean = pallas(A, len_A, B, len_B)
    A_p, B_p = A.copy(), B.copy()
    for x, lengths in ((A_p, len_A), (B_p, len_B)):
        for i, poison in enumerate(POISONS):
            x[i, lengths[i] :] = poison
    # Padding is replaced by zeros before the kernel, so the results are bit for bit the clean ones.
    for c, p in zip(clean, pallas(A_p, len_A, B_p, len_B), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(c))


def test_tile_sizes_do_not_change_results():
    rng = np.random.default_rng(9)
    A, len_A = ragged(rng, 2, 70, 384)
    B, len_B = ragged(rng, 3, 45, 384, poison=np.inf)
    want = xla(A, len_A, B, len_B)
    # (128 + 16) x 256 f32 tiles fit a Hopper SM's 227 KiB of shared memory; 512 columns did not (H100 lease, issue 86).
    # Tails: 70 frames = 64 + a 16-row tail; 45 = 32 + one 16-column tail; 64 x 64 with 32 x 16 tails.
    tiles = (sp.PallasBlocks(16, 64, 16), sp.PallasBlocks(128, 16, 256), sp.PallasBlocks(32, 32, 128),
             sp.PallasBlocks(64, 64, 128, tail_a=16), sp.PallasBlocks(64, 64, 128, tail_a=32, tail_b=16))  # fmt: skip
    for blocks in tiles:
        check(pallas(A, len_A, B, len_B, blocks=blocks), want, F32_ATOL)


def test_self_similarity_is_one_and_score_matches_directional():
    rng = np.random.default_rng(3)
    A, len_A = ragged(rng, 3, 40, 512)
    got = pallas(A, len_A, A, len_A)
    np.testing.assert_allclose(np.diag(np.asarray(got.score)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.a_to_b), np.asarray(got.b_to_a).T, atol=1e-7)
    score = sp.seqsim_matrix_pallas(A, len_A, A, len_A)
    np.testing.assert_array_equal(np.asarray(score), np.asarray(got.score))


def test_bad_inputs_name_the_argument():
    A = np.zeros((2, 5, 16), np.float32)
    with pytest.raises(ShapeError, match="len_B must lie in 1..5"):
        sp.seqsim_matrix_pallas(A, [1, 5], A, [0, 5])
    with pytest.raises(ShapeError, match="must both be float32 or both bfloat16"):
        sp.seqsim_matrix_pallas(A, [1, 5], A.astype(np.float16), [1, 5])


def test_block_table():
    if jax.default_backend() == "cpu":  # on a GPU this file tests the compiled kernel, with that device's entry
        assert sp.device_key() == "cpu-interpret" and sp.blocks_for() == sp.BLOCKS["cpu-interpret"]

    class Kind:
        platform = "gpu"

        def __init__(self, kind):
            self.device_kind = kind

    assert sp.blocks_for(Kind("NVIDIA H100 80GB HBM3")) == sp.BLOCKS["NVIDIA H100"]  # a key matches by prefix
    assert sp.blocks_for(Kind("NVIDIA H200")) == sp.BLOCKS["NVIDIA H200"]
    assert sp.blocks_for(Kind("NVIDIA A100-SXM4-40GB")) == sp.DEFAULT_BLOCKS
    with pytest.raises(ValueError, match="frames_a must be a power of two >= 16"):
        sp.PallasBlocks(48, 64, 64)
    with pytest.raises(ValueError, match="tail_b must be a power of two >= 16"):
        sp.PallasBlocks(64, 64, 64, tail_b=24)
    with pytest.raises(ValueError, match=r"tail_a must be at most frames_a \(64\), got 128"):
        sp.PallasBlocks(64, 64, 64, tail_a=128)
    assert (sp.PallasBlocks(64, 32, 64, tail_a=16).rows_tail, sp.PallasBlocks(64, 32, 64).cols_tail) == (16, 32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_lowers_to_triton_for_cuda(dtype):
    """The GPU kernel is lowered (not compiled: no GPU here) to Triton IR at d = 1280 with the H100 blocks, with and
    without tail tiles: this catches what Triton refuses before a device is lent (tiles of a size not a power of two,
    unsupported ops)."""
    A = jax.ShapeDtypeStruct((3, 500, 1280), dtype)
    B = jax.ShapeDtypeStruct((2, 450, 1280), dtype)
    lengths_a, lengths_b = jax.ShapeDtypeStruct((3,), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32)

    table = sp.BLOCKS["NVIDIA H100"]
    tails = (dataclasses.replace(table, tail_a=64, tail_b=32), dataclasses.replace(table, tail_a=16))  # the sweep's
    for blocks in (table, *tails):  # 16-row tails: Triton's smallest dot under the table's 8 warps

        def run(A, len_A, B, len_B, blocks=blocks):
            return sp._seqsim_pallas_jit(A, len_A, B, len_B, blocks=blocks, interpret=False, platform="gpu",
                                         directional=True)  # fmt: skip

        text = jax.jit(run).trace(A, lengths_a, B, lengths_b).lower(lowering_platforms=("cuda",)).as_text()
        assert "triton" in text.lower() and "seqsim_pallas" in text


def test_seqsim_matrix_takes_pallas_on_request_only():
    rng = np.random.default_rng(4)
    A, len_A = ragged(rng, 3, 70, 384)
    B, len_B = ragged(rng, 4, 45, 384, poison=np.inf)
    # The same shapes as test_f32_vs_xla_and_reference[384]: compiled once for both tests.
    direct = pallas(A, len_A, B, len_B)
    chosen = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, pallas=True)
    for c, d in zip(chosen, direct, strict=True):
        np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
    default = ss.seqsim_matrix(A, len_A, B, len_B)  # the XLA paths stay the default (packed on CPU)
    np.testing.assert_allclose(np.asarray(default), np.asarray(direct.score), rtol=0, atol=F32_ATOL)
    with pytest.raises(ValueError, match="packed=True or pallas=True"):
        ss.seqsim_matrix(A, len_A, B, len_B, packed=True, pallas=True)
