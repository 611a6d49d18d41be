"""Permutation nulls (``kernels.null``, ``cca.svcca_null``/``pwcca_null``, ``cknna.cknna_null``) against the
straightforward loop: the float64 NumPy twin of each measure applied to ``(x, y[p])`` for every permutation p.

Tolerances are the measures' own against their twins: 1e-5 absolute for CKA (float32 Grams of unit-norm views),
mutual k-NN and CKNNA (test_cknna.py says why); 1e-6 for cycle k-NN, a count over n rows (test_knn.py); 1e-4 for SVCCA
and PWCCA (float32 SVDs, as test_cca.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels import cca, cka, cknna, knn, null


def _layers(rng, n, widths, related_to=None):
    """Views f32[n, d] per width, each a noisy linear map of ``related_to`` (or of one shared latent)."""
    base = related_to if related_to is not None else rng.standard_normal((n, 6))
    return [
        (base @ rng.standard_normal((base.shape[1], d)) + 0.7 * rng.standard_normal((n, d)) + 1.5).astype(np.float32)
        for d in widths
    ]


@pytest.mark.parametrize("sides", [(3, 2), (2, 3)])  # the gathered side is the one with fewer layers
def test_cka_null_is_the_loop_of_permuted_cka(sides):
    rng = np.random.default_rng(0)
    n = 40
    a = _layers(rng, n, [8, 12, 5][: sides[0]])
    b = _layers(rng, n, [9, 7, 11][: sides[1]])
    perms = null.permutations(n, 6, 1)
    grams_a = jnp.stack([cka.centred_gram(x) for x in a])
    grams_b = jnp.stack([cka.centred_gram(y) for y in b])
    biased, unbiased = null.cka_null(grams_a, grams_b, perms)
    assert biased.shape == unbiased.shape == (6, sides[0], sides[1])
    for t, p in enumerate(perms):
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                assert biased[t, i, j] == pytest.approx(cka.reference_linear_cka(x, y[p]), abs=1e-5)
                assert unbiased[t, i, j] == pytest.approx(cka.reference_linear_cka(x, y[p], unbiased=True), abs=1e-5)
    identity = np.arange(n, dtype=np.int32)[None]  # no permutation: the raw layer x layer matrices
    for kind, got in zip((False, True), null.cka_null(grams_a, grams_b, identity), strict=True):
        np.testing.assert_allclose(got[0], cka.cka_matrix(grams_a, grams_b, unbiased=kind), atol=1e-6)


def test_knn_null_is_the_loop_of_permuted_mutual_knn():
    rng = np.random.default_rng(2)
    n, k = 50, 5
    a, b = _layers(rng, n, [10, 6]), _layers(rng, n, [8])
    perms = null.permutations(n, 5, 3)
    got = null.knn_null(np.stack([knn.knn(x, k) for x in a]), np.stack([knn.knn(y, k) for y in b]), perms)
    for t, p in enumerate(perms):
        for i, x in enumerate(a):
            assert got[t, i, 0] == pytest.approx(knn.reference_mutual_knn(x, b[0][p], k), abs=1e-6)
    # renaming the lists is the same as searching the permuted rows again
    renamed = null.renamed_lists(jnp.asarray(knn.reference_knn(b[0], k)), jnp.asarray(perms[0]))
    assert np.array_equal(renamed, knn.reference_knn(b[0][perms[0]], k))


def test_cycle_knn_null_is_the_loop_of_permuted_cycle_knn():
    """Directed: a's layer is the view gone back through, b[p]'s the one gone out through (``knn.cycle_knn(x, y[p])``);
    the identity permutation gives the raw grid, and a view against itself is not a symmetric grid."""
    rng = np.random.default_rng(8)
    n, k = 50, 4
    a, b = _layers(rng, n, [10, 6]), _layers(rng, n, [8])
    lists_a, lists_b = np.stack([knn.knn(x, k) for x in a]), np.stack([knn.knn(y, k) for y in b])
    perms = np.concatenate([np.arange(n, dtype=np.int32)[None], null.permutations(n, 4, 9)])
    got = null.cycle_knn_null(lists_a, lists_b, perms)
    assert got.shape == (5, 2, 1)
    for t, p in enumerate(perms):
        for i, x in enumerate(a):
            assert got[t, i, 0] == pytest.approx(knn.reference_cycle_knn(x, b[0][p], k), abs=1e-6)
    own = null.cycle_knn_null(lists_a, lists_a, perms[:1])[0]
    assert own[0, 1] == pytest.approx(knn.reference_cycle_knn(a[0], a[1], k), abs=1e-6) and own[0, 1] != own[1, 0]
    with pytest.raises(ShapeError, match="cycle_knn_null needs lists of the same n and k"):
        null.cycle_knn_null(lists_a, lists_b[:, :, :3], perms)


def test_cca_nulls_are_the_loops_of_permuted_svcca_and_pwcca():
    rng = np.random.default_rng(4)
    n = 80
    (x,), (y,) = _layers(rng, n, [7]), _layers(rng, n, [9])
    perms = null.permutations(n, 4, 5)
    svcca = cca.svcca_null(x, y, jnp.asarray(perms), keep=0.99)
    pwcca = cca.pwcca_null(x, y, jnp.asarray(perms), epsilon=0.05)
    for t, p in enumerate(perms):
        assert float(svcca[t]) == pytest.approx(cca.reference_svcca(x, y[p], 0.99), abs=1e-4)
        assert float(pwcca[t]) == pytest.approx(cca.reference_pwcca(x, y[p], 0.05), abs=1e-4)


def test_cknna_null_is_the_loop_of_permuted_cknna():
    rng = np.random.default_rng(6)
    n, k = 45, 6
    (x,), (y,) = _layers(rng, n, [12]), _layers(rng, n, [10])
    perms = null.permutations(n, 4, 7)
    got = cknna.cknna_null(cknna.View(x, k), cknna.View(y, k), perms)
    for t, p in enumerate(perms):
        assert float(got[t]) == pytest.approx(cknna.reference_cknna(x, y[p], k), abs=1e-5)


def test_summaries_count_as_phipson_and_smyth():
    null_scores = np.array([[0.1, 0.5], [0.3, 0.5], [0.2, np.nan], [0.9, 0.5]])[:, None, :]  # P = 4, cells 1 x 2
    value = np.array([[0.3, 0.4]])
    mean, q95, p = null.summarise(value, null_scores)
    assert mean[0, 0] == pytest.approx(0.375)
    assert q95[0, 0] == pytest.approx(np.quantile([0.1, 0.3, 0.2, 0.9], 0.95))
    assert p[0, 0] == pytest.approx((1 + 2) / 5)  # 0.3 and 0.9 are >= 0.3: ties count against the value
    assert np.isnan([mean[0, 1], q95[0, 1], p[0, 1]]).all()  # a null score not measured: no summary
    assert np.isnan(null.summarise(value, np.zeros((0, 1, 2)))).all()  # no permutations: no numbers
    assert null.summarise(np.array([1.0]), np.zeros((200, 1)))[2][0] == pytest.approx(1 / 201)  # never 0
    with pytest.raises(ShapeError):
        null.summarise(value, np.zeros((3, 2, 1)))


def test_permutations_are_seeded_and_shapes_checked():
    assert np.array_equal(null.permutations(30, 3, [1, 2]), null.permutations(30, 3, [1, 2]))
    assert not np.array_equal(null.permutations(30, 3, [1, 2]), null.permutations(30, 3, [1, 3]))
    assert sorted(null.permutations(30, 2, 0)[1]) == list(range(30))
    grams = jnp.zeros((2, 5, 5))
    with pytest.raises(ShapeError):
        null.cka_null(grams, grams, np.zeros((2, 4), np.int32))
    assert null.cka_null(grams, grams, np.zeros((0, 5), np.int32))[0].shape == (0, 2, 2)


def test_cka_null_below_four_examples_is_not_measured():
    """Unbiased CKA needs n >= 4 (``kernels.cka`` refuses fewer): with 3 utterances its null is NaN, never a number
    or a crash (a language of 2-3 utterances in compare), while the biased null is still measured."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 3, 5)), rng.normal(size=(1, 3, 4))
    grams_a = np.stack([np.asarray(cka.centred_gram(jnp.asarray(v))) for v in x])
    grams_b = np.stack([np.asarray(cka.centred_gram(jnp.asarray(v))) for v in y])
    perms = np.stack([rng.permutation(3) for _ in range(4)])
    biased, unbiased = null.cka_null(grams_a, grams_b, perms)
    assert np.isfinite(biased).all() and np.isnan(unbiased).all() and unbiased.shape == (4, 2, 1)
