"""What a FastConformer encoder computes on one window, for ``encode --plan``.

FLOPs count a multiply-add as 2, for the matmuls and convolutions only (norms, activations, the GLU, softmax, masks
and the log-mel front end are left out, as in the other families). For F feature frames (10 ms), M mel bins, C
subsampling channels, kernel k, T = F / 8 encoder frames, width d, feed-forward width I, depthwise kernel K:

- front (subsampling): the first convolution ``2 * (F/2)(M/2) * C * k^2``; per later stage s (s = 2, 3) at
  ``(F/2^s)(M/2^s)`` positions a depthwise ``2 * C * k^2`` and a pointwise ``2 * C^2``; the linear
  ``2 * T * C * (M/8) * d``;
- each block: two half-step feed-forwards ``2 * 4 * T * d * I``; the q, k, v, out projections ``8 * T * d^2`` and the
  position projection of the ``2T - 1`` sinusoids ``2 * (2T - 1) * d^2``; scores, the position term over ``2T - 1``
  distances and weighted values ``2 * T^2 * d + 2 * T * (2T - 1) * d + 2 * T^2 * d``; the convolution module's
  pointwise convolutions ``4 * T * d^2 + 2 * T * d^2`` and depthwise convolution ``2 * T * d * K``.
"""

from __future__ import annotations

from engine.models.fastconformer import features as feats
from engine.models.fastconformer.config import FastConformerConfig
from engine.models.interface import EncoderCost


def encoder_cost(config: FastConformerConfig, samples: int) -> EncoderCost:
    c, k, d, big = config.sub_channels, config.sub_kernel, config.width, config.ffn_width
    frames = int(feats.valid_frames(samples))
    t, m = config.sub_length(frames), config.n_mels
    front, f_len, m_len = 0, frames, m
    for stage in range(config.sub_layers):
        f_len = (f_len + 2 * config.sub_padding - k) // config.sub_stride + 1
        m_len = (m_len + 2 * config.sub_padding - k) // config.sub_stride + 1
        front += 2 * f_len * m_len * c * k * k + (2 * f_len * m_len * c * c if stage else 0)
    front += 2 * t * c * config.sub_mels * d
    attention = 8 * t * d * d + 2 * (2 * t - 1) * d * d + 4 * t * t * d + 2 * t * (2 * t - 1) * d
    layer = 8 * t * d * big + attention + 6 * t * d * d + 2 * t * d * config.conv_kernel
    return EncoderCost(float(front), float(layer), config.n_layer, t, config.n_head, encoder_params(config))


def encoder_params(config: FastConformerConfig) -> int:
    """Parameters the stored layers depend on: the subsampling and the blocks (norms and BatchNorm statistics)."""
    c, k, d, big = config.sub_channels, config.sub_kernel, config.width, config.ffn_width
    front = c * k * k + c + (config.sub_layers - 1) * (c * k * k + c + c * c + c) + c * config.sub_mels * d + d
    ab, cb = int(config.attention_bias), int(config.convolution_bias)
    ffn = d * big + big * d + ab * (big + d)
    attention = 4 * d * d + ab * 4 * d + d * d + 2 * d
    conv = 2 * d * d + d * config.conv_kernel + d * d + cb * (2 * d + d + d) + 4 * d
    return front + config.n_layer * (2 * ffn + attention + conv + 5 * 2 * d)
