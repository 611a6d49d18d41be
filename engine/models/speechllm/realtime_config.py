"""Voxtral Realtime's audio encoder (``VoxtralRealtimeEncoder``, Voxtral Mini 4B Realtime), as transformers 5 builds
it; its modeling file (``models/voxtral_realtime``) was read for this port. Not Whisper's block, unlike Voxtral's:

- **Embedder**: two *causal* ``Conv1d(k3)`` over the log-mel (``embedder.conv1``: n_mels -> width, stride 1;
  ``embedder.conv2``: stride 2, left padding 1), each followed by GELU: 100 mel frames/s -> 50 frames/s (20 ms). Frame
  ``j`` reads mel frames ``2j - 3 .. 2j + 1``; a clip of ``m`` mel frames has ``m // 2`` frames. No positions are
  added: the blocks rotate queries and keys instead.
- **Blocks** (32 x 1280, 32 heads of 64: the attention is 2048 wide, not 1280): pre-RMSNorm (``self_attn_layer_norm``),
  attention with rotary positions (RoPE, ``rope_theta``, the halves rotated, positions 0.. from the clip's first
  frame), a biased query, value and output and an unbiased key, *causal within a sliding window* of
  ``sliding_window`` frames (750: 15 s; a frame attends to itself and the 749 before it); then RMSNorm
  (``final_layer_norm``) and a SwiGLU feed-forward (``down_proj(silu(gate_proj(x)) * up_proj(x))``, 5120, only
  ``down_proj`` biased). After the blocks, ``norm`` (RMSNorm): the tower's last hidden state.
- **Projector** (``VoxtralRealtimeModel.get_audio_features``): 4 consecutive frames (``downsample_factor``) joined into
  one of 4 x width values, then ``multi_modal_projector.linear_1``, ``projector_hidden_act`` (GELU), ``linear_2``, no
  biases: 12.5 frames/s, what the LLM reads.

Everything is causal: a frame depends only on the audio up to it (and the STFT's 10 ms look-ahead), so padding a
clip at its end never changes its frames.

``from_hf`` reads the full model's ``config.json`` (``voxtral_realtime``: ``audio_config``, ``text_config``) or the
tower's own (``voxtral_realtime_encoder``: no projector).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.errors import CheckpointError
from engine.models.speechllm.tower_checkpoints import audio_value as _get

FULL_TYPE, TOWER_TYPE = "voxtral_realtime", "voxtral_realtime_encoder"
MODEL_TYPES = (FULL_TYPE, TOWER_TYPE)
HUB_IDS = ("mistralai/Voxtral-Mini-4B-Realtime-2602",)
HUB_NAMES = r"voxtral.*realtime"  # hub repositories of this tower, by name (lower case)
KIND = "voxtral_realtime"
CONV_STRIDE = 2  # embedder.conv2: 2 mel frames per frame


@dataclasses.dataclass(frozen=True)
class RealtimeConfig:
    n_mels: int
    width: int  # hidden_size
    heads: int
    head_dim: int  # 64: the attention is heads * head_dim wide (2048), not width
    layers: int
    ffn: int  # intermediate_size
    window: int  # sliding_window: keys per query, itself included (750 frames)
    rope_theta: float
    norm_eps: float  # rms_norm_eps
    text_width: int | None = None  # the projector's output (None: the tower saved alone)
    group: int = 4  # downsample_factor: frames joined before the projector
    kind: str = KIND

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def has_projector(self) -> bool:
        return self.text_width is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def encoder_frames(mel_frames):
    """Frames of the blocks (50/s) of ``mel_frames`` mel frames (``embedder.conv2``: causal, stride 2)."""
    return np.asarray(mel_frames, np.int64) // CONV_STRIDE


def from_hf(config: dict) -> RealtimeConfig:
    """The tower's config from a Voxtral Realtime ``config.json`` (the full model's ``audio_config``, or the tower's
    own); transformers' defaults fill what a config leaves out, as its config classes do."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not Voxtral Realtime's: {MODEL_TYPES}")
    alone = model_type == TOWER_TYPE
    audio = config if alone else config.get("audio_config")
    if not isinstance(audio, dict):
        raise CheckpointError(f"config.json ({model_type}) has no audio_config: the model has no audio tower")
    rope = audio.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type {rope['rope_type']!r}: babelgrid reads Voxtral Realtime's default RoPE only")
    for name, want in (("activation_function", "gelu"), ("hidden_act", "silu")):
        if _get(audio, name, want) != want:
            raise CheckpointError(
                f"{name} {audio[name]!r}: babelgrid reads Voxtral Realtime's encoder with {want} only"
            )
    width, heads = int(_get(audio, "hidden_size", 1280)), int(_get(audio, "num_attention_heads", 32))
    if audio.get("num_key_value_heads") not in (None, heads):
        raise CheckpointError("num_key_value_heads differs from num_attention_heads: not Voxtral Realtime's encoder")
    c = dict(
        n_mels=int(_get(audio, "num_mel_bins", 128)), width=width, heads=heads,
        head_dim=int(_get(audio, "head_dim", width // heads)), layers=int(_get(audio, "num_hidden_layers", 32)),
        ffn=int(_get(audio, "intermediate_size", 5120)), window=int(_get(audio, "sliding_window", 750)),
        rope_theta=float(rope.get("rope_theta") or _get(audio, "rope_theta", 10000.0)),
        norm_eps=float(_get(audio, "rms_norm_eps", 1e-5)),
    )  # fmt: skip
    if c["window"] <= 0:
        raise CheckpointError(
            f"sliding_window {c['window']}: babelgrid reads Voxtral Realtime's windowed attention only"
        )
    if alone:
        return RealtimeConfig(**c)
    text = config.get("text_config") or {}
    if "hidden_size" not in text:
        raise CheckpointError("config.json's text_config has no hidden_size: the projector's width is unknown")
    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"projector_hidden_act {act!r}: babelgrid reads Voxtral Realtime's projector with gelu")
    group = int(config.get("downsample_factor", 4))
    return RealtimeConfig(**c, text_width=int(text["hidden_size"]), group=group)
