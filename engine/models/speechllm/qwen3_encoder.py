"""The Qwen3 audio tower (Qwen3-ASR, Qwen3-Omni) behind the family interface (``engine.models.interface``), in the
speech-LLM family: the same ``--tower_output layers|final|projector`` as the other towers.

Windows and padding, declared here and never probed by a job: audio is cut into babelgrid's 30 s windows, each
Whisper's 30 s log-mel (as Qwen3-ASR's feature extractor pads and computes it) with its valid mel frames
(``qwen3_loaded.mel_frames``: at least 50, the extractor's 0.5 s minimum). Inside a window the tower chunks the mel
into 1 s pieces and attends within 8 s windows (``attention_window_frames`` in ``features``); a 30 s window is 3.75
attention windows, so the audio past 24 s of a clip over 30 s is attended with the next 30 s window's frames in
transformers' long-form call and not here (``--long_audio window`` cuts as every family does). Frames: 13 per 1 s
chunk, the last chunk's ``ceil(mel frames / 8)``; ``frame_rate`` 13/s (each frame 1/13 s apart on average: within a
chunk they are 80 ms apart). A batch runs the attention windows its longest window needs (``collate``:
``qwen3_loaded.trimmed``); a plan counts a full 30 s window, the bound (``pads_windows``). Qwen2.5-Omni's tower
(``qwen3_config``) stores its stem and blocks at 50/s (attention within 2 s chunks); its ``final`` and ``projector``
outputs are pooled to 25/s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.models.common import logmel
from engine.models.interface import EncoderCost
from engine.models.speechllm.calls import signatures
from engine.models.speechllm.qwen3_config import frames_of, pooled_frames
from engine.models.speechllm.qwen3_loaded import LoadedQwen3Audio, load_qwen3_audio, mel_frames, trimmed
from engine.models.speechllm.tower import WhisperWindowsEncoder

QWEN3_LAYERS = (
    "0 = the downsampler's output (3 stride-2 Conv2d over 1 s chunks, conv_out, positions), 1..L = block outputs "
    "(attention within 8 s windows), L+1 = ln_post output; 13 frames/s"
)
QWEN25_OMNI_LAYERS = (
    "0 = conv stem + positions over 2 s chunks, 1..L = block outputs (attention within each 2 s chunk); 50 frames/s; "
    "ln_post runs after pooling pairs (--tower_output final, 25 frames/s)"
)
_INPUTS = (("mel f32[batch, n_mels, 3000]", np.float32, 3), ("mel_frames i32[batch]", np.int32, 1))


SIGNATURES = signatures(_INPUTS)


@dataclasses.dataclass(frozen=True, eq=False)
class Qwen3AudioEncoder(WhisperWindowsEncoder):
    """A ``LoadedQwen3Audio`` as an ``engine.models.interface.Encoder``. A window is ``(mel f32[n_mels, 3000], valid
    mel frames)``."""

    SIGNATURES: ClassVar[dict] = SIGNATURES
    ALONE: ClassVar[str] = (
        "model {name!r} is transformers' Qwen3-ASR tower saved alone, without its projector; load the "
        "full model's folder for --tower_output projector"
    )
    NO_FRAME: ClassVar[str] = "the Qwen3 audio tower"
    loaded: LoadedQwen3Audio
    window_samples: int = audio_lib.N_SAMPLES
    pads_windows: bool = True  # a window costs at most a 30 s one, all its chunks (``cost``): the plan's bound
    min_samples: int = 0  # every last window is kept: one of under 0.5 s is padded to 0.5 s, as the extractor does

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, n_mels, frames], valid mel frames i32[batch_size])``, cut to the
        attention windows the batch's longest window needs (``qwen3_loaded.trimmed``): at most 3000 mel frames, so
        at most 4 compiled shapes a job (800, 1600, 2400, 3000)."""
        return trimmed(self.loaded.config, *super().collate(inputs, batch_size))

    @property
    def layer_meaning(self) -> str:
        c, rate = self.loaded.config, f"{self.frame_rate:g} frames/s"
        if self.output == "final":
            return f"0 = the tower's final output ({'frame pairs pooled, ' if c.pooled else ''}ln_post), {rate}"
        if self.output == "projector":
            how = "proj" if c.pooled else "proj1, GELU, proj2"
            return f"0 = the projector's output ({how}): the frames the LLM reads, {rate}"
        return QWEN25_OMNI_LAYERS if c.pooled else QWEN3_LAYERS

    @property
    def frame_rate(self) -> float:
        c = self.loaded.config  # a chunk's frames over its seconds: 13 per 100 mel frames of 10 ms (Qwen2.5: 100/200)
        rate = c.chunk_frames / (c.chunk * logmel.HOP_LENGTH / audio_lib.SAMPLE_RATE)
        return rate / 2 if c.pooled and self.output != "layers" else rate

    def _frames(self, mel_frames_: np.ndarray) -> np.ndarray:
        """This output's valid frames of windows of ``mel_frames_`` valid mel frames."""
        frames = self.loaded.frames(mel_frames_)
        return pooled_frames(frames) if self.loaded.config.pooled and self.output != "layers" else frames

    @property
    def embed(self) -> int:
        c = self.loaded.config
        return c.output_dim if self.output == "projector" else c.width

    @property
    def features(self) -> dict:
        c = self.loaded.config
        return {**logmel.FEATURES, "n_mels": c.n_mels, "model": c.kind, "min_samples": 8000, "chunk_mel_frames":
                c.chunk, "attention_window_frames": c.window_frames, "last_chunk_padding": c.tail}  # fmt: skip

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        n = min(int(samples), audio_lib.N_SAMPLES) if long_audio == "truncate" else int(samples)
        full, rest = divmod(n, audio_lib.N_SAMPLES)
        per_window = [audio_lib.N_SAMPLES] * full + ([rest] if rest or not full else [])
        return int(self._frames(mel_frames(per_window)).sum()), len(per_window)

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 30 s one whatever ``samples``: every chunk runs) and parameters."""
        self._check_window(samples)
        c, w, f = self.loaded.config, self.loaded.config.width, self.loaded.config.ffn
        chunks, frames = logmel.N_FRAMES // c.chunk, int(frames_of(c, logmel.N_FRAMES))
        if c.conv_channels:  # Qwen3: three Conv2d and conv_out per chunk
            m, t, ch, convs = c.n_mels, c.chunk, c.conv_channels, 0
            for cin in (1, ch, ch):
                m, t = conv_length_1(m), conv_length_1(t)
                convs += 2 * 9 * cin * ch * m * t
            front = chunks * (convs + 2 * ch * c.conv_mels * w * c.chunk_frames)
            stem = 9 * ch * (1 + 2 * ch) + 3 * ch + ch * c.conv_mels * w
        else:  # Qwen2.5-Omni: conv1 at the mel rate, conv2 at half of it
            front = 2 * 3 * c.n_mels * w * logmel.N_FRAMES + 2 * 3 * w * w * frames
            stem = 3 * w * (c.n_mels + w) + 2 * w
        layer = 2 * frames * (4 * w * w + 2 * w * f) + 2 * 2 * frames * c.window_frames * w
        projection = (c.output_dim * (w + 1) + (0 if c.pooled else w * w + w)) if c.has_projector else 0
        params = stem + 2 * w + c.layers * (4 * w * w + 2 * w * f + 8 * w + c.key_bias * w + f) + projection
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=frames, n_head=c.heads,
                           params=params, input_bytes=4 * c.n_mels * logmel.N_FRAMES)  # fmt: skip


def conv_length_1(n: int) -> int:
    """One ``Conv2d(k3, s2, p1)``'s output length."""
    return (n - 1) // 2 + 1


def load(source, *, adapter=None, dtype=None, output: str = "layers") -> Qwen3AudioEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return Qwen3AudioEncoder(load_qwen3_audio(source, dtype=jnp.float32 if dtype is None else dtype), output)
