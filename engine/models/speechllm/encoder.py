"""The speech LLMs' audio towers behind the family interface (``engine.models.interface``).

Input: Whisper's 30 s log-mel windows (``engine.models.common.logmel``, 128 mels), each window with its valid encoder
frames: Qwen2-Audio and Audio Flamingo 3 mask the keys past them, as their processors' ``feature_attention_mask``
makes them do; Voxtral attends over the whole window, as Whisper does. Layers: ``SPEECHLLM_LAYERS``. Every window
costs a full 30 s one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.models.common import logmel
from engine.models.interface import SPEECHLLM_LAYERS, EncoderCost
from engine.models.speechllm import qwen3_encoder, realtime_encoder, usm_encoder
from engine.models.speechllm.calls import signatures
from engine.models.speechllm.loaded import LoadedSpeechLLM, load_speechllm
from engine.models.speechllm.qwen3_checkpoints import is_qwen3
from engine.models.speechllm.realtime_checkpoints import is_voxtral_realtime
from engine.models.speechllm.tower import WhisperWindowsEncoder
from engine.models.speechllm.usm_checkpoints import is_usm

_INPUTS = (("mel f32[batch, n_mels, 3000]", np.float32, 3), ("frames i32[batch]", np.int32, 1))


SIGNATURES = signatures(_INPUTS)


def store_depth(dims) -> Callable[[int], float]:
    """Each layer's place on compare's depth axis in a store of the family (``dims``: its ``StoreDims``, whose
    ``config`` records the tower's blocks L, ``layers``, and its ``output``). The tower counts its blocks as Whisper
    does, ``layer / (L + 1)``: Voxtral's final norm (L + 1) sits at 1 as Whisper's ``ln_post`` does, Qwen2-Audio's
    last block at L / (L + 1). A tower-output store sits past the blocks: the final output at 1, the projector one
    block further, ``1 + 1 / (L + 1)``."""
    config = dims.record.get("config") or {}
    output = config.get("output", "layers")
    if output == "layers":
        blocks = int(config["layers"]) if "output" in config else dims.n_blocks
        return lambda layer: layer / (blocks + 1)
    past = 1.0 / (int(config["layers"]) + 1) if output == "projector" else 0.0
    return lambda layer: 1.0 + past


@dataclasses.dataclass(frozen=True, eq=False)
class SpeechLLMEncoder(WhisperWindowsEncoder):
    """A ``LoadedSpeechLLM`` as an ``engine.models.interface.Encoder``. A window is ``(mel f32[n_mels, 3000], valid
    frames)``."""

    SIGNATURES: ClassVar[dict] = SIGNATURES
    ALONE: ClassVar[str] = (
        "model {name!r} is an audio tower saved alone: it has no projector; load the full speech LLM's "
        "folder for --tower_output projector"
    )
    NO_FRAME: ClassVar[str] = "the {output} output ({rate:g} frames/s)"
    loaded: LoadedSpeechLLM
    window_samples: int = audio_lib.N_SAMPLES
    pads_windows: bool = True  # every window is 30 s of log-mel, and costs a full one (``cost``)
    min_samples: int = 0  # every last window is kept, as Whisper's (``logmel.features_for_audio``)

    @property
    def layer_meaning(self) -> str:
        c = self.loaded.config
        if self.output == "final":
            how = "pooled by 2 and normed" if c.pooled else "normed"
            return f"0 = the tower's final output ({how}, {self.frame_rate:g} frames/s)"
        if self.output == "projector":
            return f"0 = the projector's output: the frames the LLM reads ({self.frame_rate:g} frames/s)"
        return SPEECHLLM_LAYERS

    def _frames(self, encoder_frames: np.ndarray) -> np.ndarray:
        """Valid frames of this output from a window's valid 50/s frames (as transformers counts them)."""
        f = np.asarray(encoder_frames, np.int64)
        if self.output != "layers" and self.loaded.config.pooled:
            f = np.where(f >= 2, (f - 2) // 2 + 1, 0)
        if self.output == "projector":
            f = f // self.loaded.config.group
        return f.astype(np.int32)

    @property
    def frame_rate(self) -> float:
        c = self.loaded.config
        rate = logmel.FRAME_RATE / (2 if self.output != "layers" and c.pooled else 1)
        return rate / (c.group if self.output == "projector" else 1)

    @property
    def embed(self) -> int:
        c = self.loaded.config
        return c.text_width if self.output == "projector" else c.width

    @property
    def features(self) -> dict:
        return {**logmel.FEATURES, "n_mels": self.loaded.config.n_mels, "model": self.loaded.config.kind,
                "key_mask": "valid frames" if self.loaded.config.masked else "none"}  # fmt: skip

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        n = min(int(samples), audio_lib.N_SAMPLES) if long_audio == "truncate" else int(samples)
        full, rest = divmod(n, audio_lib.N_SAMPLES)
        per_window = [logmel.N_ENCODER_FRAMES] * full + ([int(logmel.encoder_frames(rest))] if rest else [])
        return int(self._frames(np.asarray(per_window or [0])).sum()), max(1, len(per_window))

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 30 s one whatever ``samples``: the window is padded) and parameters."""
        self._check_window(samples)
        c, t = self.loaded.config, logmel.N_ENCODER_FRAMES
        front = 2 * 3 * c.n_mels * c.width * 2 * t + 2 * 3 * c.width * c.width * t
        layer = 2 * t * (4 * c.width * c.width + 2 * c.width * c.ffn) + 2 * 2 * t * t * c.width
        params = 3 * c.width * (c.n_mels + c.width) + c.n_ctx * c.width + c.layers * (
            4 * c.width * c.width + 2 * c.width * c.ffn + 9 * c.width + c.ffn
        )  # fmt: skip
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=t, n_head=c.heads, params=params,
                           input_bytes=4 * c.n_mels * 2 * t)  # fmt: skip


def load(source, *, adapter=None, dtype=None, output: str = "layers") -> SpeechLLMEncoder:
    """The tower of a speech LLM's folder or hub id; a Qwen3-ASR or Qwen3-Omni one is ``qwen3_encoder``'s, a Gemma 3n
    or Gemma 4 one ``usm_encoder``'s, a Voxtral Realtime one ``realtime_encoder``'s."""
    if is_voxtral_realtime(source):
        return realtime_encoder.load(source, dtype=dtype, output=output)
    if is_qwen3(source):
        return qwen3_encoder.load(source, dtype=dtype, output=output)
    if is_usm(source):
        return usm_encoder.load(source, dtype=dtype, output=output)
    del adapter  # refused by engine.models.family.load_encoder
    return SpeechLLMEncoder(load_speechllm(source, dtype=jnp.float32 if dtype is None else dtype), output)
