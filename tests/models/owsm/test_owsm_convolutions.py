"""OWSM's and w2v-BERT's convolutions as babelgrid computes them against their references, on random inputs.

``depthwise_conv`` (shifted sums) against its NumPy twin ``reference_depthwise_conv`` (float64 loops), and against
XLA's grouped convolution, which it replaced; the subsampling's stride-2 convolutions as matmuls against XLA's
convolutions. Whole-model parity with ESPnet is ``test_owsm_parity``; these pin the kernels at sizes the model does not
use (even lengths, one frame, more taps than frames), where an off-by-one in the padding or the stride would show.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine.models.common import layers
from engine.models.owsm import model

REL = 1e-5  # float32 sums of <= 31 * 3 * 3 * 48 products, against float64 or another summation order


def _close(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= REL * np.abs(reference).max()


@pytest.mark.parametrize("causal", [False, True])  # OWSM's centred convolutions, w2v-BERT's causal one
@pytest.mark.parametrize(("frames", "channels", "taps"), [(1, 4, 3), (2, 3, 5), (37, 16, 31), (12, 6, 31), (64, 8, 1)])
def test_depthwise_conv_equals_numpy_twin_and_xla_grouped_conv(frames, channels, taps, causal):
    rng = np.random.default_rng(frames * 100 + taps)
    x = rng.standard_normal((3, frames, channels)).astype(np.float32)
    kernel = rng.standard_normal((taps, 1, channels)).astype(np.float32)
    bias = None if causal else rng.standard_normal(channels).astype(np.float32)
    pad = taps - 1 if causal else (taps - 1) // 2
    ours = jax.jit(layers.depthwise_conv, static_argnames="left")(x, kernel, bias, left=pad)
    _close(ours, layers.reference_depthwise_conv(x, kernel, bias, left=pad))
    grouped = jax.lax.conv_general_dilated(
        x, kernel, (1,), ((pad, taps - 1 - pad),), dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=channels
    )
    _close(ours, grouped if bias is None else grouped + bias)


@pytest.mark.parametrize(("frames", "mels"), [(7, 7), (8, 10), (45, 80), (61, 19)])
def test_subsampling_matmuls_equal_xla_convolutions(frames, mels):
    rng = np.random.default_rng(frames + mels)
    features = rng.standard_normal((2, frames, mels)).astype(np.float32)
    kernel1, kernel2 = rng.standard_normal((3, 3, 1, 24)).astype(np.float32), rng.standard_normal((3, 3, 24, 24))
    bias1 = rng.standard_normal(24).astype(np.float32)
    args = (features, kernel1, bias1, kernel2.astype(np.float32))
    reference = jax.jit(model._subsample_convs)(*args)
    assert reference.shape == (2, ((frames - 1) // 2 - 1) // 2, ((mels - 1) // 2 - 1) // 2, 24)
    _close(jax.jit(model._subsample_matmuls)(*args), reference)
    _close(jax.jit(model.subsample_convs)(*args), reference)  # the CPU branch
