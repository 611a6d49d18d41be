"""The USM Conformer (Gemma 3n's and Gemma 4's audio tower) behind the family interface (``engine.models.interface``),
in the speech-LLM family: the same ``--tower_output layers|final|projector`` as the other towers.

Windows and padding, declared here and never probed by a job: audio is cut into babelgrid's 30 s windows (the
feature extractor's own ``max_length``), each featurized alone by the model's extractor (``usm_features``: 3n's or
4's settings, padded to a multiple of 128 samples), so a window's frames never depend on its batch mates; a batch
zero-pads each window's log-mel to 3000 frames and masks the frames past it. The tower attends within chunks of 12
frames (480 ms) over the 12 frames before each chunk (``features``' ``attention_chunk_frames``, ``attention_left``);
it is causal, so a window's frames depend only on that window's audio up to them. Frames: 25/s (40 ms) for the
layers and Gemma 4's output; 3n's output and projector keep every 4th (6.25/s). A window costs its 3000-frame batch
row whatever its length (``pads_windows``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from engine.models.interface import EncoderCost
from engine.models.speechllm.calls import signatures
from engine.models.speechllm.tower import OwnFeaturesEncoder
from engine.models.speechllm.usm_features import MAX_SAMPLES
from engine.models.speechllm.usm_loaded import WINDOW_MEL_FRAMES, LoadedUsm, load_usm

USM_LAYERS = (
    "0 = the subsampler's output (two stride-2 Conv2d over time and mel, each normed and ReLU'd, input_proj_linear), "
    "1..L = conformer block outputs (each after its block's final RMSNorm); 25 frames/s"
)
_INPUTS = (("mel f32[batch, 3000, n_mels]", np.float32, 3), ("valid i32[batch]", np.int32, 1))


SIGNATURES = signatures(_INPUTS)


@dataclasses.dataclass(frozen=True, eq=False)
class UsmEncoder(OwnFeaturesEncoder):
    """A ``LoadedUsm`` as an ``engine.models.interface.Encoder``. A window is ``(log-mel f32[frames, n_mels], valid
    mel frames)``; a head mask scales a head's output before the block's ``post`` projection."""

    SIGNATURES: ClassVar[dict] = SIGNATURES
    ALONE: ClassVar[str] = (
        "model {name!r} is a Gemma audio tower saved alone, without embed_audio; load the full model's "
        "folder for --tower_output projector"
    )
    NO_FRAME: ClassVar[str] = "the Gemma audio tower ({output})"
    loaded: LoadedUsm
    window_samples: int = MAX_SAMPLES
    pads_windows: bool = True  # every window runs as a 3000-frame row (``cost``)

    @property
    def min_samples(self) -> int:
        return self.loaded.min_samples

    @property
    def layer_meaning(self) -> str:
        c, rate = self.loaded.config, f"{self.frame_rate:g} frames/s"
        if self.output == "final":
            how = "output_proj of block L" if c.has_output_proj else f"block L's every {c.reduction}th frame"
            return f"0 = the tower's output ({how}), {rate}"
        if self.output == "projector":
            return f"0 = embed_audio's output (norm, projection to the text width): the frames the LLM reads, {rate}"
        return USM_LAYERS

    @property
    def frame_rate(self) -> float:
        rate = 1.0 / self.loaded.seconds_per_frame
        return rate if self.output == "layers" else rate / self.loaded.config.reduction

    @property
    def embed(self) -> int:
        c = self.loaded.config
        return {"layers": c.width, "final": c.final_width, "projector": c.text_width}[self.output]

    @property
    def features(self) -> dict:
        c = self.loaded.config
        return {**self.loaded.feature_settings.to_dict(), "model": c.kind, "window_mel_frames": WINDOW_MEL_FRAMES,
                "attention_chunk_frames": c.chunk, "attention_left": c.past,
                "attention_distances": c.distances}  # fmt: skip

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 3000-frame row whatever ``samples``) and parameters."""
        self._check_window(samples)
        c, w = self.loaded.config, self.loaded.config.width
        (c0, c1), t1, t = c.conv_channels, WINDOW_MEL_FRAMES // 2, WINDOW_MEL_FRAMES // 4
        front = 2 * 9 * c0 * t1 * (c.n_mels // 2) + 2 * 9 * c0 * c1 * t * c.sub_mels + 2 * c1 * c.sub_mels * w * t
        u = -(-t // c.chunk) * c.chunk
        layer = 2 * t * (8 * w * w + 4 * w * w + 3 * w * w + 8 * w * w) + 2 * 3 * u * c.context * w
        params = 9 * (c0 + c0 * c1) + c0 + c1 + c1 * c.sub_mels * w + c.layers * (
            24 * w * w + 9 * w + c.head_dim + c.conv_kernel * w
        )  # fmt: skip
        params += c.output_dim * (w + 1) if c.has_output_proj else 0
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=t, n_head=c.heads, params=params,
                           input_bytes=4 * c.n_mels * WINDOW_MEL_FRAMES)  # fmt: skip


def load(source, *, adapter=None, dtype=None, output: str = "layers") -> UsmEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return UsmEncoder(load_usm(source, dtype=jnp.float32 if dtype is None else dtype), output)
