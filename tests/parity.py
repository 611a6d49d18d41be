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


def attention_sinks_twin(weights: np.ndarray, n_valid: int, k: int, n_keys: int | None = None) -> tuple:
    """NumPy twin of ``engine.models.common.attention_stats.sinks``: ``(top_share f64[heads + 1, k], top_frame
    i64[heads + 1, k], first_share f64[heads + 1])`` of attention weights ``weights: f[heads, query, key]``: the
    attention each key receives averaged over the first ``n_valid`` queries, the heads' mean appended; a loop over
    the keys in descending order (stable sort: the earlier key first on ties), ``n_keys``: the keys attended (the
    others masked: -1 and 0 where the top ``k`` reach them)."""
    p = np.asarray(weights, np.float64)
    received = p[:, :n_valid].mean(axis=1)
    received = np.concatenate([received, received.mean(axis=0, keepdims=True)])
    n_keys = p.shape[2] if n_keys is None else n_keys
    share, frame = np.zeros((len(received), k)), np.full((len(received), k), -1)
    for h, r in enumerate(received):
        for rank, j in enumerate(np.argsort(-r, kind="stable")[:k]):
            if j < n_keys:
                share[h, rank], frame[h, rank] = r[j], j
    return share, frame, received[:, :k].sum(axis=1)
