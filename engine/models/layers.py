"""Layers more than one model family shares, each with its NumPy twin."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def depthwise_conv(x, kernel, bias, left: int | None = None):
    """Same-length depthwise convolution over frames: ``left`` zeros before (default ``(taps - 1) // 2``, centred;
    ``taps - 1`` is causal), the rest after.

    x: f[batch, frame, channel], kernel: f[taps, 1, channel], bias: f[channel] or None -> f[batch, frame, channel].
    A sum of ``taps`` shifted products, which XLA fuses into one elementwise pass over ``x``: XLA:CPU runs a grouped
    convolution (``feature_group_count`` = channels) as a scalar loop an order of magnitude slower (bench/RESULTS.md,
    "OWSM encoder"). The taps are summed left to right, as a direct convolution does.
    """
    taps, frames = kernel.shape[0], x.shape[1]
    pad = (taps - 1) // 2 if left is None else left
    padded = jnp.pad(x, ((0, 0), (pad, taps - 1 - pad), (0, 0)))
    w = kernel[...][:, 0, :]
    y = padded[:, :frames] * w[0]
    for k in range(1, taps):
        y = y + padded[:, k : k + frames] * w[k]
    return y if bias is None else y + bias[...]


def reference_depthwise_conv(x: np.ndarray, kernel: np.ndarray, bias, left: int | None = None) -> np.ndarray:
    """NumPy twin of ``depthwise_conv``: the textbook loop over output frames and taps, zeros outside the clip."""
    taps, frames = kernel.shape[0], x.shape[1]
    pad = (taps - 1) // 2 if left is None else left
    y = np.zeros(x.shape, np.float64)
    for t in range(frames):
        for k in range(taps):
            if 0 <= t + k - pad < frames:
                y[:, t] += x[:, t + k - pad] * kernel[k, 0]
    return y if bias is None else y + bias
