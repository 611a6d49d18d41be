"""w2v-BERT 2.0 and the SeamlessM4T v2 speech encoder behind the family interface (``engine.models.interface``).

Input: each window's log-mel filterbank, normalised over that window and stacked in pairs (``features``: 20 ms
frames of 160 values). A batch is padded with zero frames to its longest window rounded up to whole seconds (50
frames, so that a run compiles one program per batch shape and whole second), and the model masks the padding. Audio
over 30 s is cut into 30 s windows encoded apart, as for every family (``engine.models.interface.split_windows``).
Layers: 0 = projected features, 1..L = conformer blocks; Seamless's 8x-subsampling adapter output is not stored.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from engine.models.common.masked_encoder import MaskedEncoder
from engine.models.interface import (
    W2VBERT_LAYERS,
    EncoderCost,
    split_windows,
    window_frames,
)
from engine.models.w2vbert import features as feats
from engine.models.w2vbert.cost import encoder_cost
from engine.models.w2vbert.loaded import LoadedW2vBert, load_w2vbert


@dataclasses.dataclass(frozen=True, eq=False)
class W2vBertEncoder(MaskedEncoder):
    """A ``LoadedW2vBert`` as an ``engine.models.interface.Encoder``."""

    loaded: LoadedW2vBert
    family: str = "w2vbert"
    layer_meaning: str = W2VBERT_LAYERS
    min_samples: int = feats.MIN_SAMPLES  # a shorter last window has no frame: dropped (``split_windows``)
    PAD_FRAMES = 50  # batches are padded to a multiple of this many frames (1 s)

    @property
    def features(self) -> dict:
        return {
            "sample_rate": feats.SAMPLE_RATE,
            "input": "Kaldi log-mel fbank, normalised per window, 2 frames stacked",
            "n_mels": feats.N_MELS,
            "hop_length": feats.HOP_LENGTH,
            "stride": feats.STRIDE,
            "window_samples": 30 * feats.SAMPLE_RATE,
            "padding": "none: each window as it is; batch padding masked",
        }

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``f32[samples]`` -> (features ``f32[frame_w, 160]`` per window, valid frames ``i32[window]``)."""
        parts = split_windows(np.asarray(samples, np.float32), long_audio, self.min_samples, self.window_samples)
        out = [feats.batch_features([p]) for p in parts]  # checks each window, AudioError for a too-short one
        # Frames past a window's valid ones (an odd fbank count's half-empty pair) are padding the model masks anyway.
        return [f[0, : v[0]] for f, v in out], np.array([v[0] for _, v in out], np.int32)

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        return window_frames(
            samples, long_audio, lambda n: int(feats.frames_for_samples(n)), self.min_samples, self.window_samples
        )

    def cost(self, samples: int) -> EncoderCost:
        """FLOPs and parameters of one window of ``samples`` samples (``engine.models.w2vbert.cost``)."""
        return encoder_cost(self.loaded.config, samples)


def load(source, *, adapter=None, dtype=None) -> W2vBertEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return W2vBertEncoder(load_w2vbert(source, dtype=jnp.float32 if dtype is None else dtype))
