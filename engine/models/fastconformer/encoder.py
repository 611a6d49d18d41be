"""The FastConformer (Parakeet, Canary, Cohere ASR) behind the family interface (``engine.models.interface``).

Input: each window's normalised log-mel (``features.log_mel``: 10 ms frames, ``n_mels`` bins, normalised over that
window as transformers' ``ParakeetFeatureExtractor`` does), its valid frames only. A batch is padded with zero frames
to its longest window rounded up to whole seconds (100 feature frames, so that a run compiles one program per batch
shape and whole second); the model masks the padding, and a zero frame is what the extractor's mask leaves there
anyway. Audio over 30 s is cut into 30 s windows encoded apart, as for every family
(``engine.models.interface.split_windows``). Layers: 0 = the 8x subsampling output, 1..L = conformer blocks, 80 ms
frames (12.5/s).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from engine.models.common.masked_encoder import MaskedEncoder
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.cost import encoder_cost
from engine.models.fastconformer.loaded import LoadedFastConformer, load_fastconformer
from engine.models.interface import (
    FASTCONFORMER_LAYERS,
    EncoderCost,
    split_windows,
    window_frames,
)


@dataclasses.dataclass(frozen=True, eq=False)
class FastConformerEncoder(MaskedEncoder):
    """A ``LoadedFastConformer`` as an ``engine.models.interface.Encoder``."""

    loaded: LoadedFastConformer
    family: str = "fastconformer"
    layer_meaning: str = FASTCONFORMER_LAYERS
    min_samples: int = feats.MIN_SAMPLES  # a shorter last window has no frame: dropped (``split_windows``)
    PAD_FRAMES = 100  # batches are padded to a multiple of this many feature frames (1 s)

    @property
    def features(self) -> dict:
        return {
            **feats.EXTRACTOR,
            "input": "Slaney log-mel (ParakeetFeatureExtractor), pre-emphasis, normalised per window",
            "n_mels": self.loaded.config.n_mels,
            "window_samples": 30 * feats.SAMPLE_RATE,
            "padding": "none: each window as it is; batch padding masked",
        }

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``f32[samples]`` -> (valid log-mel frames ``f32[feature_frame_w, n_mels]`` per window, valid encoder
        frames ``i32[window]``)."""
        parts = split_windows(np.asarray(samples, np.float32), long_audio, self.min_samples, self.window_samples)
        out = [feats.log_mel(p, self.loaded.config.n_mels) for p in parts]  # AudioError for a too-short window
        return [f[:n] for f, n in out], self.loaded.frames([n for _, n in out])

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        sub = self.loaded.config.sub_length
        return window_frames(
            samples, long_audio, lambda n: int(sub(feats.valid_frames(n))), self.min_samples, self.window_samples
        )

    def cost(self, samples: int) -> EncoderCost:
        """FLOPs and parameters of one window of ``samples`` samples (``engine.models.fastconformer.cost``)."""
        return encoder_cost(self.loaded.config, samples)


def load(source, *, adapter=None, dtype=None) -> FastConformerEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return FastConformerEncoder(load_fastconformer(source, dtype=jnp.float32 if dtype is None else dtype))
