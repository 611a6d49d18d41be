"""What an OWSM encoder (v3.1, v4, POWSM) computes on one window, for ``encode --plan``.

OWSM pads every window to the model's full window (``FrontendConfig.n_samples``, 30 s for every published OWSM) as
ESPnet's S2T inference does, and the encoder attends over the padding (``engine.models.owsm.encoder``): a window
costs the same whatever its speech length, so ``encoder_cost`` counts the full window and takes no length.

FLOPs count a multiply-add as 2, for the matmuls and convolutions only (the ops torch's ``FlopCounterMode`` counts);
norms, activations, the GELU gate's product, softmax, the positional sinusoids and the log-mel front end (host
NumPy, timed apart by the plan) are left out. For F feature frames, n mel bins, width d, T encoder frames, feed-forward
width I, cgMLP width G (split in halves by its gating unit), kernels K (gating) and M (merge), L blocks:

- front (``Conv2dSubsampling``): the first 3x3 stride-2 convolution ``2 * T1 * n1 * d * 9`` (T1 = (F-1)//2 frames,
  n1 = (n-1)//2 bins, one input channel), each later one ``2 * Tk * nk * d * d * 9`` (Tk, nk: its output's frames and
  bins; two convolutions for ``conv2d``, three for ``conv2d8``), the projection of the flattened channels x bins
  ``2 * T * d * nK * d``;
- each E-Branchformer block: the macaron and the final half-step feed-forwards ``2 * 4 * T * d * I``;
  self-attention projections ``8 * T * d^2``, scores and weighted values ``4 * T^2 * d`` (absolute positions, added at
  layer 0: OWSM v3.1 has no relative-position projection, and ``config`` refuses models that do); the cgMLP's channel
  projections ``2 * T * d * G + 2 * T * (G/2) * d`` and its gating unit's depthwise convolution ``2 * T * (G/2) * K``;
  the merge's depthwise convolution ``2 * T * 2d * M`` and projection ``2 * T * 2d * d``.

OWLS's transformer blocks (``config.encoder == "transformer"``): self-attention as above and one ReLU feed-forward
``2 * 2 * T * d * I``; no cgMLP, no merge.

``after_norm`` (layer L+1) is a norm: nothing counted.
"""

from __future__ import annotations

import math

from engine.models.interface import EncoderCost
from engine.models.owsm.config import OwsmConfig, subsampled_frames
from engine.models.owsm.model import encoder_shapes

CONV_TAPS = 9  # Conv2dSubsampling's 3x3 kernels


def encoder_cost(config: OwsmConfig) -> EncoderCost:
    """FLOPs and parameters of one full window (every window costs this: see the module docstring)."""
    d, big, g, t = config.width, config.ffn_width, config.cgmlp_width, config.n_frames
    sizes = [(subsampled_frames(config.frontend.n_frames, k), subsampled_frames(config.n_mels, k))
             for k in range(1, config.n_convs + 1)]  # fmt: skip
    (t1, n1), nk = sizes[0], config.subsampled_mels
    convs = 2 * t1 * n1 * d * CONV_TAPS + sum(2 * tk * n * d * d * CONV_TAPS for tk, n in sizes[1:])
    front = convs + 2 * t * d * nk * d
    attention = 8 * t * d * d + 4 * t * t * d
    if config.encoder == "transformer":  # OWLS: attention and one feed-forward
        layer = attention + 2 * 2 * t * d * big
    else:
        ffn = 2 * 4 * t * d * big
        cgmlp = 2 * t * d * g + 2 * t * (g // 2) * d + 2 * t * (g // 2) * config.cgmlp_kernel
        merge = 2 * t * 2 * d * config.merge_kernel + 2 * t * 2 * d * d
        layer = ffn + attention + cgmlp + merge
    return EncoderCost(float(front), float(layer), config.n_layer, t, config.n_head, encoder_params(config))


def encoder_params(config: OwsmConfig) -> int:
    """Parameters the encoder runs: the subsampling, every block and ``after_norm`` (no decoder, no CTC head)."""
    return sum(math.prod(shape) for shape in encoder_shapes(config).values())
