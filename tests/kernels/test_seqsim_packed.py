"""Packed SeqSim (kernels.seqsim_packed) against the float64 reference and the block kernel, on ragged inputs with
poisoned padding, with bins small enough that every grid spans several bins and bins hold several utterances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import seqsim as ss
from kernels import seqsim_packed as sp
from tests.kernels.test_seqsim import BF16_ATOL, SHAPES, ragged


def packed(A, len_A, B, len_B, bin_frames):
    """(score, a_to_b, b_to_a) from seqsim_matrix_packed."""
    a_to_b, b_to_a = sp.seqsim_matrix_packed(jnp.asarray(A), len_A, jnp.asarray(B), len_B, bin_frames=bin_frames)
    return 0.5 * (a_to_b + b_to_a), a_to_b, b_to_a


@pytest.mark.parametrize("shape", [*SHAPES, (40, 30, 50, 40, 16)], ids=lambda s: "x".join(map(str, s)))
def test_packed_vs_reference(shape):
    """Bins of 8, 64 and 1024 frames against the reference, computed once for the three."""
    n_a, n_b, m, n, d = shape
    rng = np.random.default_rng(sum(shape))
    A, len_A = ragged(rng, n_a, m, d)
    B, len_B = ragged(rng, n_b, n, d, poison=np.inf)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    for bin_frames in (8, 64, 1024):
        for name, g, w in zip(ss.SeqSim._fields, packed(A, len_A, B, len_B, bin_frames), want, strict=True):
            assert g.shape == (n_a, n_b) and g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{name}, bins of {bin_frames}")


def test_packed_equals_blocks_and_is_the_default():
    rng = np.random.default_rng(11)
    A, len_A = ragged(rng, 23, 37, 24, poison=-np.inf)
    B, len_B = ragged(rng, 17, 29, 24, poison=3e38)
    blocks = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=False)
    forced = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=True)
    default = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    for b, f, d in zip(blocks, forced, default, strict=True):
        np.testing.assert_allclose(np.asarray(f), np.asarray(b), rtol=1e-6, atol=1e-7)
        # Packed is the default on every platform (issue 80: the blocks padded to the longest on accelerators).
        np.testing.assert_array_equal(np.asarray(d), np.asarray(f))
    score = ss.seqsim_matrix(A, len_A, B, len_B, packed=True)
    np.testing.assert_array_equal(np.asarray(score), np.asarray(forced.score))


def test_sides_packed_once_score_as_seqsim_matrix_in_either_role():
    rng = np.random.default_rng(16)
    A, len_A = ragged(rng, 13, 31, 16)
    B, len_B = ragged(rng, 9, 22, 16, poison=np.inf)
    pa, pb = ss.pack_states(A, len_A), ss.pack_states(B, len_B)
    for (x, y), (lx, ly), (px, py) in (((A, B), (len_A, len_B), (pa, pb)), ((B, A), (len_B, len_A), (pb, pa)),
                                     ((A, A), (len_A, len_A), (pa, pa))):  # fmt: skip
        got = ss.seqsim_matrix_of_packed(px, py, directional=True)
        want = ss.seqsim_matrix(x, lx, y, ly, directional=True, packed=True)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    with pytest.raises(ShapeError, match="lengths must lie in 1..31"):
        ss.pack_states(A, np.where(np.arange(13) == 3, 0, len_A))


def test_blocks_of_bins_score_bit_for_bit_as_the_whole_sides():
    """A pair split into blocks of bins (kernels.seqsim_packed.restrict, as the seqsim job splits a large pair):
    each block, its sides read with only their own utterances and frames, equals the whole pair's scores there."""
    rng = np.random.default_rng(17)
    A, len_A = ragged(rng, 41, 60, 16, poison=np.inf)
    B, len_B = ragged(rng, 33, 50, 16)
    whole_a, whole_b = sp.PackedSide(jnp.asarray(A), len_A, 256), sp.PackedSide(jnp.asarray(B), len_B, 256)
    whole = sp.seqsim_packed_sides(whole_a, whole_b)
    assert len(whole_a.packing.frame) >= 4 and len(whole_b.packing.frame) >= 3, "the sides must span several bins"

    def side(x, lengths, packing, bins):
        utterances = np.sort(packing.utterance[bins][packing.utterance[bins] >= 0])
        frames = int(lengths[utterances].max())  # the block's states: its own utterances, up to their longest
        sub, got = sp.restrict(packing, bins, x.shape[1], frames)
        np.testing.assert_array_equal(got, utterances)
        return sp.PackedSide(jnp.asarray(x[utterances][:, :frames]), lengths[utterances], 256, sub), utterances

    for bins_a in ([0, 1], [2], list(range(3, len(whole_a.packing.frame)))):
        for bins_b in ([0], list(range(1, len(whole_b.packing.frame)))):
            side_a, rows = side(A, len_A, whole_a.packing, bins_a)
            side_b, cols = side(B, len_B, whole_b.packing, bins_b)
            for g, w in zip(sp.seqsim_packed_sides(side_a, side_b), whole, strict=True):
                np.testing.assert_array_equal(g, w[np.ix_(rows, cols)])


def test_bf16_vs_reference():
    rng = np.random.default_rng(12)
    A, len_A = ragged(rng, 9, 20, 64, poison=1e30, dtype=jnp.bfloat16)
    B, len_B = ragged(rng, 6, 17, 64, poison=np.nan, dtype=jnp.bfloat16)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)  # the same bf16 values, in float64
    for g, w in zip(packed(A, len_A, B, len_B, 32), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=BF16_ATOL)


def test_nan_in_a_valid_frame_stays_in_its_row_and_column():
    # Bins hold several utterances: a NaN must not reach the other utterances of its bin (a segment sum by matmul
    # would multiply it by their zero weights).
    rng = np.random.default_rng(13)
    A, len_A = ragged(rng, 6, 9, 8, lengths=[3, 9, 2, 5, 7, 4])
    B, len_B = ragged(rng, 5, 7, 8, lengths=[2, 7, 3, 5, 1])
    A[2, 1, 3] = np.nan
    B[3, 0, 0] = np.nan
    got = packed(A, len_A, B, len_B, 32)
    blocks = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=False)
    for g, b in zip(got, blocks, strict=True):
        nan = np.zeros((6, 5), bool)
        nan[2, :] = nan[:, 3] = True
        np.testing.assert_array_equal(np.isnan(g), nan)
        np.testing.assert_allclose(g[~nan], np.asarray(b)[~nan], rtol=1e-6, atol=1e-7)


def test_pack_places_every_frame_once_in_chunk_aligned_slots():
    rng = np.random.default_rng(14)
    lengths = rng.integers(1, 60, 37).astype(np.int32)
    p = sp.pack(lengths, 60, 128)
    n_chunks = 128 // sp.CHUNK
    assert sorted(p.utterance[p.utterance >= 0]) == list(range(37))
    np.testing.assert_array_equal(np.sort(p.frame[p.valid]), np.sort(np.concatenate(
        [u * 60 + np.arange(n) for u, n in enumerate(lengths)])))  # fmt: skip
    for b, s in zip(*np.nonzero(p.utterance >= 0), strict=True):
        u, chunks = p.utterance[b, s], p.chunks[b, s]
        used = chunks[chunks < n_chunks]
        assert len(used) == -(-lengths[u] // sp.CHUNK) and np.all(np.diff(used) == 1)
        first = p.frame[b, used[0] * sp.CHUNK]
        assert first == u * 60 and p.lengths[b, s] == lengths[u]
    assert np.all(p.chunks[p.utterance < 0] == n_chunks)  # empty slots read only the sentinel
    for x in p.chunks.shape[1:]:
        assert x & (x - 1) == 0  # powers of two: fewer compiled shapes
    with pytest.raises(ValueError, match="bin_frames=32 is below the longest utterance"):
        sp.pack(np.array([40, 3]), 40, 32)


def test_pack_side_takes_the_fewest_and_smallest_bins():
    def shape(lengths, most=1024):
        return sp.pack_side(np.asarray(lengths), max(lengths), most).frame.shape

    assert shape([3, 5]) == (1, 16)  # two chunks: the whole side in one small bin
    assert shape([1500, 20]) == (2, 1504)  # never below the longest utterance
    assert shape([40] * 400) == (16, 1024)
    # ~4,100 frames of sentences: 5 bins as in 1024s, but each of 896 frames, the last one not mostly padding.
    rng = np.random.default_rng(15)
    assert shape(rng.integers(90, 190, 30)) == (5, 896)
    # 29 x 152 padded frames: 5 bins need 1024 frames each (6 utterances), 6 bins of 768 (5 each) are less area.
    assert shape([150] * 29) == (6, 768)


def test_packed_needs_concrete_lengths():
    A = np.ones((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(lambda la: ss.seqsim_matrix(A, la, A, np.array([1, 5]), packed=True))(np.array([2, 3]))
    # Under jit, the default falls back to blocks.
    got = jax.jit(lambda la: ss.seqsim_matrix(A, la, A, np.array([1, 5])))(np.array([2, 3]))
    assert got.shape == (2, 2)
