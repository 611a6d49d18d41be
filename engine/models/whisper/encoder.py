"""Whisper behind the family interface (``engine.models.interface``): 30 s log-mel windows, the encoder's every layer.

Nothing here changes what Whisper computes: ``windows`` is ``engine.models.whisper.features.features_for_audio``,
the sharded encoder is ``engine.models.common.parallel.ShardedEncoder``, and the store records Whisper's
``ModelDimensions`` and front end (``features.FEATURES``) exactly as before, so stores written before the interface
existed resume with it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.errors import LanguageError
from engine.languages import fleurs_to_whisper
from engine.models.common.attention_stats import AttentionStats
from engine.models.common.heads import HeadMasked
from engine.models.common.parallel import ShardedEncoder
from engine.models.common.value_zeroing import ValueZeroing
from engine.models.interface import WHISPER_LAYERS, EncoderCost
from engine.models.whisper import features as whisper_features
from engine.models.whisper.cost import encoder_cost
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.features import FEATURES, FRAME_RATE, features_for_audio
from engine.models.whisper.loaded import LoadedWhisper, load_whisper
from engine.models.whisper.parallel import SIGNATURE


@dataclasses.dataclass(frozen=True)
class WhisperShape:
    """Whisper's windows, frames and cost from its dimensions alone: what a plan needs, with or without weights
    (``WhisperEncoder`` answers the same through it; ``bench/plan_fleurs.py`` plans large-v3 from this alone)."""

    dims: ModelDimensions
    family: str = "whisper"
    pads_windows: bool = True  # every window costs a full 30 s one (``cost``): Whisper pads audio to 30 s
    window_samples: int = audio_lib.N_SAMPLES
    min_samples: int = 0  # any last window of at least one sample has an encoder frame (``encoder_frames``)

    @property
    def store_dims(self) -> ModelDimensions:
        return self.dims  # ModelDimensions, as every Whisper store has recorded them

    @property
    def embed(self) -> int:
        return self.dims.n_audio_state

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``f32[samples]`` -> (log-mel ``f32[n_mels, 3000]`` per 30 s window, valid frames ``i32[window]``)."""
        mel, frames = features_for_audio(samples, self.dims.n_mels, long_audio)
        return list(mel), frames

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        """``(frames, windows)`` of ``samples`` at 16 kHz, as ``features_for_audio`` will cut them."""
        n = int(samples)
        if long_audio == "truncate":
            n = min(n, audio_lib.N_SAMPLES)
        full, rest = divmod(n, audio_lib.N_SAMPLES)
        frames = full * whisper_features.N_ENCODER_FRAMES + (int(whisper_features.encoder_frames(rest)) if rest else 0)
        return frames, max(1, -(-frames // whisper_features.N_ENCODER_FRAMES))

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs and parameters: a full 30 s window's whatever ``samples`` (at most 30 s)."""
        if not 0 <= samples <= self.window_samples:
            raise ValueError(f"a window holds 0..{self.window_samples} samples, got {samples}")
        return encoder_cost(self.dims)


def _resume(encoder, x, mel, *, first, layers, head_mask):
    del mel  # the blocks from ``first`` on read x alone
    return encoder.resume(x, first, layers, head_mask)


def _masked(encoder, mel, *, layers, head_mask):
    return encoder(mel, layers, jnp.float32, head_mask)


def _block_inputs(encoder, mel):
    return encoder(mel, tuple(range(encoder.dims.n_audio_layer)), jnp.float32)


def _qk(encoder, block: int, x, keep):
    del keep  # Whisper's encoder attends over the whole window, padding included
    b = encoder.blocks[block - 1]
    h, a = b.attn_ln(x), b.attn
    q = a.split_heads(a.query(h))
    return q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), a.split_heads(a.key(h)), None


def _vz_states(encoder, mel):
    return encoder(mel, tuple(range(encoder.dims.n_audio_layer + 1)), jnp.float32)


def _vz_block(encoder, layer: int, x, keep, value_scale):
    del keep  # Whisper's encoder attends over the whole window, padding included
    y = encoder.blocks[layer - 1].encoder_block(x, value_scale=value_scale)
    return encoder.ln_post(y) if layer == encoder.dims.n_audio_layer else y


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperEncoder:
    """A ``LoadedWhisper`` as an ``engine.models.interface.Encoder``; ``loaded`` is the model for decoder-side jobs."""

    loaded: LoadedWhisper
    family: str = "whisper"
    layer_meaning: str = WHISPER_LAYERS
    pads_windows: bool = WhisperShape.pads_windows
    window_samples: int = WhisperShape.window_samples
    min_samples: int = WhisperShape.min_samples

    @property
    def shape(self) -> WhisperShape:
        return WhisperShape(self.loaded.dims)

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def sha256(self) -> str:
        return self.loaded.checkpoint.sha256

    @property
    def store_dims(self):
        return self.loaded.dims  # ModelDimensions, as every Whisper store has recorded them

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE

    @property
    def n_layers_out(self) -> int:
        return self.loaded.dims.n_encoder_layers_out

    @property
    def embed(self) -> int:
        return self.loaded.dims.n_audio_state

    @property
    def features(self) -> dict:
        return dict(FEATURES)

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        return self.shape.windows(samples, long_audio)

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        return self.shape.expected_frames(samples, long_audio)

    def cost(self, samples: int) -> EncoderCost:
        return self.shape.cost(samples)

    def collate(self, inputs: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray]:
        """Windows -> ``mel f32[batch_size, n_mels, 3000]``; padding rows hold log-mel of silence rather than zeros,
        so they look like real (empty) input. Each window's result is independent of its batch mates."""
        mel = np.full((batch_size, *inputs[0].shape), inputs[0].min(), np.float32)
        mel[: len(inputs)] = np.stack(inputs)
        return (mel,)

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        return ShardedEncoder(self.loaded.model, SIGNATURE, mesh, layers=tuple(layers), out_dtype=out_dtype)

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(mel,)`` batches."""
        d = self.loaded.dims
        return HeadMasked(self.loaded.model.encoder, _masked, d.n_audio_layer, d.n_audio_head, tuple(layers), _resume)

    @property
    def attention_stats(self) -> AttentionStats:
        """Each head's attention statistics (``engine.models.common.attention_stats``): keys over the whole padded
        window, as Whisper attends."""
        d = self.loaded.dims
        return AttentionStats(self.loaded.model.encoder, _block_inputs, _qk, d.n_audio_layer, d.n_audio_head)

    @functools.cached_property
    def value_zeroing(self) -> ValueZeroing:
        """Blocks re-run with value vectors zeroed (``engine.models.common.value_zeroing``), over the whole padded
        window as Whisper attends; block L's output through ``ln_post``. One object per encoder: its jitted calls are
        compiled once."""
        return ValueZeroing(self.loaded.model.encoder, _vz_states, _vz_block, self.loaded.dims.n_audio_layer)

    def ffn_counts(self, batch: tuple, frames: np.ndarray) -> np.ndarray:
        """i64[L, 4 d]: active frames per block and feed-forward unit of one ``collate``d batch, ``frames``: the valid
        encoder frames of each row (0 for padding rows)."""
        return self.loaded.ffn_active(batch[0], frames)

    def ffn_scaled_sums(self, batch: tuple, frames: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sums f32[layer, batch, embed], frames)``: every stored layer's states summed over each row's valid
        frames, with the feed-forward units multiplied by ``scale: f32[L, 4 d]`` (0 switches a unit off)."""
        return self.loaded.scaled_sums(batch[0], frames, scale), np.asarray(frames)

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """The languages with no Whisper language code (none for an English-only model, which has no such token)."""
        if not self.loaded.dims.is_multilingual:
            return []
        out = []
        for lang in langs:
            try:
                fleurs_to_whisper(lang)
            except LanguageError:
                out.append(lang)
        return out


def load(source, *, adapter=None, dtype=None) -> WhisperEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return WhisperEncoder(load_whisper(source, dtype=jnp.float32 if dtype is None else jnp.dtype(dtype)))
