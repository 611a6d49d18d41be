"""Language-subspace removal: each language's mean state and the directions that tell languages apart (LDA), from
one layer's frames, and their removal from states before a similarity measure.

Language-neutral representations (Libovicky et al. 2020, "On the Language Neutrality of Pre-trained Multilingual
Representations"): subtracting each language's mean, or projecting out the directions a linear classifier uses to
tell the languages apart, raises cross-lingual retrieval in multilingual text encoders. Here for speech states:

- ``mean``: ``x - mu[lang]``, the language's mean over every valid frame of its utterances.
- ``lda:K``: ``x - Q Q^T x``, Q an orthonormal basis of the top K linear-discriminant directions: the generalised
  eigenvectors of ``S_b w = lambda S_w w`` with the largest eigenvalues, ``S_w`` the within-language scatter
  ``sum_lang sum_frames (x - mu_lang)(x - mu_lang)^T`` and ``S_b = sum_lang n_lang (mu_lang - mu)(mu_lang - mu)^T``
  (every frame weighs the same, as scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen")`` with its default
  priors, whose ``scalings_`` span the same directions). ``S_b`` has rank at most languages - 1, so K is at most
  that. ``S_w`` gets a ridge of ``RIDGE`` times its mean eigenvalue so that a layer with dead dimensions has an
  answer; the projection is Euclidean (the states' own geometry, which cosine measures read).

Sums are streamed per language (``FrameSums``: count, sum and, for LDA, the scatter about a fixed shift, in float64
on the host), so a language never has to be held whole. ``reference_*`` are the NumPy twins the tests check against.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from engine.errors import ShapeError

RIDGE = 1e-6  # S_w's ridge, relative to its mean eigenvalue
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class FrameSums:
    """One language's frames at one layer, summed: ``count``, ``total`` (f64[d]) and, for LDA, ``scatter``
    (f64[d, d], about ``shift``: the first block's mean, so that the sums do not cancel)."""

    count: int = 0
    total: np.ndarray | None = None
    scatter: np.ndarray | None = None
    shift: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    def within(self) -> np.ndarray:
        """f64[d, d]: ``sum (x - mean)(x - mean)^T`` over the frames."""
        centre = self.mean - self.shift
        return self.scatter - self.count * np.outer(centre, centre)


CHUNK = 8192  # frames converted to float64 at a time: the conversion of a whole block cost more than its products


def add_block(sums: FrameSums, states, lengths, scatter: bool) -> FrameSums:
    """``sums`` with the valid frames of ``states: f[u, frames, d]`` (``lengths: i32[u]``) added, in float64 on the
    host (BLAS): the fit is one pass over the states, and LDA's generalised eigenvectors amplify rounding in the
    scatter by the inverse of their eigengaps, which float32 sums made visible on small sets."""
    lengths = np.asarray(lengths)
    valid = np.arange(np.shape(states)[1])[None, :] < lengths[:, None]
    frames = np.asarray(states)[valid]
    if not len(frames):
        return sums
    if sums.shift is None:
        sums.shift = frames[:CHUNK].mean(0, dtype=np.float64)
        sums.total = np.zeros(frames.shape[1])
        sums.scatter = np.zeros((frames.shape[1],) * 2) if scatter else None
    sums.count += len(frames)
    for start in range(0, len(frames), CHUNK):
        x = frames[start : start + CHUNK].astype(np.float64)
        sums.total += x.sum(0)
        if scatter:
            x -= sums.shift
            sums.scatter += x.T @ x
    return sums


def lda_basis(sums: dict[str, FrameSums], k: int) -> np.ndarray:
    """f64[d, k]: an orthonormal basis of the top k LDA directions of the languages summed in ``sums``."""
    langs = sorted(sums)
    if not 1 <= k <= len(langs) - 1:
        raise ShapeError(f"lda:{k} needs 1 <= K <= languages - 1 = {len(langs) - 1} (the between-language scatter's "
                         f"rank); the run has {len(langs)} languages")  # fmt: skip
    counts = np.array([sums[lang].count for lang in langs], np.float64)
    means = np.stack([sums[lang].mean for lang in langs])
    within = sum(sums[lang].within() for lang in langs)
    between = _between(counts, means)
    return _basis(between, within, k)


def _between(counts, means):
    centred = means - counts @ means / counts.sum()
    return (centred * counts[:, None]).T @ centred


def _basis(between, within, k):
    d = len(within)
    ridge = RIDGE * max(np.trace(within) / d, np.finfo(np.float64).tiny)
    _, vectors = scipy.linalg.eigh(between, within + ridge * np.eye(d))  # ascending eigenvalues
    basis, _ = np.linalg.qr(vectors[:, ::-1][:, :k])
    return basis


def remove_mean(states, mean):
    """``states - mean`` (f[..., d] and f[d]) in float32, returned in the states' dtype. NumPy on the host: the states
    are transformed as they are read, before they go to the device, so that nothing compiles per piece shape. A
    float32 array is changed in place (the reader's fresh copy: no second one)."""
    x = np.asarray(states, np.float32)
    x -= np.asarray(mean, np.float32)
    return x if x.dtype == states.dtype else x.astype(states.dtype)


BLOCK_ROWS = 4096  # rows projected per call: one compiled shape per (width, K), whatever the pieces' shapes


@jax.jit
def _project_block(x, q):
    return x - jnp.matmul(jnp.matmul(x, q, precision=_HIGHEST), q.T, precision=_HIGHEST)


def project_out(states, basis):
    """``x - Q Q^T x`` for every row of ``states: f[..., d]`` with ``basis: f[d, k]`` orthonormal, in float32, in place
    for float32 (as ``remove_mean``), returned in the states' dtype.

    By JAX in blocks of ``BLOCK_ROWS`` rows of one shape (one compile), not by NumPy's BLAS: OpenBLAS's worker
    threads spin for a while after each call, and on a 2-core machine they took the cores from the SeqSim kernel
    that ran next (it ran 35% slower after every projection, bench/RESULTS.md)."""
    x = np.ascontiguousarray(states, np.float32)  # so that the 2-d view below is a view, changed in place
    rows = x.reshape(-1, x.shape[-1])
    q = jnp.asarray(basis, jnp.float32)
    for start in range(0, len(rows), BLOCK_ROWS):
        part = rows[start : start + BLOCK_ROWS]
        n = len(part)
        padded = np.pad(part, ((0, BLOCK_ROWS - n), (0, 0))) if n < BLOCK_ROWS else part
        rows[start : start + n] = np.asarray(_project_block(padded, q))[:n]
    return x if x.dtype == states.dtype else x.astype(states.dtype)


# ----------------------------------------------------------------------------------------------------------------
# References: every frame in one float64 array, the textbook formulas.


def reference_means(frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Language -> f64[d]: the mean of its frames ``f[frames, d]``."""
    return {lang: np.asarray(x, np.float64).mean(0) for lang, x in frames.items()}


def reference_lda_basis(frames: dict[str, np.ndarray], k: int) -> np.ndarray:
    """f64[d, k]: the same basis from every frame at once: scatter matrices as written, then the generalised
    eigenproblem."""
    langs = sorted(frames)
    xs = [np.asarray(frames[lang], np.float64) for lang in langs]
    mu = np.concatenate(xs).mean(0)
    within = sum((x - x.mean(0)).T @ (x - x.mean(0)) for x in xs)
    between = sum(len(x) * np.outer(x.mean(0) - mu, x.mean(0) - mu) for x in xs)
    return _basis(between, within, k)
