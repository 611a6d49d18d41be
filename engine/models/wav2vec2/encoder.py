"""wav2vec2, HuBERT, XLS-R and MMS behind the family interface (``engine.models.interface``).

Input: each window's raw waveform, normalised on its own samples (``features.batch_waveforms``), no fixed length:
a batch is right-padded to its longest window rounded up to whole seconds (``loaded.PAD_MULTIPLE``) and the model
masks the padding, so a window's states do not depend on its batch mates. Audio over 30 s is cut into 30 s windows
encoded apart, as Whisper's is (``engine.models.interface.split_windows``): transformer attention over longer inputs
grows quadratically, and equal windows keep stores of different families comparable utterance by utterance.
Layers are transformers' ``hidden_states``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.errors import AudioError
from engine.models.common.attention_stats import AttentionStats
from engine.models.common.heads import HeadMasked
from engine.models.common.layers import layer_norm
from engine.models.common.parallel import ShardedEncoder, collate_rows
from engine.models.common.value_zeroing import ValueZeroing
from engine.models.interface import (
    WAV2VEC2_LAYERS,
    WINDOW_SECONDS,
    EncoderCost,
    LoadedEncoder,
    split_windows,
    window_frames,
)
from engine.models.wav2vec2.cost import encoder_cost
from engine.models.wav2vec2.features import normalize
from engine.models.wav2vec2.loaded import PAD_MULTIPLE, LoadedWav2Vec2, load_wav2vec2
from engine.models.wav2vec2.parallel import SIGNATURE


def _resume(model, x, wave, lengths, *, first, layers, head_mask):
    del wave  # the layers from ``first`` on read x and the valid frames alone
    return model.resume(x, lengths, first, layers, head_mask)


def _masked(model, wave, lengths, *, layers, head_mask):
    return model(wave, lengths, layers, jnp.float32, head_mask)[0]


def _block_inputs(model, wave, lengths):
    return model(wave, lengths, tuple(range(model.dims.num_hidden_layers)), jnp.float32)[0]


def _qk(model, block: int, x, keep):
    """Block ``block``'s scaled queries and keys, as ``engine.models.wav2vec2.model.EncoderLayers._layer`` makes them
    (pre-LN models normalise first)."""
    dims = model.dims
    w = {name: v[...][block - 1] for name, v in model.layers.weights.items()}
    h = layer_norm(x, w["ln1_scale"], w["ln1_bias"], dims.layer_norm_eps) if dims.do_stable_layer_norm else x
    b, t, d = h.shape
    heads = dims.num_attention_heads
    qkv = jnp.dot(h, w["qkv_kernel"]) + w["qkv_bias"]
    q, k = (qkv[..., i * d : (i + 1) * d].reshape(b, t, heads, d // heads) for i in range(2))
    return q * jnp.asarray((d // heads) ** -0.5, q.dtype), k, keep


def _vz_states(model, wave, lengths):
    return model(wave, lengths, tuple(range(model.dims.n_layers_out)), jnp.float32)[0]


def _vz_block(model, layer, x, keep, value_scale):
    """Layer ``layer`` (traced: one program for every layer) with value zeroing; the last through the final norm."""
    y = model.layers.block(x, keep, layer, value_scale)
    return jnp.where(layer == model.dims.num_hidden_layers, model.final_norm(y), y)


@dataclasses.dataclass(frozen=True, eq=False)
class Wav2Vec2Encoder(LoadedEncoder):
    """A ``LoadedWav2Vec2`` as an ``engine.models.interface.Encoder`` (its ``sha256``: of the weights, then the
    adapter file's; ``embed``: the config's ``hidden_size``)."""

    loaded: LoadedWav2Vec2
    family: str = "wav2vec2"
    layer_meaning: str = WAV2VEC2_LAYERS
    window_samples: int = WINDOW_SECONDS * 16000
    pads_windows: bool = False  # a window costs its own length (``cost``); a batch pads to whole seconds, masked

    @property
    def min_samples(self) -> int:
        """The model's receptive field: a shorter last window has no frame and is dropped (``split_windows``)."""
        return self.loaded.dims.receptive_field

    @property
    def name(self) -> str:
        adapter = self.loaded.checkpoint.adapter
        return self.loaded.checkpoint.name + (f"+adapter.{adapter}" if adapter else "")

    @property
    def embed(self) -> int:
        return self.loaded.dims.hidden_size

    @property
    def features(self) -> dict:
        opts = self.loaded.checkpoint.features
        return {
            "sample_rate": 16000,
            "input": "raw waveform",
            "do_normalize": opts.do_normalize,
            "padding_value": opts.padding_value,
            "window_samples": 30 * 16000,
            "padding": "none: each window as it is, normalised on its own samples; batch padding masked",
        }

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``f32[samples]`` -> (model input ``f32[samples_w]`` per window, valid frames ``i32[window]``)."""
        dims, opts = self.loaded.dims, self.loaded.checkpoint.features
        parts = split_windows(np.asarray(samples, np.float32), long_audio, self.min_samples, self.window_samples)
        if len(parts[0]) < self.min_samples:
            raise AudioError(f"{len(parts[0])} samples: the model needs at least {self.min_samples} for one frame")
        inputs = [normalize(p) if opts.do_normalize else p for p in parts]
        return inputs, np.array([dims.frames(len(p)) for p in parts], np.int32)

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        dims = self.loaded.dims
        return window_frames(samples, long_audio, dims.frames, self.min_samples, self.window_samples)

    def collate(self, inputs: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(wave f32[batch_size, samples], lengths i32[batch_size])``; padding rows have length 0."""
        return collate_rows(inputs, batch_size, PAD_MULTIPLE, self.loaded.checkpoint.features.padding_value)

    def cost(self, samples: int) -> EncoderCost:
        """FLOPs and parameters of one window of ``samples`` samples (``engine.models.wav2vec2.cost``)."""
        return encoder_cost(self.loaded.dims, samples)

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        return _StatesOnly(ShardedEncoder(self.loaded.model, SIGNATURE, mesh, layers, out_dtype))

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(wave, lengths)`` batches."""
        d = self.loaded.dims
        return HeadMasked(
            self.loaded.model, _masked, d.num_hidden_layers, d.num_attention_heads, tuple(layers), _resume
        )

    @property
    def attention_stats(self) -> AttentionStats:
        """Each head's attention statistics (``engine.models.common.attention_stats``), the padding's keys masked."""
        d = self.loaded.dims
        return AttentionStats(self.loaded.model, _block_inputs, _qk, d.num_hidden_layers, d.num_attention_heads)

    @functools.cached_property
    def value_zeroing(self) -> ValueZeroing:
        """Layers re-run with value vectors zeroed (``engine.models.common.value_zeroing``), keys past the valid
        frames masked; layer L's output through the final norm of pre-LN models (post-LN ones end normed). One object
        per encoder: its jitted calls are compiled once."""
        return ValueZeroing(self.loaded.model, _vz_states, _vz_block, self.loaded.dims.num_hidden_layers, stacked=True)

    def ffn_counts(self, batch: tuple, frames: np.ndarray) -> np.ndarray:
        """i64[L, intermediate]: active frames per layer and feed-forward unit of one ``collate``d batch (the valid
        frames follow from the batch's lengths; ``frames`` is not needed)."""
        del frames
        return self.loaded.ffn_active(*batch)

    def ffn_scaled_sums(self, batch: tuple, frames: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sums f32[layer, batch, embed], frames)``: every stored layer's states summed over each row's valid
        frames, with the feed-forward units multiplied by ``scale: f32[L, intermediate]`` (0 switches a unit off)."""
        del frames
        return self.loaded.scaled_sums(*batch, scale)

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """None: its only head is CTC over characters, which takes no language token."""
        del langs
        return []


class _StatesOnly:
    """The sharded encoder returning the states only: the pipeline knows each window's frames from the host."""

    def __init__(self, sharded: ShardedEncoder):
        self.sharded = sharded
        self.local_multiple = sharded.local_multiple

    def __call__(self, wave, lengths):
        return self.sharded(wave, lengths)[0]


def load(source, *, adapter=None, dtype=None) -> Wav2Vec2Encoder:
    return Wav2Vec2Encoder(load_wav2vec2(source, adapter=adapter, dtype=jnp.float32 if dtype is None else dtype))
