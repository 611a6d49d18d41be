"""What a w2v-BERT 2.0 / SeamlessM4T v2 speech encoder computes on one window, for ``encode --plan``.

FLOPs count a multiply-add as 2, for the matmuls and convolutions only (the ops torch's ``FlopCounterMode`` counts);
norms, activations, the GLU, softmax, the masks and the log-mel front end (host NumPy, timed apart by the plan) are
left out. For T frames (20 ms each), width d, feed-forward width I, depthwise kernel K, L conformer blocks:

- front: the feature projection ``2 * T * 160 * d``;
- each block: two half-step feed-forwards ``2 * 4 * T * d * I``; attention projections ``8 * T * d^2``, scores,
  weighted values and the relative-key term (each query against its clipped distance embeddings, a T x T x d/h
  product per head) ``6 * T^2 * d``; the conv module's pointwise convolutions ``4 * T * d^2 + 2 * T * d^2`` (d -> 2d
  before the GLU, d -> d after) and depthwise convolution ``2 * T * d * K``.

Seamless's adapter and intermediate feed-forward run after the stored layers and are not computed by encode, so not
counted. Every window costs its own length: batches are padded to whole seconds, a bound the plan leaves out.
"""

from __future__ import annotations

from engine.models.interface import EncoderCost
from engine.models.w2vbert import features as feats
from engine.models.w2vbert.config import EncoderConfig


def encoder_cost(config: EncoderConfig, samples: int) -> EncoderCost:
    d, big, t = config.width, config.ffn_width, int(feats.frames_for_samples(samples))
    front = 2 * t * config.n_input * d
    layer = 8 * t * d * big + 8 * t * d * d + 6 * t * t * d + 6 * t * d * d + 2 * t * d * config.depthwise_kernel
    return EncoderCost(float(front), float(layer), config.n_layer, t, config.n_head, encoder_params(config))


def encoder_params(config: EncoderConfig) -> int:
    """Parameters the stored layers depend on: the feature projection and the conformer blocks, norms included."""
    d, big = config.width, config.ffn_width
    ffn = 2 * d + d * big + big + big * d + d  # its layer norm, then two linears with biases
    attention = 2 * d + 4 * (d * d + d) + config.n_positions * config.head_width
    conv = 2 * d + 2 * d * d + d * config.depthwise_kernel + 2 * d + d * d  # no conv biases
    block = 2 * ffn + attention + conv + 2 * d  # and the block's final layer norm
    return 2 * config.n_input + config.n_input * d + d + config.n_layer * block
