"""Word alignment kernel against its float64 NumPy reference, on random ragged inputs with poisoned padding."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import settings, wordalign_host
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
        side.append(wa.Words(states, n_frames, spans, n_words))
    return side


def pair_of(A, B, p) -> wa.WordPair:
    """Pair p of two batched sides."""
    return wa.WordPair(wa.Words(*(x[p] for x in A)), wa.Words(*(x[p] for x in B)))


def host_in_chunks_of_two(*args, **kwargs):
    """The host path with chunks of two pairs: ragged chunk widths, a last chunk of one pair, buffers reused."""
    chunk = wordalign_host.CHUNK_BYTES
    wordalign_host.CHUNK_BYTES = 2 * 3 * 7 * 16 * 4  # two pairs of 3 layers x 7 words x 16 dims
    try:
        return wa.wordalign_pairs(*args, **kwargs)
    finally:
        wordalign_host.CHUNK_BYTES = chunk


# Both paths of wordalign_pairs: on this CPU the public one runs on the host, wordalign_pairs_xla is the GPU's.
PATHS = {"host": wa.wordalign_pairs, "host_chunks": host_in_chunks_of_two, "xla": wa.wordalign_pairs_xla}


@pytest.mark.parametrize("pooling", settings.POOLINGS)
@pytest.mark.parametrize("poison", [np.nan, 1e30, -np.inf])
def test_wordalign_vs_reference(pooling, poison):
    """Every path (``PATHS``) against the reference on the same block: the reference, computed once, serves all."""
    rng = np.random.default_rng(zlib.crc32(f"{pooling}{poison}".encode()))  # fixed per case, not per process
    (A, fa, sa, na), (B, fb, sb, nb) = ragged_pairs(rng, pairs=5, layers=3, frames=40, words=7, embed=16, poison=poison)
    block = wa.WordPair(wa.Words(A, fa, sa, na), wa.Words(B, fb, sb, nb))
    wa.check_spans("spans_a", sa, na, fa)
    wa.check_spans("spans_b", sb, nb, fb)
    # A rogue dimension (large mean and spread) that the standardised cosine must divide out.
    A[..., 3] = A[..., 3] * 8 + 30
    B[..., 3] = B[..., 3] * 8 + 30
    standardise = wa.layer_standardisation([*A, *B], [*fa, *fb])
    for threshold, std in ((-np.inf, None), (0.1, None), (-np.inf, standardise), (0.1, standardise)):
        want = [wa.reference_wordalign(pair_of(block.a, block.b, p), threshold, std, pooling=pooling) for p in range(5)]
        for path, run in PATHS.items():
            got = run(block, np.float32(threshold), std, pooling=pooling)
            assert got.cosine.shape == got.mutual.shape == (5, 3, 7, 7) and got.cosine.dtype == jnp.float32, path
            for p, (c, m) in enumerate(want):
                # -inf on padding words, equal too
                np.testing.assert_allclose(got.cosine[p], c, atol=1e-5, rtol=0, err_msg=f"{path}, pair {p}")
                np.testing.assert_array_equal(got.mutual[p], m, err_msg=f"{path}, pair {p}")
                assert np.asarray(got.mutual[p]).sum(axis=-1).max() <= 1  # a word is in at most one pair


def test_layer_standardisation_is_numpy_over_the_valid_frames():
    rng = np.random.default_rng(8)
    states = [rng.standard_normal((2, f, 5)).astype(np.float32) * 3 + 7 for f in (9, 12, 4)]
    n_frames = [9, 5, 4]
    states[1][:, 5:] = np.nan  # padding: never read
    for x in states:
        x[1, :, 2] = 0.25  # a dimension that does not vary at layer 1: dropped, not divided by ~0
    got = wa.layer_standardisation(states, n_frames)
    valid = np.concatenate([x[:, :n] for x, n in zip(states, n_frames, strict=True)], axis=1).astype(np.float64)
    np.testing.assert_allclose(got.mean, valid.mean(axis=1), rtol=1e-6)
    std = valid.std(axis=1)
    assert std[1, 2] == 0
    want = np.divide(1, std, out=np.zeros_like(std), where=std > 0)
    np.testing.assert_allclose(got.scale, want, rtol=1e-6)
    assert got.mean.dtype == got.scale.dtype == np.float32
    with pytest.raises(ShapeError, match=r"n_frames\[1\] = 13"):
        wa.layer_standardisation(states, [9, 13, 4])


def test_mutual_best_is_a_permutation_for_shuffled_words():
    # b's words are a's in another order (plus noise): the mutual pairs must be exactly that permutation.
    rng = np.random.default_rng(3)
    words, embed = 6, 32
    vec = rng.standard_normal((words, embed)).astype(np.float32)
    perm = rng.permutation(words)
    a = np.repeat(vec, 4, axis=0)[None]  # [layer, frame, embed], each word 4 frames
    b = np.repeat(vec[perm], 4, axis=0)[None] + 0.01 * rng.standard_normal((1, words * 4, embed)).astype(np.float32)
    spans = np.stack([np.arange(words) * 4, np.arange(words) * 4 + 4], axis=1).astype(np.int32)
    for pooling in settings.POOLINGS:
        out = wa.wordalign(wa.WordPair(wa.Words(a, 24, spans, words), wa.Words(b, 24, spans, words)), pooling=pooling)
        i, j = np.nonzero(np.asarray(out.mutual[0]))
        np.testing.assert_array_equal(perm[j], i)


def test_check_spans_names_the_fix():
    spans = np.array([[[0, 3], [2, 12]]], np.int32)
    with pytest.raises(ShapeError, match=r"spans_a\[0, 1\].*overlapping"):
        wa.check_spans("spans_a", spans, np.array([2]), np.array([12]))
    with pytest.raises(ShapeError, match=r"spans_a\[0, 0\]"):
        wa.check_spans("spans_a", spans, np.array([1]), np.array([2]))
    wa.check_spans("spans_a", spans, np.array([1]), np.array([3]))  # the overlapping word is padding here


# ----------------------------------------------------------------------------------------------------------------
# Soft alignment: the OT plan between words (issue 17, part 3).


@pytest.mark.parametrize("pooling, weights, standardised", [("centre", "uniform", False), ("mean", "duration", True)])
def test_word_plan_vs_reference_and_pot(pooling, weights, standardised):
    ot = pytest.importorskip("ot")  # POT, in the test extra
    rng = np.random.default_rng(zlib.crc32(f"plan{pooling}{weights}".encode()))
    (A, fa, sa, na), (B, fb, sb, nb) = ragged_pairs(rng, pairs=4, layers=2, frames=30, words=6, embed=16, poison=np.nan)
    block = wa.WordPair(wa.Words(A, fa, sa, na), wa.Words(B, fb, sb, nb))
    config = settings.OtConfig()
    std = wa.layer_standardisation([*A, *B], [*fa, *fb]) if standardised else None
    got = wa.word_plan_pairs(block, std, pooling=pooling, weights=weights, config=config)
    assert got.plan.shape == (4, 2, 6, 6) and bool(np.all(got.converged))
    for p in range(4):
        want = wa.reference_word_plan(
            pair_of(block.a, block.b, p), std, pooling=pooling, weights=weights, epsilon=config.epsilon
        )
        plan = np.asarray(got.plan[p], np.float64)
        assert not plan[:, na[p] :].any() and not plan[:, :, nb[p] :].any()  # padding words carry nothing
        wa_, wb_ = np.asarray(got.weight_a[p]), np.asarray(got.weight_b[p])
        np.testing.assert_allclose(wa_.sum(), 1, atol=1e-6)
        for layer in range(2):
            np.testing.assert_allclose(plan[layer].sum(1), wa_, atol=1e-5, rtol=0)  # marginals (issue 17: 1e-5)
            np.testing.assert_allclose(plan[layer].sum(0), wb_, atol=1e-5, rtol=0)
            np.testing.assert_allclose(plan[layer], want[layer], atol=1e-5, rtol=0)
            xa = wa.reference_standardised(A[p][:, : fa[p]], std)
            xb = wa.reference_standardised(B[p][:, : fb[p]], std)
            ea = np.stack([wa.reference_word_embedding(xa, *sa[p, i], pooling)[layer] for i in range(na[p])])
            eb = np.stack([wa.reference_word_embedding(xb, *sb[p, j], pooling)[layer] for j in range(nb[p])])
            cost = (
                1
                - (ea / np.linalg.norm(ea, axis=1, keepdims=True)) @ (eb / np.linalg.norm(eb, axis=1, keepdims=True)).T
            )
            # POT's scaling Sinkhorn in float64: every kernel entry exp(-cost / epsilon) >= exp(-40) is a normal
            # float64, so the log domain (10x the time per iteration: 66 s of this test's 70) is not needed.
            pot = ot.sinkhorn(wa_[: na[p]].astype(np.float64), wb_[: nb[p]].astype(np.float64), cost, config.epsilon,
                              method="sinkhorn", stopThr=1e-8, numItermax=20_000)  # fmt: skip
            np.testing.assert_allclose(plan[layer, : na[p], : nb[p]], pot, atol=1e-5, rtol=0)


def test_planted_one_to_many_word_splits_its_mass():
    # b says a's middle word twice: the plan splits that word's mass between the two copies, and plan_links keeps
    # both links (a mutual-best match keeps one), every other word linked to its own copy only. Every word is 4 frames
    # long, so "duration" weights are the uniform ones (one plan; each weighting compiles a program of its own).
    rng = np.random.default_rng(5)
    vec = rng.standard_normal((3, 32)).astype(np.float32)
    a = np.repeat(vec, 4, axis=0)[None]
    b = np.repeat(vec[[0, 1, 1, 2]], 4, axis=0)[None] + 0.01 * rng.standard_normal((1, 16, 32)).astype(np.float32)
    sa = np.array([[0, 4], [4, 8], [8, 12], [0, 0]], np.int32)  # 4th word: padding
    sb = np.array([[0, 4], [4, 8], [8, 12], [12, 16]], np.int32)
    pair = wa.WordPair(wa.Words(a, 12, sa, 3), wa.Words(b, 16, sb, 4))
    got = wa.word_plan(pair, pooling="mean", weights="duration")
    np.testing.assert_allclose(np.asarray(got.weight_a)[..., :3], 1 / 3, rtol=1e-6)  # durations all equal: uniform
    plan = np.asarray(got.plan[0])
    np.testing.assert_allclose(plan[1, 1], plan[1, 2], rtol=0.05)  # split evenly between the copies
    share, links = wa.plan_links(got.plan, got.weight_a, got.weight_b)
    i, j = np.nonzero(links[0])
    assert list(zip(i, j, strict=True)) == [(0, 0), (1, 1), (1, 2), (2, 3)], share[0].round(2)
    mutual = wa.wordalign(pair, pooling="mean").mutual
    assert int(np.asarray(mutual).sum()) == 3  # one of the copies only


def test_plan_links_refuses_a_bad_mass():
    with pytest.raises(ValueError, match="share of the smaller word"):
        wa.plan_links(np.zeros((2, 2)), np.ones(2) / 2, np.ones(2) / 2, mass=0)
