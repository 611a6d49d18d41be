"""Outlier ("rogue") dimensions of one layer's states, and how much of a cosine they carry.

Cosine similarity, which every SeqSim matrix is built on, can be dominated by a few dimensions of very large
magnitude (Timkey and van Schijndel 2021, "All bark and no bite: rogue dimensions in transformer language models
obscure representational quality"; Kovaleva et al. 2021). For one layer and one language, over the valid frames
``x_f`` (f32[embed]) of its utterances:

- ``magnitude_i = mean_f |x_fi|``; dimension ``i`` is an outlier when ``magnitude_i > k * median_j magnitude_j``
  (``outlier_dimensions``).
- its share of the mean squared norm: ``sum_f x_fi^2 / sum_f |x_f|^2`` (the shares of all dimensions sum to 1;
  ``norm_shares``).
- its share of the cosine between translations: ``cos(u, v) = sum_i u_i v_i / (|u| |v|)`` splits exactly into one
  term a dimension, ``c_i = u_i v_i / (|u| |v|)`` (``pooled_contributions``); over the pairs, dimension ``i``'s share
  is ``sum_pairs c_i / sum_pairs cos`` (Timkey and van Schijndel's ``CC(i) / E[cos]``). Two cosines are split: that
  of the utterances' mean-pooled frames (the similarity store's ``mean`` measure), and SeqSim's frame matches
  (``matched_contributions``): each frame of one utterance with its best match in the other, as SeqSim's
  ``a_to_b`` takes it, whose terms average to ``a_to_b`` itself.
- anisotropy: the mean cosine of random pairs of frames (``frame_pair_cosines``; Ethayarajh 2019).
- effective rank: ``exp(H(p))``, ``p = lambda / sum(lambda)``, ``lambda`` the eigenvalues of the frames' covariance
  (divided by n), ``H`` Shannon's entropy in nats (``effective_rank``): Roy and Vetterli's (2007) entropy-based
  effective rank, taken of the covariance spectrum (the centred frames' squared singular values) rather than of
  the singular values themselves. 1 for one direction of variance, ``embed`` for isotropic frames.

And the two dimension transforms of the seqsim job's ``--dimensions`` (``engine.pipelines.seqsim.transform``):
``standardise`` (``(x - mean) / std`` per dimension) and ``zero_dimensions`` (the given dimensions set to 0, which
leaves every cosine as if they were dropped).

Everything runs in float64 on the host with NumPy (one layer's sums are small; frames arrive as read). Cosines divide
by ``max(|x|, COS_EPS)`` as every kernel does (``kernels.frames``). The covariance spectrum and the many small
products of the translation pairs run under ``one_lapack_thread`` (``kernels._cpu``): on this project's 2-core VM at
load 6, a 512-wide spectrum took 4.5 s with OpenBLAS's threads and 0.04 s with one, a pair's matches 50 ms and 6 ms.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.errors import ShapeError
from kernels._cpu import one_lapack_thread
from kernels.frames import COS_EPS

__all__ = ["one_lapack_thread"]  # the callers' limit for many small products (matched_contributions)

CHUNK = 8192  # frames converted to float64 at a time


@dataclasses.dataclass
class Moments:
    """One language's frames at one layer, summed in float64: ``count``, ``total`` (sum x), ``absolute`` (sum |x|),
    ``squares`` (sum x^2), each f64[d]; with ``scatter=True`` also ``scatter`` (f64[d, d], sum of (x - shift)(x -
    shift)^T about ``shift``, the first frames' mean, so that the sums do not cancel)."""

    count: int = 0
    total: np.ndarray | None = None
    absolute: np.ndarray | None = None
    squares: np.ndarray | None = None
    scatter: np.ndarray | None = None
    shift: np.ndarray | None = None

    def add(self, frames, scatter: bool = False) -> Moments:
        """Adds the frames ``f[n, d]`` (valid ones only: the caller drops padding); returns self."""
        frames = np.asarray(frames)
        if frames.ndim != 2:
            raise ShapeError(f"frames must be f[n, embed], got shape {frames.shape}")
        if not len(frames):
            return self
        if self.total is None:
            d = frames.shape[1]
            self.total, self.absolute, self.squares = np.zeros(d), np.zeros(d), np.zeros(d)
            self.shift = frames[:CHUNK].mean(0, dtype=np.float64)
            self.scatter = np.zeros((d, d)) if scatter else None
        self.count += len(frames)
        for start in range(0, len(frames), CHUNK):
            x = frames[start : start + CHUNK].astype(np.float64)
            self.total += x.sum(0)
            self.absolute += np.abs(x).sum(0)
            self.squares += (x * x).sum(0)
            if self.scatter is not None:
                x -= self.shift
                self.scatter += x.T @ x
        return self

    def merged(self, other: Moments) -> Moments:
        """The sums of both (``scatter`` left out: each is about its own shift)."""
        if other.total is None:
            return dataclasses.replace(self, scatter=None)
        if self.total is None:
            return dataclasses.replace(other, scatter=None)
        return Moments(self.count + other.count, self.total + other.total, self.absolute + other.absolute,
                       self.squares + other.squares, None, self.shift)  # fmt: skip

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def magnitude(self) -> np.ndarray:
        """f64[d]: mean |x_i| over the frames."""
        return self.absolute / self.count

    @property
    def std(self) -> np.ndarray:
        """f64[d]: each dimension's standard deviation over the frames (divided by n), from the sums."""
        return np.sqrt(np.maximum(self.squares / self.count - self.mean**2, 0.0))

    def covariance(self) -> np.ndarray:
        """f64[d, d]: the frames' covariance, divided by n (needs ``scatter``)."""
        if self.scatter is None:
            raise ShapeError("covariance needs the moments summed with scatter=True")
        centre = self.mean - self.shift
        return (self.scatter - self.count * np.outer(centre, centre)) / self.count


def outlier_dimensions(magnitude, k: float) -> tuple[np.ndarray, float]:
    """(the dimensions whose magnitude exceeds ``k`` times the median dimension's, largest first, ties by index;
    that median)."""
    magnitude = np.asarray(magnitude, np.float64)
    median = float(np.median(magnitude))
    order = np.argsort(-magnitude, kind="stable")
    return order[magnitude[order] > k * median], median


def top_dimensions(magnitude, k: int) -> np.ndarray:
    """i64[k]: the ``k`` dimensions of the largest magnitude, largest first, ties by index."""
    return np.argsort(-np.asarray(magnitude, np.float64), kind="stable")[:k].astype(np.int64)


def norm_shares(squares) -> np.ndarray:
    """f64[d]: each dimension's share of the summed squared norm (``Moments.squares``); NaN where every frame is 0."""
    squares = np.asarray(squares, np.float64)
    total = squares.sum()
    return squares / total if total > 0 else np.full_like(squares, np.nan)


def spectrum(covariance) -> np.ndarray:
    """f64[d]: the covariance's eigenvalues, largest first, rounding's negative ones set to 0."""
    with one_lapack_thread():
        values = np.linalg.eigvalsh(np.asarray(covariance, np.float64))[::-1]
    return np.maximum(values, 0.0)


def effective_rank(eigenvalues) -> float:
    """``exp(-sum p log p)`` with ``p = eigenvalues / sum(eigenvalues)`` (0 log 0 = 0); NaN for a zero spectrum."""
    values = np.maximum(np.asarray(eigenvalues, np.float64), 0.0)
    total = values.sum()
    if not total > 0:
        return float("nan")
    p = values[values > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def unit(x) -> np.ndarray:
    """f64 rows of ``x`` (f[..., d]) divided by ``max(|x|, COS_EPS)``."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COS_EPS)


def frame_pair_cosines(x, y) -> np.ndarray:
    """f64[n]: the cosine of each row of ``x`` with the same row of ``y`` (both f[n, d])."""
    return (unit(x) * unit(y)).sum(-1)


def pooled_contributions(u, v) -> np.ndarray:
    """f64[p, d]: ``u_i v_i / (|u| |v|)`` for each pair of rows (``u``, ``v``: f[p, d], e.g. mean-pooled frames):
    each row sums to the pair's cosine."""
    return unit(u) * unit(v)


def matched_contributions(a, b) -> tuple[np.ndarray, np.ndarray]:
    """(a_to_b f64[d], b_to_a f64[d]) of two utterances' valid frames ``a: f[m, d]``, ``b: f[n, d]``: per dimension,
    the mean over a's frames of ``a_i * b_j`` (unit frames) with ``b_j`` a's frame's best match in ``b`` (the first
    of equal cosines), and the same the other way; they sum over dimensions to SeqSim's ``a_to_b`` and
    ``b_to_a``. Many pairs: call it under ``one_lapack_thread()``."""
    ua, ub = unit(a), unit(b)
    if not len(ua) or not len(ub):
        raise ShapeError(f"matched contributions need frames on both sides, got {len(ua)} and {len(ub)}")
    c = ua @ ub.T
    a_to_b = (ua * ub[c.argmax(1)]).mean(0)
    b_to_a = (ub * ua[c.argmax(0)]).mean(0)
    return a_to_b, b_to_a


# ----------------------------------------------------------------------------------------------------------------
# The seqsim job's --dimensions transforms, applied to host states as they are read (f[..., d], padding included:
# the kernels mask it). float32 arrays are changed in place (the reader's fresh copy), others returned in their dtype.


def standardise(states, mean, scale):
    """``(x - mean) / scale`` per dimension (``mean``, ``scale``: f[d]; ``scale`` > 0) in float32."""
    x = np.asarray(states, np.float32)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(scale, np.float32)
    return x if x.dtype == states.dtype else x.astype(states.dtype)


def zero_dimensions(states, dimensions):
    """``states`` with the given dimensions (i64[k]) set to 0: every cosine as if they were dropped."""
    x = np.asarray(states, np.float32)
    x[..., np.asarray(dimensions, np.int64)] = 0.0
    return x if x.dtype == states.dtype else x.astype(states.dtype)
