"""The building blocks every model family shares: parameters, linear, layer norm, conv, feed-forward, depthwise conv.

Arrays are channels-last: ``x: f[batch, frame, channel]``. Weights arrive in PyTorch layouts (``nn.Linear`` ``[out,
in]``, ``nn.Conv1d`` ``[out, in / groups, kernel]``) and are stored as ``kernel [in, out]`` and ``[kernel, in / groups,
out]`` (XLA's WIO). Layer norms run in float32 whatever the weight dtype, as OpenAI's and transformers' do.

The attribute names (``kernel``, ``scale``, ``bias``, a feed-forward's two linears) are the parameter tree's: a family
that changes one changes its checkpoint mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param(array, dtype) -> nnx.Param:
    return nnx.Param(jnp.asarray(np.asarray(array), dtype=dtype))


def head_major(x):
    """f[b, t, h, dh] -> f[b, h, t, dh]."""
    return jnp.transpose(x, (0, 2, 1, 3))


def linear_kernel(weight) -> np.ndarray:
    """PyTorch ``nn.Linear`` ``[out, in]``, or a pointwise ``nn.Conv1d`` ``[out, in, 1]``, -> ``[in, out]``."""
    weight = np.asarray(weight)
    return weight.reshape(weight.shape[0], -1).T


def conv_kernel(weight) -> np.ndarray:
    """PyTorch ``Conv1d`` ``[out, in / groups, kernel]`` -> WIO ``[kernel, in / groups, out]``."""
    return np.transpose(np.asarray(weight), (2, 1, 0))


def layer_norm(x, scale, bias, eps: float):
    """``nn.LayerNorm`` over the last axis, in float32; returns ``x``'s dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Linear(nnx.Module):
    """``nn.Linear`` (``bias`` None for none): ``x: f[..., in] -> f[..., out]`` in the weights' dtype."""

    def __init__(self, weight, bias, dtype):
        self.kernel = param(linear_kernel(weight), dtype)
        self.bias = None if bias is None else param(bias, dtype)

    def __call__(self, x):
        y = jnp.dot(x.astype(self.kernel.dtype), self.kernel[...])
        return y if self.bias is None else y + self.bias[...]


class LayerNorm(nnx.Module):
    """``nn.LayerNorm`` with its ``eps`` (torch's default 1e-5 for Whisper, the checkpoint's own elsewhere)."""

    def __init__(self, weight, bias, eps: float, dtype):
        self.scale = param(weight, dtype)
        self.bias = param(bias, dtype)
        self.eps = eps

    def __call__(self, x):
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Conv1d(nnx.Module):
    """``nn.Conv1d`` on ``x: f[batch, frame, in]`` -> ``f[batch, frame', out]`` (``padding`` frames each side)."""

    def __init__(self, weight, bias, stride: int, dtype, padding: int = 0, groups: int = 1):
        self.kernel = param(conv_kernel(weight), dtype)
        self.bias = None if bias is None else param(bias, dtype)
        self.stride = stride
        self.padding = padding
        self.groups = groups

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(
            x.astype(self.kernel.dtype),
            self.kernel[...],
            window_strides=(self.stride,),
            padding=((self.padding, self.padding),),
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )
        return y if self.bias is None else y + self.bias[...]


def linear(sd: Mapping[str, np.ndarray], prefix: str, dtype, bias: bool = True) -> Linear:
    """The ``Linear`` of state dict entries ``{prefix}.weight`` and ``{prefix}.bias``."""
    return Linear(sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] if bias else None, dtype)


def norm(sd: Mapping[str, np.ndarray], prefix: str, eps: float, dtype) -> LayerNorm:
    """The ``LayerNorm`` of state dict entries ``{prefix}.weight`` and ``{prefix}.bias``."""
    return LayerNorm(sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps, dtype)


class FeedForward(nnx.Module):
    """Linear, ``activation``, linear: a transformer block's feed-forward.

    ``names``: the two linears' names in the checkpoint under ``prefix`` (ESPnet's ``("w_1", "w_2")``, transformers'
    conformer ``("intermediate_dense", "output_dense")``); ``attributes``: their names in the parameter tree (default
    ``names``), which a family keeps as they were so that its parameter paths do not move.
    """

    def __init__(
        self,
        sd: Mapping[str, np.ndarray],
        prefix: str,
        dtype,
        activation: Callable,
        names: tuple[str, str] = ("w_1", "w_2"),
        attributes: tuple[str, str] | None = None,
    ):
        self.attributes = tuple(names if attributes is None else attributes)
        for attribute, name in zip(self.attributes, names, strict=True):
            setattr(self, attribute, linear(sd, f"{prefix}.{name}", dtype))
        self.activation = activation

    def __call__(self, x):
        inner, outer = (getattr(self, a) for a in self.attributes)
        return outer(self.activation(inner(x)))


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
