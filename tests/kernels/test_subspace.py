"""Language-subspace removal (``kernels.subspace``) against NumPy and scikit-learn: the streamed means and scatter
against every frame in one float64 array; the LDA basis against scikit-learn's ``LinearDiscriminantAnalysis(solver=
"eigen")`` (an implementation we did not write), whose ``scalings_`` span the same directions.

Tolerances: the streamed sums are float64 about a shift: 1e-9 relative on means and scatter. Subspaces are compared
by the sines of their principal angles: 1e-5 against scikit-learn, whose solver has no ridge (ours adds 1e-6 of the
mean within-language eigenvalue to the within-language scatter); 1e-7 against the float64 twin, which shares it (a
sine computed from a cosine has a floor of sqrt(eps), 1.5e-8)."""

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from engine.errors import ShapeError
from kernels import subspace


def _languages(rng, langs=4, d=12):
    """Language -> (states f32[u, frames, d] zero-padded, lengths i32[u]): frames around a per-language mean."""
    out = {}
    for i in range(langs):
        u = 5 + i
        lengths = rng.integers(3, 20, u).astype(np.int32)
        centre = 3.0 * rng.standard_normal(d) + 10.0
        states = (rng.standard_normal((u, 20, d)) * rng.uniform(0.5, 2.0, d) + centre).astype(np.float32)
        states[np.arange(20)[None, :] >= lengths[:, None]] = 0.0
        out[f"l{i}"] = (states, lengths)
    return out


def _frames(states, lengths):
    return np.concatenate([states[u, :n] for u, n in enumerate(lengths)]).astype(np.float64)


def _sums(data, blocks=2):
    sums = {}
    for lang, (states, lengths) in data.items():
        total = subspace.FrameSums()
        for part in np.array_split(np.arange(len(lengths)), blocks):
            total = subspace.add_block(total, states[part], lengths[part], scatter=True)
        sums[lang] = total
    return sums


def _sines(a, b):
    """Sines of the principal angles between the spans of a and b (columns)."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.sqrt(np.clip(1 - np.linalg.svd(qa.T @ qb, compute_uv=False) ** 2, 0, None))


def test_streamed_means_and_scatter_are_those_of_every_frame():
    data = _languages(np.random.default_rng(0))
    sums = _sums(data, blocks=3)
    frames = {lang: _frames(*v) for lang, v in data.items()}
    for lang, x in frames.items():
        assert sums[lang].count == len(x)
        np.testing.assert_allclose(sums[lang].mean, subspace.reference_means(frames)[lang], rtol=1e-9)
        np.testing.assert_allclose(sums[lang].within(), (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("k", [1, 3])
def test_lda_basis_spans_scikit_learns_discriminant_directions(k):
    data = _languages(np.random.default_rng(1))
    frames = {lang: _frames(*v) for lang, v in data.items()}
    basis = subspace.lda_basis(_sums(data), k)
    assert basis.shape == (12, k)
    np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-12)  # orthonormal
    x = np.concatenate(list(frames.values()))
    y = np.concatenate([[lang] * len(v) for lang, v in frames.items()])
    lda = LinearDiscriminantAnalysis(solver="eigen").fit(x, y)
    assert _sines(basis, lda.scalings_[:, :k]).max() < 1e-5
    assert _sines(basis, subspace.reference_lda_basis(frames, k)).max() < 1e-7  # sqrt(eps): the floor of a sine
    # Projected out, the top directions carry nothing: a projection of every frame on them is 0.
    moved = np.asarray(subspace.project_out(x.astype(np.float32), basis))
    assert np.abs(moved @ basis).max() < 1e-3 * np.abs(x).max()


def test_transforms_in_the_states_dtype_and_the_refusals():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    mean = rng.standard_normal(8)
    np.testing.assert_allclose(subspace.remove_mean(x.copy(), mean), x - mean.astype(np.float32), atol=1e-6)
    q, _ = np.linalg.qr(rng.standard_normal((8, 2)))
    np.testing.assert_allclose(subspace.project_out(x.copy(), q), x - (x @ q) @ q.T, atol=1e-5)
    strided = x.transpose(1, 0, 2)  # not contiguous: transformed all the same
    np.testing.assert_allclose(subspace.project_out(strided, q), strided - (strided @ q) @ q.T, atol=1e-5)
    assert subspace.project_out(x.astype("bfloat16"), q).dtype == np.dtype("bfloat16")
    data = _languages(rng, langs=3)
    with pytest.raises(ShapeError, match=r"lda:3 needs 1 <= K <= languages - 1 = 2"):
        subspace.lda_basis(_sums(data), 3)
