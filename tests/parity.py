"""What the parity tests share: the error measure their tolerances are stated in."""

import numpy as np


def rel_err(ours, ref) -> float:
    """The largest absolute difference over the reference's largest magnitude, in float64: the tolerances of the
    parity tests (1e-5 in float32) are fractions of an array's peak."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def attention_stats_twin(weights: np.ndarray, n_valid: int, local: int) -> np.ndarray:
    """NumPy twin of ``engine.models.common.attention_stats``: ``f64[heads, 3]`` (distance, entropy, local share)
    of attention weights ``weights: f[heads, query, key]`` (a reference model's), averaged over the first
    ``n_valid`` queries."""
    p = np.asarray(weights, np.float64)[:, :n_valid]
    offset = np.abs(np.arange(p.shape[1])[:, None] - np.arange(p.shape[2])[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    per_query = np.stack([(p * offset).sum(-1), -plogp.sum(-1), (p * (offset <= local)).sum(-1)], -1)
    return per_query.mean(axis=1)
