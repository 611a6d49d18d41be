"""Voxtral Realtime's audio encoder behind the family interface (``engine.models.interface``), in the speech-LLM family:
the same ``--tower_output layers|final|projector`` as the other towers.

Windows and padding, declared here and never probed by a job: audio is cut into babelgrid's 30 s windows, each
featurized alone by the model's extractor (``realtime_features``: ``s // 160`` mel frames, no padding to 30 s) and
zero-padded to 3000 mel frames in a batch. The encoder is causal: a frame reads the audio up to it only, so a window's
frames never depend on its batch mates or on the padding. Its attention is a sliding window of 750 frames (15 s;
``features``' ``attention_window_frames``): inside a 30 s window a frame past 15 s no longer sees the window's start.
A window restarts the positions (RoPE) and the causal context at 0, so the audio past 30 s of a long clip is encoded
without the 15 s before it, which transformers' whole-clip (or streaming) pass would give it (``--long_audio window``
cuts as every family does). Frames: 50/s (20 ms) for the layers and the tower's output, 12.5/s (80 ms) for the
projector's. A window costs its 3000-frame batch row whatever its length (``pads_windows``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.errors import AudioError, CheckpointError
from engine.models.common.heads import HeadMasked
from engine.models.common.parallel import ShardedEncoder
from engine.models.interface import EncoderCost, FamilyDims, LoadedEncoder, window_frames
from engine.models.speechllm.calls import check_output, masked, signatures
from engine.models.speechllm.realtime_loaded import (
    MIN_SAMPLES,
    WINDOW_MEL_FRAMES,
    WINDOW_SAMPLES,
    LoadedRealtime,
    collate,
    load_realtime,
)

REALTIME_LAYERS = (
    "0 = the embedder's output (two causal Conv1d, the second stride 2, each with GELU), 1..L = block outputs "
    "(causal sliding-window attention with RoPE, SwiGLU; the residual stream before any norm), L+1 = the final "
    "RMSNorm (the tower's last hidden state); 50 frames/s"
)
_INPUTS = (("mel f32[batch, n_mels, 3000]", np.float32, 3), ("mel_frames i32[batch]", np.int32, 1))


SIGNATURES = signatures(_INPUTS)


@dataclasses.dataclass(frozen=True, eq=False)
class RealtimeEncoder(LoadedEncoder):
    """A ``LoadedRealtime`` as an ``engine.models.interface.Encoder``. A window is ``(log-mel f32[n_mels, frames],
    valid mel frames)``."""

    loaded: LoadedRealtime
    output: str = "layers"
    family: str = "speechllm"
    window_samples: int = WINDOW_SAMPLES
    pads_windows: bool = True  # every window runs as a 3000-frame row (``cost``)
    min_samples: int = MIN_SAMPLES  # a last window under 320 samples gives no frame and is dropped
    ffn_counts = None  # the neurons job's feed-forward counts: not offered yet
    ffn_scaled_sums = None
    attention_stats = None  # the heads job's attention statistics: not offered (sliding-window attention)
    value_zeroing = None  # blocks re-run with value vectors zeroed: not offered

    def __post_init__(self):
        check_output(
            self.output,
            self.loaded.config.has_projector,
            f"model {self.name!r} is Voxtral Realtime's tower saved alone, without its projector; load the full "
            "model's folder for --tower_output projector",
        )

    @property
    def layer_meaning(self) -> str:
        rate = f"{self.frame_rate:g} frames/s"
        if self.output == "final":
            return f"0 = the tower's output (the final RMSNorm after block L), {rate}"
        if self.output == "projector":
            return f"0 = the projector's output (4 frames joined, linear_1, GELU, linear_2): what the LLM reads, {rate}"
        return REALTIME_LAYERS

    @property
    def store_dims(self) -> FamilyDims:
        config = {**self.loaded.config.to_dict(), "output": self.output}
        return FamilyDims.from_dict({"n_layers_out": self.n_layers_out, "embed": self.embed, "config": config})

    @property
    def frame_rate(self) -> float:
        rate = 1.0 / self.loaded.seconds_per_frame
        return rate / self.loaded.config.group if self.output == "projector" else rate

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out if self.output == "layers" else 1

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
        inputs = self.loaded.features(samples, long_audio)
        kept = self.loaded.frames(np.asarray([v for _, v in inputs]), self.output)
        if not kept.sum():
            raise AudioError(f"{len(samples)} samples give no frame of Voxtral Realtime's {self.output} output")
        return inputs, kept

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        def frames(s: int) -> int:
            return int(self.loaded.frames(self.loaded.feature_settings.mel_frames(s), self.output))

        return window_frames(samples, long_audio, frames, self.min_samples, WINDOW_SAMPLES)

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, n_mels, 3000], mel_frames i32[batch_size])``; padding rows: zeros, 0
        frames."""
        return collate(inputs, batch_size)

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(mel, mel_frames)`` batches; a head's
        output is scaled before the block's ``o_proj``."""
        if self.output != "layers":
            raise CheckpointError(f"head masks score the tower's layers; this encoder outputs {self.output!r}")
        c = self.loaded.config
        return HeadMasked(self.loaded.model, masked, c.layers, c.heads, tuple(layers))

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        signature = SIGNATURES[self.output]
        return ShardedEncoder(self.loaded.model, signature, mesh, layers=tuple(layers), out_dtype=out_dtype)

    def cost(self, samples: int) -> EncoderCost:
        """One window's FLOPs (a full 3000-frame row whatever ``samples``) and parameters."""
        if not 0 <= samples <= WINDOW_SAMPLES:
            raise ValueError(f"a window holds 0..{WINDOW_SAMPLES} samples, got {samples}")
        c = self.loaded.config
        w, a, f = c.width, c.attention_width, c.ffn
        m, t = WINDOW_MEL_FRAMES, WINDOW_MEL_FRAMES // 2
        front = 2 * 3 * c.n_mels * w * m + 2 * 3 * w * w * t
        keys = t * t  # the attention runs over the whole window, masked to the band
        layer = 2 * t * (4 * w * a + 3 * w * f) + 2 * 2 * keys * a
        projection = (c.text_width * (w * c.group + c.text_width)) if c.has_projector else 0
        params = 3 * w * (c.n_mels + w) + 3 * w + c.layers * (4 * w * a + 2 * a + 3 * w * f + 4 * w) + projection
        return EncoderCost(front=front, layer=layer, n_layers=c.layers, frames=t, n_head=c.heads, params=params,
                           input_bytes=4 * c.n_mels * m)  # fmt: skip

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """None: the family has no decoder here (the LLM's text decoder is out of scope)."""
        del langs
        return []


def load(source, *, adapter=None, dtype=None, output: str = "layers") -> RealtimeEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    return RealtimeEncoder(load_realtime(source, dtype=jnp.float32 if dtype is None else dtype), output)
