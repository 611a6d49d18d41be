"""What a wav2vec2 / HuBERT / XLS-R / MMS encoder computes on one window, for ``encode --plan``.

FLOPs count a multiply-add as 2, for the matmuls and convolutions only (the ops torch's ``FlopCounterMode`` counts);
norms, activations, softmax, the attention mask and the weight norm's rescaling are left out. For a window of S
samples, T encoder frames (``Wav2Vec2Dims.frames``), width d, feed-forward width I, L layers:

- front: each conv layer i of the feature encoder ``2 * T_i * c_in * c_out * k_i`` (T_i its output frames, c_in = 1
  for the first), the feature projection ``2 * T * c * d``, the positional convolution ``2 * T' * d * (d/G) * K``
  (T' = T + 1 for an even kernel K: transformers computes one frame more and drops it);
- each layer: projections ``8 * T * d^2``, scores and weighted values ``4 * T^2 * d``, feed-forward ``4 * T * d * I``,
  and the MMS attention adapter ``4 * T * d * a`` where the checkpoint has one (bottleneck a).

Every window costs its own length: batches are padded to whole seconds, a bound the plan leaves out.
"""

from __future__ import annotations

from engine.models.interface import EncoderCost
from engine.models.wav2vec2.config import Wav2Vec2Dims


def conv_frames(dims: Wav2Vec2Dims, samples: int) -> list[int]:
    """Output frames of each feature-encoder conv layer for ``samples`` samples (the last is ``dims.frames``)."""
    out, n = [], int(samples)
    for kernel, stride in zip(dims.conv_kernel, dims.conv_stride, strict=True):
        n = max((n - kernel) // stride + 1, 0)
        out.append(n)
    return out


def encoder_cost(dims: Wav2Vec2Dims, samples: int) -> EncoderCost:
    d, big = dims.hidden_size, dims.intermediate_size
    frames = conv_frames(dims, samples)
    t = frames[-1]
    c_in = (1, *dims.conv_dim[:-1])
    front = sum(2 * n * i * o * k for n, i, o, k in zip(frames, c_in, dims.conv_dim, dims.conv_kernel, strict=True))
    front += 2 * t * dims.conv_dim[-1] * d
    k, g = dims.num_conv_pos_embeddings, dims.num_conv_pos_embedding_groups
    front += 2 * (t + 1 - k % 2) * d * (d // g) * k
    layer = 8 * t * d * d + 4 * t * t * d + 4 * t * d * big
    if dims.has_adapter_layers:
        layer += 4 * t * d * dims.adapter_attn_dim
    return EncoderCost(
        float(front), float(layer), dims.num_hidden_layers, t, dims.num_attention_heads, encoder_params(dims)
    )


def encoder_params(dims: Wav2Vec2Dims) -> int:
    """Parameters the encoder runs: conv feature encoder, projection, positional conv, layers (no CTC head, no
    SpecAugment embedding)."""
    d, big, c = dims.hidden_size, dims.intermediate_size, dims.conv_dim
    c_in = (1, *c[:-1])
    n = sum(i * o * k + (o if dims.conv_bias else 0) for i, o, k in zip(c_in, c, dims.conv_kernel, strict=True))
    n += 2 * sum(c) if dims.feat_extract_norm == "layer" else 2 * c[0]  # layer norm per conv, or one group norm
    n += (2 * c[-1] if dims.feat_proj_layer_norm else 0) + c[-1] * d + d
    k, g = dims.num_conv_pos_embeddings, dims.num_conv_pos_embedding_groups
    n += d * (d // g) * k + d + (2 * d if dims.conv_pos_batch_norm else k)  # batch norm, or the weight norm's g
    n += 2 * d  # the encoder's layer norm
    layer = 4 * (d * d + d) + 2 * d + 2 * d * big + big + d + 2 * d
    if dims.has_adapter_layers:
        a = dims.adapter_attn_dim
        layer += 2 * d + 2 * d * a + a + d
    return n + dims.num_hidden_layers * layer
