"""SeqSim's accelerator path (packed bins of ``ACCELERATOR_BIN_FRAMES``, the default on every platform since issue 80)
forced on CPU, against today's blocked path and the float64 reference, on ragged grids with one-frame utterances and
one very long utterance (FLEURS's 43 s clip is 2,169 frames beside a mean of 610).

Packed and blocked scores are not bitwise equal: their GEMMs have other shapes (the dot over ``embed + 2`` may be
blocked otherwise) and a packed mean sums 8-frame chunks, then the chunks of an utterance, where the blocks sum the
padded frame axis in one reduction. Each term is a mean of maxima of cosines (all in [-1, 1]). In float32 a dot of
unit vectors of length k is off by at most ``k u`` and a sum of L terms of magnitude <= 1 by at most ``(L - 1) u``
relative to L (u = 2**-24, the usual a-priori bounds), a max moves by no more than its inputs, so each path is within
``(embed + 2 + L) u`` of the exact term and the two within twice that: ``BOUND`` below for the shapes here. Random
data lands far inside it (errors cancel); the observed differences are ~1e-7.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import seqsim as ss
from kernels import seqsim_packed as sp
from tests.kernels.test_seqsim import ragged

U = 2.0**-24  # float32 unit roundoff


def bound(embed: int, longest: int) -> float:
    return 2 * (embed + 2 + longest) * U


def grid(rng, count, embed, *, longest, poison):
    """A side of ``count`` utterances: one of 1 frame, one of ``longest``, the rest 1..longest/8 (short, as most are
    beside one long clip)."""
    lengths = rng.integers(1, max(longest // 8, 2) + 1, count)
    lengths[0], lengths[1], lengths[-1] = 1, 1, longest
    return ragged(rng, count, longest, embed, poison=poison, lengths=lengths)


@pytest.fixture
def accelerator_bins(monkeypatch):
    """kernels.seqsim's bins as on an accelerator, here (the platform picks them: ``_bin_frames``)."""
    monkeypatch.setattr(ss, "_bin_frames", lambda device: sp.ACCELERATOR_BIN_FRAMES)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_accelerator_path_equals_blocks_and_reference(accelerator_bins, dtype):
    rng = np.random.default_rng(80)
    embed, longest = 24, 600
    A, len_A = grid(rng, 19, embed, longest=longest, poison=np.nan)
    B, len_B = grid(rng, 13, embed, longest=longest // 3, poison=-np.inf)
    A, B = jnp.asarray(A, dtype), jnp.asarray(B, dtype)
    assert ss.packs_by_default() and sp.pack_side(len_A, longest, sp.ACCELERATOR_BIN_FRAMES).frame.shape[0] == 1
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)  # the default: packed, accelerator bins
    blocks = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=False)
    want = ss.reference_seqsim_matrix(np.asarray(A, np.float32), len_A, np.asarray(B, np.float32), len_B)
    tol = bound(embed, longest)
    for name, g, b, w in zip(ss.SeqSim._fields, got, blocks, want, strict=True):
        g, b = np.asarray(g), np.asarray(b)
        assert g.dtype == np.float32 and np.isfinite(g).all(), name
        # Both paths round the unit frames to bf16 the same way (kernels.frames), so bf16 differs from blocks no more
        # than float32 does; against the float32 reference it carries bf16's rounding of the inputs.
        np.testing.assert_allclose(g, b, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(g, w, rtol=0, atol=tol if dtype == "float32" else 1e-2, err_msg=name)


def test_accelerator_bins_split_a_long_side_and_scatter_back(accelerator_bins, monkeypatch):
    """A side too long for one bin (bins shrunk to 256 frames to keep the test small) is packed longest first into
    several: results come back in the store's order, equal to the blocks within the bound, bit for bit between the
    whole side and the side packed once (``pack_states``, as the job does)."""
    monkeypatch.setattr(ss, "_bin_frames", lambda device: 256)
    rng = np.random.default_rng(81)
    embed, longest = 16, 250
    A, len_A = grid(rng, 31, embed, longest=longest, poison=np.inf)
    B, len_B = grid(rng, 11, embed, longest=40, poison=np.nan)
    order = rng.permutation(len(len_A))  # the store's order is not the packing's
    A, len_A = A[order], len_A[order]
    assert len(ss.side_packing(len_A, longest).frame) > 2
    got = ss.seqsim_matrix(A, len_A, B, len_B, directional=True)
    once = ss.seqsim_matrix_of_packed(ss.pack_states(A, len_A), ss.pack_states(B, len_B), directional=True)
    blocks = ss.seqsim_matrix(A, len_A, B, len_B, directional=True, packed=False)
    want = ss.reference_seqsim_matrix(A, len_A, B, len_B)
    for g, o, b, w in zip(got, once, blocks, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(o))
        np.testing.assert_allclose(np.asarray(g), np.asarray(b), rtol=0, atol=bound(embed, longest))
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=bound(embed, longest))


def test_packs_by_default_on_every_platform():
    class StandIn:  # a GPU as jax.Device describes it, without one
        platform = "gpu"

    assert ss.packs_by_default(StandIn()) and ss.packs_by_default(jax.devices()[0])
