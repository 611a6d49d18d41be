"""Attention sinks (``engine.models.common.attention_stats.sinks``) on planted queries and keys, against a NumPy twin
(``tests.parity.attention_sinks_twin``) of the softmax computed in float64 from the same arrays.

Head 0 of every row attends to frame 0 (a key feature that every query reads, logit gain 8: about 0.99 of the
attention), head 1 of row 0 to frame 5 (gain 3: about half), head 2 is random. Row 1 has 10 valid frames of 16; its
padding is poisoned (keys that would take all the attention, queries of 1000): masked keys and queries must not count.
Tolerance 1e-5 absolute on shares (float32 softmax of at most 16 keys; observed ~1e-7). Whisper's sinks are checked
against transformers' attention weights in tests/models/whisper/test_head_mask.py.
"""

import jax
import numpy as np

from engine.models.common.attention_stats import STATS, head_stats, sinks
from tests.parity import attention_sinks_twin, attention_stats_twin

B, T, H, DH, VALID = 2, 16, 3, 8, (16, 10)


def _planted():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, T, H, DH)).astype(np.float32) * 0.3
    k = rng.standard_normal((B, T, H, DH)).astype(np.float32) * 0.3
    q[:, :, :2, 0] = 1.0  # heads 0 and 1 read feature 0 of every key
    k[:, :, :2, 0] = 0.0
    k[:, 0, 0, 0] = 8.0  # head 0's sink: frame 0
    k[0, 5, 1, 0] = 3.0  # head 1's, row 0: frame 5
    k[1, VALID[1] :, :, 0] = 100.0  # poisoned padding
    q[1, VALID[1] :] = 1000.0
    valid = np.arange(T)[None, :] < np.array(VALID)[:, None]
    return q, k, valid


def _weights(q, k, valid, row):
    """f64[heads, query, key]: the softmax over the valid keys, as a reference model would give it."""
    logits = np.einsum("qhd,khd->hqk", q[row].astype(np.float64), k[row].astype(np.float64))
    logits = np.where(valid[row][None, None, :], logits, -np.inf)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def test_a_planted_sink_is_found_and_its_share_equals_numpy():
    q, k, valid = _planted()
    stats, received = jax.jit(head_stats, static_argnums=4)(q, k, valid, valid, 2)
    for kk in (1, 3, 12):  # 12: more than row 1's 10 valid keys, the rest -1 and 0
        got = jax.jit(sinks, static_argnums=2)(received, valid, kk)
        for row in range(B):
            weights = _weights(q, k, valid, row)
            share, frame, first = attention_sinks_twin(weights, VALID[row], kk, VALID[row])
            np.testing.assert_allclose(got["top_share"][row], share, atol=1e-5)
            np.testing.assert_array_equal(got["top_frame"][row], frame)
            np.testing.assert_allclose(got["first_share"][row], first, atol=1e-5)
            np.testing.assert_allclose(stats[row], attention_stats_twin(weights, VALID[row], 2), rtol=1e-4, atol=1e-5)
            assert got["top_frame"][row, 0, 0] == 0 and got["top_share"][row, 0, 0] > 0.98, got["top_share"][row]
        assert got["top_frame"][0, 1, 0] == 5 and 0.3 < got["top_share"][0, 1, 0] < 0.7
        assert (got["top_frame"][1, :, VALID[1] :] == -1).all() and (got["top_share"][1, :, VALID[1] :] == 0).all()
    assert stats.shape == (B, H, len(STATS))
