"""Voxtral Realtime's audio encoder behind the family interface (``engine.models.interface``), in the speech-LLM family:
the same ``--tower_output layers|final|projector`` as the other towers.

Windows and padding, declared here and never probed by a job: audio is cut into babelgrid's 30 s windows, each
featurized alone by the model's extractor (``realtime_features``: ``s // 160`` mel frames, no padding to 30 s) and
zero-padded in a batch to its longest window's mel frames, rounded up to 4 s (at most 3000:
``realtime_loaded.trimmed_collate``). The encoder is causal: a frame reads the audio up to it only, so a window's
frames never depend on its batch mates or on the padding. Its attention is a sliding window of 750 frames (15 s;
``features``' ``attention_window_frames``): inside a 30 s window a frame past 15 s no longer sees the window's start.
A window restarts the positions (RoPE) and the causal context at 0, so the audio past 30 s of a long clip is encoded
without the 15 s before it, which transformers' whole-clip (or streaming) pass would give it (``--long_audio window``
cuts as every family does). Frames: 50/s (20 ms) for the layers and the tower's output, 12.5/s (80 ms) for the
projector's. A plan counts each window as a full 3000-frame batch row (``pads_windows``), the bound a batch with a
window over 24 s reaches.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from engine.errors import AudioError
from engine.models.interface import EncoderCost
from engine.models.speechllm.calls import signatures
from engine.models.speechllm.realtime_loaded import (
    MIN_SAMPLES,
    WINDOW_MEL_FRAMES,
    WINDOW_SAMPLES,
    LoadedRealtime,
    load_realtime,
    trimmed_collate,
)
from engine.models.speechllm.tower import OwnFeaturesEncoder

REALTIME_LAYERS = (
    "0 = the embedder's output (two causal Conv1d, the second stride 2, each with GELU), 1..L = block outputs "
    "(causal sliding-window attention with RoPE, SwiGLU; the residual stream before any norm), L+1 = the final "
    "RMSNorm (the tower's last hidden state); 50 frames/s"
)
_INPUTS = (("mel f32[batch, n_mels, 3000]", np.float32, 3), ("mel_frames i32[batch]", np.int32, 1))


SIGNATURES = signatures(_INPUTS)


@dataclasses.dataclass(frozen=True, eq=False)
class RealtimeEncoder(OwnFeaturesEncoder):
    """A ``LoadedRealtime`` as an ``engine.models.interface.Encoder``. A window is ``(log-mel f32[n_mels, frames],
    valid mel frames)``; a head mask scales a head's output before the block's ``o_proj``."""

    SIGNATURES: ClassVar[dict] = SIGNATURES
    ALONE: ClassVar[str] = (
        "model {name!r} is Voxtral Realtime's tower saved alone, without its projector; load the full "
        "model's folder for --tower_output projector"
    )
    NO_FRAME: ClassVar[str] = "Voxtral Realtime's {output} output"
    loaded: LoadedRealtime
    window_samples: int = WINDOW_SAMPLES
    pads_windows: bool = True  # a window costs at most a 3000-frame row (``cost``): the plan's bound
    min_samples: int = MIN_SAMPLES  # a last window under 320 samples gives no frame and is dropped

    @property
    def layer_meaning(self) -> str:
        rate = f"{self.frame_rate:g} frames/s"
        if self.output == "final":
            return f"0 = the tower's output (the final RMSNorm after block L), {rate}"
        if self.output == "projector":
            return f"0 = the projector's output (4 frames joined, linear_1, GELU, linear_2): what the LLM reads, {rate}"
        return REALTIME_LAYERS

    @property
    def frame_rate(self) -> float:
        rate = 1.0 / self.loaded.seconds_per_frame
        return rate / self.loaded.config.group if self.output == "projector" else rate

    @property
    def embed(self) -> int:
        c = self.loaded.config
        return c.text_width if self.output == "projector" else c.width

    @property
    def features(self) -> dict:
        c = self.loaded.config
        return {**self.loaded.feature_settings.to_dict(), "model": c.kind, "window_samples": WINDOW_SAMPLES,
                "window_mel_frames": WINDOW_MEL_FRAMES, "attention_window_frames": c.window,
                "attention": "causal"}  # fmt: skip

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]:
        """``f32[samples]`` -> ((log-mel, valid mel frames) per window, this output's valid frames per window)."""
        if len(samples) < MIN_SAMPLES:
            raise AudioError(
                f"{len(samples)} samples give no frame of Voxtral Realtime's encoder (needs {MIN_SAMPLES})"
            )
        return super().windows(samples, long_audio)

    def collate(self, inputs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, n_mels, frames], valid i32[batch_size])``, cut to the batch's longest
        window in 4 s steps (``realtime_loaded.trimmed_collate``); padding rows: zeros, 0 valid."""
        return trimmed_collate(inputs, batch_size)

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 3000-frame row whatever ``samples``) and parameters."""
        self._check_window(samples)
        c = self.loaded.config
        w, a, f = c.width, c.attention_width, c.ffn
        m, t = WINDOW_MEL_FRAMES, WINDOW_MEL_FRAMES // 2
        front = 2 * 3 * c.n_mels * w * m + 2 * 3 * w * w * t
        keys = t * t  # accelerators run the whole window masked to the band (CPU: 1000 keys a query, fewer)
        layer = 2 * t * (4 * w * a + 3 * w * f) + 2 * 2 * keys * a
        projection = (c.text_width * (w * c.group + c.text_width)) if c.has_projector else 0
        params = 3 * w * (c.n_mels + w) + 3 * w + c.layers * (4 * w * a + 2 * a + 3 * w * f + 4 * w) + projection
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=t, n_head=c.heads, params=params,
                           input_bytes=4 * c.n_mels * m)  # fmt: skip


def load(source, *, adapter=None, dtype=None, output: str = "layers") -> RealtimeEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return RealtimeEncoder(load_realtime(source, dtype=jnp.float32 if dtype is None else dtype), output)
