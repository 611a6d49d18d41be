"""Flax (NNX) wav2vec2 / HuBERT with transformers' numerics, returning every layer of ragged batches.

Layer indexing: transformers' ``hidden_states`` (transformers 5), ``L + 1`` entries, ``L = num_hidden_layers``:

- ``0``: the input to the first transformer layer: conv feature encoder, feature projection, plus the convolutional
  positional embedding; with post-LN layers (``do_stable_layer_norm`` off: base models) the encoder's layer norm is
  applied, with pre-LN layers (on: large, XLS-R, MMS) it is not.
- ``1..L``: the output of layer ``i``, the residual stream. Post-LN layers end in a layer norm, so these are normed;
  pre-LN outputs are raw, and the last one is *not* the encoder output: that is ``final_norm(states[L])``
  (transformers' ``last_hidden_state``, what the CTC head reads). transformers 4 replaced ``hidden_states[-1]`` by
  the normed output for pre-LN models; transformers 5 records every layer's raw output instead (its
  ``capture_outputs(tie_last_hidden_states=False)``), and this is what is returned here.

Ragged batches: ``wave f32[batch, samples]`` holds each utterance's normalised samples from 0 (``features.py``),
``lengths i32[batch]`` counts them, and every frame an utterance has (``Wav2Vec2Dims.frames``, the conv length
formula) equals what the model computes on that utterance alone, unpadded:

- the conv feature encoder is local: a valid frame's receptive field (400 samples) lies in valid samples. The one
  statistic over time, the group norm of base models' first conv layer (one group per channel, normalised over every
  frame), is taken over the valid frames only;
- frames past an utterance's end are zeroed before the positional convolution, as zero padding is in the unpadded
  run, and masked as attention keys.

So no model sees padding, whatever its ``feat_extract_norm``. transformers gets the same for "layer" models by its
attention mask; base models (group norm) were trained without one, and transformers' padded batch of them differs
from its unpadded runs. The alternatives, grouping equal lengths or running every utterance unpadded, would compile
once per distinct length (or leave batches nearly empty) for no gain in exactness. Frames past an utterance's end are
returned as zeros.

Glossary: ``wave: f32[batch, samples]``, ``lengths: i32[batch]`` samples, ``frames: i32[batch]`` valid frames,
``states: f[layer, batch, frame, embed]``. Weights come as a state dict in transformers' ``Wav2Vec2Model`` /
``HubertModel`` names (prefix stripped, weight norm folded: ``engine.models.wav2vec2.checkpoints``), plus
``lm_head.*`` for the CTC head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError
from engine.models.common.attention import check_head_mask, scale_heads
from engine.models.common.layers import Conv1d, LayerNorm, Linear, layer_norm, linear_kernel, param
from engine.models.wav2vec2.config import Wav2Vec2Dims
from engine.models.wav2vec2.layers import activation, attend

CONV_NORM_EPS = 1e-5  # nn.GroupNorm's and nn.LayerNorm's default: the conv layers' norms ignore layer_norm_eps
ADAPTER_NORM_EPS = 1e-5  # the MMS adapter's nn.LayerNorm is built without layer_norm_eps too
BATCH_NORM_EPS = 1e-5  # nn.BatchNorm1d's default (HuBERT's conv_pos_batch_norm)


def conv_frames(lengths, dims: Wav2Vec2Dims, n_layers: int | None = None):
    """Valid frames after the first ``n_layers`` conv layers (default all): ``(n - kernel) // stride + 1`` each,
    floored at 0. Works on ints, NumPy and JAX arrays."""
    n = lengths
    for kernel, stride in list(zip(dims.conv_kernel, dims.conv_stride, strict=True))[:n_layers]:
        n = (n - kernel) // stride + 1
    return jnp.maximum(n, 0) if isinstance(n, jax.Array) else np.maximum(n, 0)


class FeatureEncoder(nnx.Module):
    """The conv stack: ``wave f[batch, samples]`` -> ``f[batch, frame, conv_dim[-1]]``."""

    def __init__(self, dims: Wav2Vec2Dims, sd: Mapping[str, np.ndarray], dtype):
        self.dims = dims
        self.act = activation(dims.feat_extract_activation)
        self.convs = nnx.List(
            [
                Conv1d(
                    sd[f"feature_extractor.conv_layers.{i}.conv.weight"],
                    sd.get(f"feature_extractor.conv_layers.{i}.conv.bias"),
                    stride,
                    dtype,
                )
                for i, stride in enumerate(dims.conv_stride)
            ]
        )
        normed = range(len(dims.conv_dim)) if dims.feat_extract_norm == "layer" else [0]
        self.norms = nnx.List(
            [
                LayerNorm(
                    sd[f"feature_extractor.conv_layers.{i}.layer_norm.weight"],
                    sd[f"feature_extractor.conv_layers.{i}.layer_norm.bias"],
                    CONV_NORM_EPS,
                    dtype,
                )
                for i in normed
            ]
        )

    def __call__(self, wave, lengths):
        x = wave[..., None]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.dims.feat_extract_norm == "layer":
                x = self.norms[i](x)
            elif i == 0:
                x = self._group_norm(x, conv_frames(lengths, self.dims, 1))
            x = self.act(x)
        return x

    def _group_norm(self, x, valid):
        """``nn.GroupNorm(C, C)``: each channel normalised over time, over the ``valid: i32[batch]`` frames only."""
        norm = self.norms[0]
        x32 = x.astype(jnp.float32)
        keep = (jnp.arange(x.shape[1])[None, :] < valid[:, None])[..., None]  # bool[b, t, 1]
        count = jnp.maximum(valid, 1).astype(jnp.float32)[:, None, None]
        mean = jnp.where(keep, x32, 0.0).sum(1, keepdims=True) / count
        var = jnp.square(jnp.where(keep, x32 - mean, 0.0)).sum(1, keepdims=True) / count
        y = (x32 - mean) * jax.lax.rsqrt(var + CONV_NORM_EPS)
        return (y * norm.scale[...].astype(jnp.float32) + norm.bias[...].astype(jnp.float32)).astype(x.dtype)


class PositionalConv(nnx.Module):
    """The convolutional positional embedding: ``x f[batch, frame, embed]`` (padding frames zero) -> the same shape.

    A grouped conv over ``num_conv_pos_embeddings`` frames, "same" padded (one trailing frame dropped for an even
    kernel), then the activation. The weight is the weight-norm fold ``g * v / |v|`` made at load time.
    """

    def __init__(self, dims: Wav2Vec2Dims, sd: Mapping[str, np.ndarray], dtype):
        k = dims.num_conv_pos_embeddings
        self.act = activation(dims.feat_extract_activation)
        self.conv = Conv1d(
            sd["encoder.pos_conv_embed.conv.weight"],
            sd["encoder.pos_conv_embed.conv.bias"],
            1,
            dtype,
            padding=k // 2,
            groups=dims.num_conv_pos_embedding_groups,
        )
        # HuBERT's conv_pos_batch_norm, eval mode: one affine map per channel, before the conv
        self.batch_norm = (
            _batch_norm_affine(sd, "encoder.pos_conv_embed.batch_norm", dtype) if dims.conv_pos_batch_norm else None
        )

    def __call__(self, x, keep):
        """``keep: bool[batch, frame, 1]``: the frames to use; the others count as the conv's zero padding."""
        if self.batch_norm is not None:
            scale, shift = self.batch_norm
            x = jnp.where(keep, x * scale[...] + shift[...], 0)
        return self.act(self.conv(x)[:, : x.shape[1]])


def _batch_norm_affine(sd, prefix: str, dtype) -> nnx.List:
    """An eval-mode ``BatchNorm1d`` as ``[scale, shift]``: ``weight / sqrt(running_var + eps)`` and
    ``bias - running_mean * scale``."""
    scale = np.asarray(sd[f"{prefix}.weight"], np.float32) / np.sqrt(
        np.asarray(sd[f"{prefix}.running_var"], np.float32) + BATCH_NORM_EPS
    )
    shift = np.asarray(sd[f"{prefix}.bias"], np.float32) - np.asarray(sd[f"{prefix}.running_mean"], np.float32) * scale
    return nnx.List([param(scale, dtype), param(shift, dtype)])


# Per-layer weights, stacked along a leading layer axis: name -> (state-dict suffix, is a linear weight).
_LAYER_PARAMS = {
    "ln1_scale": ("layer_norm.weight", False),
    "ln1_bias": ("layer_norm.bias", False),
    "out_kernel": ("attention.out_proj.weight", True),
    "out_bias": ("attention.out_proj.bias", False),
    "ff_in_kernel": ("feed_forward.intermediate_dense.weight", True),
    "ff_in_bias": ("feed_forward.intermediate_dense.bias", False),
    "ff_out_kernel": ("feed_forward.output_dense.weight", True),
    "ff_out_bias": ("feed_forward.output_dense.bias", False),
    "ln2_scale": ("final_layer_norm.weight", False),
    "ln2_bias": ("final_layer_norm.bias", False),
}
_ADAPTER_PARAMS = {
    "ad_ln_scale": ("adapter_layer.norm.weight", False),
    "ad_ln_bias": ("adapter_layer.norm.bias", False),
    "ad_in_kernel": ("adapter_layer.linear_1.weight", True),
    "ad_in_bias": ("adapter_layer.linear_1.bias", False),
    "ad_out_kernel": ("adapter_layer.linear_2.weight", True),
    "ad_out_bias": ("adapter_layer.linear_2.bias", False),
}


class EncoderLayers(nnx.Module):
    """The ``L`` transformer layers, weights stacked ``[layer, ...]`` and run by one ``jax.lax.scan``.

    A scan compiles one layer instead of ``L`` (24 for large models, 48 for XLS-R 1B/2B), and its per-step outputs
    are the stacked ``hidden_states`` directly. ``jax.lax.scan`` over plain arrays stacked once at load time rather
    than ``nnx.scan`` over ``L`` layer modules: the layer is a pure function of its weights, and nothing in it is
    state. The query, key and value projections are one ``[embed, 3 * embed]``
    matrix product.
    """

    def __init__(self, dims: Wav2Vec2Dims, sd: Mapping[str, np.ndarray], dtype):
        self.dims = dims
        self.act = activation(dims.hidden_act)
        n = dims.num_hidden_layers

        def stack(suffix, linear):
            arrays = [np.asarray(sd[f"encoder.layers.{i}.{suffix}"]) for i in range(n)]
            return param(np.stack([linear_kernel(a) if linear else a for a in arrays]), dtype)

        names = {**_LAYER_PARAMS, **(_ADAPTER_PARAMS if dims.has_adapter_layers else {})}
        self.weights = nnx.Dict({name: stack(*spec) for name, spec in names.items()})

        def qkv(i, param_name):
            return [np.asarray(sd[f"encoder.layers.{i}.attention.{p}_proj.{param_name}"]) for p in "qkv"]

        self.weights["qkv_kernel"] = param(np.stack([np.concatenate(qkv(i, "weight")).T for i in range(n)]), dtype)
        self.weights["qkv_bias"] = param(np.stack([np.concatenate(qkv(i, "bias")) for i in range(n)]), dtype)

    def __call__(self, x, keep, depth: int, head_mask=None):
        """``x: f[batch, frame, embed]``, ``keep: bool[batch, frame]`` -> the outputs of layers ``1..depth``,
        ``f[depth, batch, frame, embed]``, frames past each utterance's end zero. ``head_mask``: ``f[L, heads]`` or
        ``f[batch, L, heads]`` (checked by the caller), each head's attention output scaled by it."""
        weights = {
            name: w[...] if depth == self.dims.num_hidden_layers else w[:depth] for name, w in self.weights.items()
        }
        if head_mask is not None:  # scanned with the weights: layer-major
            weights["head_scale"] = (head_mask if head_mask.ndim == 2 else jnp.moveaxis(head_mask, 1, 0))[:depth]

        def step(x, w):
            x, _ = self._layer(x, w, keep)
            return x, jnp.where(keep[..., None], x, 0)

        return jax.lax.scan(step, x, weights)[1]

    def resume(self, x, keep, first: int, depth: int, head_mask):
        """``__call__`` from layer ``first`` on: ``x`` the input of layer ``first``, the outputs of layers
        ``first..depth``, ``f[depth - first + 1, batch, frame, embed]``."""
        weights = {name: w[...][first - 1 : depth] for name, w in self.weights.items()}
        weights["head_scale"] = (head_mask if head_mask.ndim == 2 else jnp.moveaxis(head_mask, 1, 0))[first - 1 : depth]

        def step(x, w):
            x, _ = self._layer(x, w, keep)
            return x, jnp.where(keep[..., None], x, 0)

        return jax.lax.scan(step, x, weights)[1]

    def block(self, x, keep, layer, value_scale):
        """Layer ``layer``'s output alone from its input ``x: f[batch, frame, embed]``, with each frame's value vectors
        multiplied by ``value_scale: f[batch, frame]`` (0 zeroes them: value zeroing,
        ``engine.models.common.value_zeroing``); ``layer`` (1..L) may be traced: the weights are indexed by it."""
        w = {name: v[...][layer - 1] for name, v in self.weights.items()} | {"value_scale": value_scale}
        return self._layer(x, w, keep)[0]

    def ffn_active(self, x, keep):
        """i32[L, intermediate]: per layer, at how many frames where ``keep`` each feed-forward unit's activation is
        > 0 (after the nonlinearity), summed over the batch."""

        def step(x, w):
            x, hidden = self._layer(x, w, keep)
            return x, jnp.sum((hidden > 0) & keep[..., None], axis=(0, 1), dtype=jnp.int32)

        return jax.lax.scan(step, x, {name: w[...] for name, w in self.weights.items()})[1]

    def scaled_sums(self, x, keep, scale):
        """f32[L, batch, embed]: each layer's output summed over the frames where ``keep``, with layer l's
        feed-forward activations multiplied by ``scale[l - 1]`` (``scale: f[L, intermediate]``)."""

        def step(x, w):
            x, _ = self._layer(x, w, keep, w["ffn_scale"])
            return x, jnp.sum(jnp.where(keep[..., None], x, 0), axis=1, dtype=jnp.float32)

        weights = {name: w[...] for name, w in self.weights.items()} | {"ffn_scale": scale}
        return jax.lax.scan(step, x, weights)[1]

    def _layer(self, x, w, key_valid, scale=None):
        """(the layer's output, its feed-forward activations ``f[batch, frame, intermediate]``), the activations
        multiplied by ``scale: f[intermediate]`` first when given (the intervention on selected units)."""
        dims = self.dims
        eps = dims.layer_norm_eps

        def attention(h):
            b, t, d = h.shape
            heads = dims.num_attention_heads
            qkv = jnp.dot(h, w["qkv_kernel"]) + w["qkv_bias"]
            q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, t, heads, d // heads) for i in range(3))
            q = q * jnp.asarray((d // heads) ** -0.5, q.dtype)
            if "value_scale" in w:  # value zeroing: each frame's value vectors (bias included) times its scale
                v = v * w["value_scale"].astype(v.dtype)[..., None, None]
            out = attend(q, k, v, key_valid)
            if "head_scale" in w:
                out = scale_heads(out, w["head_scale"], heads)
            return jnp.dot(out, w["out_kernel"]) + w["out_bias"]

        def feed_forward(h):
            hidden = self.act(jnp.dot(h, w["ff_in_kernel"]) + w["ff_in_bias"])
            if scale is not None:
                hidden = hidden * scale.astype(hidden.dtype)
            return jnp.dot(hidden, w["ff_out_kernel"]) + w["ff_out_bias"], hidden

        if not dims.do_stable_layer_norm:  # post-LN (base models)
            x = layer_norm(x + attention(x), w["ln1_scale"], w["ln1_bias"], eps)
            out, hidden = feed_forward(x)
            return layer_norm(x + out, w["ln2_scale"], w["ln2_bias"], eps), hidden
        x = x + attention(layer_norm(x, w["ln1_scale"], w["ln1_bias"], eps))
        out, hidden = feed_forward(layer_norm(x, w["ln2_scale"], w["ln2_bias"], eps))
        x = x + out
        if dims.has_adapter_layers:  # MMS: a residual bottleneck after each pre-LN layer
            h = layer_norm(x, w["ad_ln_scale"], w["ad_ln_bias"], ADAPTER_NORM_EPS)
            h = jax.nn.relu(jnp.dot(h, w["ad_in_kernel"]) + w["ad_in_bias"])
            x = x + jnp.dot(h, w["ad_out_kernel"]) + w["ad_out_bias"]
        return x, hidden


class Wav2Vec2(nnx.Module):
    """wav2vec2 or HuBERT encoder, with the CTC head when the state dict has ``lm_head.*``.

    Build with ``Wav2Vec2(dims, state_dict, dtype)``; ``state_dict`` as checked by
    ``engine.models.wav2vec2.checkpoints``.
    """

    def __init__(self, dims: Wav2Vec2Dims, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        sd = state_dict
        self.dims = dims
        self.feature_encoder = FeatureEncoder(dims, sd, dtype)
        self.projection_norm = (
            LayerNorm(
                sd["feature_projection.layer_norm.weight"],
                sd["feature_projection.layer_norm.bias"],
                dims.layer_norm_eps,
                dtype,
            )
            if dims.feat_proj_layer_norm
            else None
        )
        self.projection = Linear(
            sd["feature_projection.projection.weight"], sd["feature_projection.projection.bias"], dtype
        )
        self.pos_conv = PositionalConv(dims, sd, dtype)
        self.encoder_norm = LayerNorm(
            sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"], dims.layer_norm_eps, dtype
        )
        self.layers = EncoderLayers(dims, sd, dtype)
        head = "lm_head.weight" in sd
        self.lm_head = Linear(sd["lm_head.weight"], sd["lm_head.bias"], dtype) if head else None

    def __call__(self, wave, lengths, layers: Sequence[int] | None = None, out_dtype=None, head_mask=None):
        """``wave f32[batch, samples]``, ``lengths i32[batch]`` -> ``(states f[len(layers), batch, frame, embed],
        frames i32[batch])``.

        ``layers`` (default all, ``0..L``) are returned in the order given; layers past the deepest requested one are
        not computed. ``frame`` is ``Wav2Vec2Dims.frames(samples)``; frames past ``frames[i]`` are zero.
        ``head_mask``: ``f[L, heads]`` or ``f[batch, L, heads]``, scales each head's attention output (0 ablates it;
        ``engine.models.common.attention.scale_heads``).
        """
        dims = self.dims
        n_out = dims.n_layers_out
        layers = tuple(range(n_out)) if layers is None else tuple(int(i) for i in layers)
        bad = [i for i in layers if not 0 <= i < n_out]
        if bad or not layers:
            raise ValueError(f"layers {bad or '()'} out of range 0..{n_out - 1} (0 = input to layer 1, L = last layer)")
        if wave.ndim != 2 or lengths.shape != wave.shape[:1]:
            raise ShapeError(
                f"wave must be f32[batch, samples] and lengths i32[batch], got {tuple(wave.shape)} and "
                f"{tuple(lengths.shape)}"
            )
        if wave.shape[1] < dims.receptive_field:
            raise ShapeError(f"wave has {wave.shape[1]} samples; the model needs at least {dims.receptive_field}")
        out_dtype = out_dtype or self.projection.kernel.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, dims.num_hidden_layers, dims.num_attention_heads, len(wave))
        x, keep, frames = self._front(wave, lengths)
        first = jnp.where(keep[..., None], x, 0).astype(out_dtype)[None]
        depth = max(layers)
        deeper = None if depth == 0 else self.layers(x, keep, depth, head_mask).astype(out_dtype)
        states = first if deeper is None else jnp.concatenate([first, deeper])
        return states[jnp.asarray(layers)] if layers != tuple(range(depth + 1)) else states, frames

    def resume(self, x, lengths, first: int, layers: Sequence[int], head_mask):
        """The layers ``layers`` (each >= ``first``) from ``x``, the input of layer ``first`` (layer ``first - 1``'s
        states as ``__call__`` returns them, ``f[batch, frame, embed]``), ``lengths`` the batch's samples, with
        ``head_mask`` as ``__call__`` takes it: the heads job's ablations of layer ``first`` or later, the layers
        before it shared."""
        dims = self.dims
        head_mask = check_head_mask(head_mask, dims.num_hidden_layers, dims.num_attention_heads, len(x))
        keep = jnp.arange(x.shape[1])[None, :] < conv_frames(jnp.asarray(lengths, jnp.int32), dims)[:, None]
        states = self.layers.resume(x, keep, first, max(layers), head_mask)
        return states[jnp.asarray([i - first for i in layers])].astype(jnp.float32)

    def _front(self, wave, lengths):
        """(layer 0's input to the first layer ``f[batch, frame, embed]``, ``keep: bool[batch, frame]``, frames)."""
        dims = self.dims
        lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), wave.shape[1])
        frames = conv_frames(lengths, dims)
        x = self.feature_encoder(wave.astype(self.projection.kernel.dtype), lengths)
        if self.projection_norm is not None:
            x = self.projection_norm(x)
        x = self.projection(x)
        keep = jnp.arange(x.shape[1])[None, :] < frames[:, None]  # bool[batch, frame]
        x = jnp.where(keep[..., None], x, 0)  # what zero padding is in the unpadded run
        x = x + self.pos_conv(x, keep[..., None])
        if not dims.do_stable_layer_norm:
            x = self.encoder_norm(x)
        return x, keep, frames

    def ffn_active(self, wave, lengths):
        """i32[L, intermediate]: per layer, at how many valid frames of the batch (``wave f32[batch, samples]``,
        ``lengths i32[batch]`` as ``__call__``) each feed-forward unit's activation is > 0, summed over the batch:
        the counts that language-selective units are ranked by (LAPE); nothing per frame is kept."""
        x, keep, _ = self._front(wave, lengths)
        return self.layers.ffn_active(x, keep)

    def scaled_sums(self, wave, lengths, scale):
        """``(sums f32[L + 1, batch, embed], frames i32[batch])``: every layer ``__call__`` returns (0..L) summed over
        each row's valid frames, with layer l's feed-forward activations multiplied by ``scale[l - 1]``
        (``scale: f[L, intermediate]``; ones is the unchanged model, 0 switches a unit off)."""
        x, keep, frames = self._front(wave, lengths)
        first = jnp.sum(jnp.where(keep[..., None], x, 0), axis=1, dtype=jnp.float32)[None]
        return jnp.concatenate([first, self.layers.scaled_sums(x, keep, scale)]), frames

    def final_norm(self, x):
        """transformers' ``last_hidden_state`` from the last layer's output: the encoder's final layer norm for
        pre-LN models, nothing for post-LN ones (their layers end normed)."""
        return self.encoder_norm(x) if self.dims.do_stable_layer_norm else x

    def ctc_logits(self, x, final_norm: bool = True):
        """``x: f[..., frame, embed]`` -> CTC logits ``f32[..., frame, vocab]``, as ``Wav2Vec2ForCTC`` computes them
        from ``last_hidden_state``. ``x`` is a layer's output; with ``final_norm`` the pre-LN models' final layer norm
        is applied first, so that layer ``L`` gives transformers' logits and an earlier layer is read at the scale the
        head was trained on (the logit lens)."""
        if self.lm_head is None:
            raise ValueError("this checkpoint has no CTC head (lm_head); load a *ForCTC checkpoint")
        if final_norm:
            x = self.final_norm(x)
        return self.lm_head(x).astype(jnp.float32)
