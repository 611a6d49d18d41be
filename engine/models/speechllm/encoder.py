"""The speech LLMs' audio towers behind the family interface (``engine.models.interface``).

Input: Whisper's 30 s log-mel windows (``engine.models.common.logmel``, 128 mels), each window with its valid encoder
frames: Qwen2-Audio and Audio Flamingo 3 mask the keys past them, as their processors' ``feature_attention_mask``
makes them do; Voxtral attends over the whole window, as Whisper does. Layers: ``SPEECHLLM_LAYERS``. Every window
costs a full 30 s one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.models.common import logmel
from engine.models.common.parallel import ShardedEncoder, Signature
from engine.models.interface import SPEECHLLM_LAYERS, EncoderCost, FamilyDims
from engine.models.speechllm.loaded import LoadedSpeechLLM, load_speechllm


def _encode(model, mel, frames, *, layers, out_dtype):
    return model(mel, frames, layers, out_dtype)


SIGNATURE = Signature(_encode, (("mel f32[batch, n_mels, 3000]", np.float32, 3), ("frames i32[batch]", np.int32, 1)))


@dataclasses.dataclass(frozen=True, eq=False)
class SpeechLLMEncoder:
    """A ``LoadedSpeechLLM`` as an ``engine.models.interface.Encoder``. A window is ``(mel f32[n_mels, 3000], valid
    frames)``."""

    loaded: LoadedSpeechLLM
    family: str = "speechllm"
    layer_meaning: str = SPEECHLLM_LAYERS
    heads: frozenset = frozenset()

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def sha256(self) -> str:
        return self.loaded.checkpoint.sha256

    @property
    def store_dims(self) -> FamilyDims:
        c = self.loaded.config
        return FamilyDims.from_dict({"n_layers_out": self.n_layers_out, "embed": c.width, "config": c.to_dict()})

    @property
    def frame_rate(self) -> float:
        return logmel.FRAME_RATE

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out

    @property
    def embed(self) -> int:
        return self.loaded.config.width

    @property
    def features(self) -> dict:
        return {**logmel.FEATURES, "n_mels": self.loaded.config.n_mels, "model": self.loaded.config.kind,
                "key_mask": "valid frames" if self.loaded.config.masked else "none"}  # fmt: skip

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]:
        mel, frames = logmel.features_for_audio(samples, self.loaded.config.n_mels, long_audio)
        return [(m, int(f)) for m, f in zip(mel, frames, strict=True)], frames

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        n = min(int(samples), audio_lib.N_SAMPLES) if long_audio == "truncate" else int(samples)
        full, rest = divmod(n, audio_lib.N_SAMPLES)
        frames = full * logmel.N_ENCODER_FRAMES + (int(logmel.encoder_frames(rest)) if rest else 0)
        return frames, max(1, -(-frames // logmel.N_ENCODER_FRAMES))

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, n_mels, 3000], frames i32[batch_size])``; padding rows: silence, 0
        frames."""
        first = inputs[0][0]
        mel = np.full((batch_size, *first.shape), first.min(), np.float32)
        frames = np.zeros(batch_size, np.int32)
        for i, (m, f) in enumerate(inputs):
            mel[i], frames[i] = m, f
        return mel, frames

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        return ShardedEncoder(self.loaded.model, SIGNATURE, mesh, layers=tuple(layers), out_dtype=out_dtype)

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 30 s one whatever ``samples``: the window is padded) and parameters."""
        if not 0 <= samples <= audio_lib.N_SAMPLES:
            raise ValueError(f"a window holds 0..{audio_lib.N_SAMPLES} samples, got {samples}")
        c, t = self.loaded.config, logmel.N_ENCODER_FRAMES
        front = 2 * 3 * c.n_mels * c.width * 2 * t + 2 * 3 * c.width * c.width * t
        layer = 2 * t * (4 * c.width * c.width + 2 * c.width * c.ffn) + 2 * 2 * t * t * c.width
        params = 3 * c.width * (c.n_mels + c.width) + c.n_ctx * c.width + c.layers * (
            4 * c.width * c.width + 2 * c.width * c.ffn + 9 * c.width + c.ffn
        )  # fmt: skip
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=t, n_head=c.heads, params=params,
                           input_bytes=4 * c.n_mels * 2 * t)  # fmt: skip

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """None: the family has no decoder here (a speech LLM's text decoder is out of scope)."""
        del langs
        return []


def load(source, *, adapter=None, dtype=None) -> SpeechLLMEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return SpeechLLMEncoder(load_speechllm(source, dtype=jnp.float32 if dtype is None else dtype))
