"""Google's USM Conformer, the audio encoder of Gemma 3n (``Gemma3nAudioEncoder``) and Gemma 4 E2B/E4B
(``Gemma4AudioModel``), as transformers 5 builds them; both modeling files were read for this port, and one port
covers both, since they are one architecture with a handful of differences (``UsmConfig`` records each):

- **Subsampler**: two ``Conv2d(3x3, stride 2)`` over (time, mel), each normed and ReLU'd, then
  ``input_proj_linear`` (channels x 32 mel bins -> width): 100 mel frames/s -> 25 frames/s (40 ms). Gemma 3n pads
  time on the future side only (``(0, 2)``: frame t reads mel frames 2t..2t+2) and norms with a *cumulative* group
  norm (statistics over every channel and mel bin of the frames up to t); Gemma 4 pads ``(1, 1)``, zeroes each conv's
  input past the valid frames and norms each frame with a bias-free LayerNorm.
- **Blocks** (12 in both: 1536 wide in 3n, 1024 in 4): a Macaron conformer, every piece ending in its own RMSNorm:
  half-step feed-forward (SiLU, 4x), chunked local self-attention, a light convolution (GLU, causal depthwise conv
  of 5 taps, SiLU), a second half-step feed-forward, RMSNorm. Attention runs in chunks of 12 frames, each chunk's
  queries over a context of the 12 frames before it and itself (``attention_context_left`` 13, right 0: causal);
  logits are content (query . key) plus Transformer-XL relative positions (a sinusoid of the distance 0..12,
  projected), soft-capped at 50 (``tanh``). The query is scaled by ``softplus(per_dim_scale) / sqrt(dh) / ln 2``;
  Gemma 4 also scales the key by ``softplus(1) / ln 2`` and its sliding-window mask keeps distances 0..11 (12
  keys), where Gemma 3n's keeps 0..12 (13). Gemma 4's linears clamp their input and output to bounds stored in the
  checkpoint (``use_clipped_linears``).
- **After the blocks**: Gemma 3n keeps every 4th frame (``conf_reduction_factor``: 6.25 frames/s, 160 ms), the
  tower's output; Gemma 4 maps each frame through ``output_proj`` (1024 -> 1536, biased), the tower's output at 25/s.
  What the LLM reads (``embed_audio``): 3n's RMSNorm, projection to the text width, an unscaled RMSNorm; 4's unscaled
  RMSNorm, then projection.

Frames: a window of ``s`` samples gives the feature extractor's mel frames (``usm_features``), ``v`` of them valid;
the tower keeps ``ceil(v / 4)`` frames (both models' masks, ``mask[::4]``), 3n's output ``ceil(ceil(v / 4) / 4)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from engine.errors import CheckpointError
from engine.models.speechllm.tower_checkpoints import audio_value as _get

GEMMA3N, GEMMA4 = "gemma3n", "gemma4"
# config.json model_type -> kind: the full model (its ``audio_config``) or the tower saved alone
MODEL_TYPES = {"gemma3n": GEMMA3N, "gemma3n_audio": GEMMA3N, "gemma4": GEMMA4, "gemma4_audio": GEMMA4}
TOWER_TYPES = ("gemma3n_audio", "gemma4_audio")
HUB_IDS = {
    GEMMA3N: ("google/gemma-3n-E2B-it", "google/gemma-3n-E4B-it", "google/gemma-3n-E2B", "google/gemma-3n-E4B"),
    GEMMA4: ("google/gemma-4-E2B-it", "google/gemma-4-E4B-it"),
}
HUB_NAMES = r"gemma-3n|gemma-4-e[24]b"  # hub repositories of these towers, by name (lower case)
SUBSAMPLING = 4  # two stride-2 convolutions over time
N_MELS = 128  # Gemma 4's subsampler is built for 128 mels (input_proj_linear: 128 / 4 bins x channels)


@dataclasses.dataclass(frozen=True)
class UsmConfig:
    kind: str  # gemma3n | gemma4
    n_mels: int
    width: int  # hidden_size
    heads: int
    layers: int
    conv_channels: tuple[int, int]  # the subsampler's two Conv2d
    chunk: int  # attention_chunk_size: queries per chunk
    context_left: int  # attention_context_left (13: the chunk's frame and 12 before it)
    context_right: int  # attention_context_right
    logit_cap: float
    conv_kernel: int  # the light convolution's taps
    residual_weight: float  # the half-step feed-forwards' scale
    reduction: int  # 3n's conf_reduction_factor after the blocks (Gemma 4: 1)
    norm_eps: float  # rms_norm_eps
    sub_eps: float  # the subsampler's norms: 3n's sscp_conv_group_norm_eps, 4's rms_norm_eps
    clip: float  # gradient_clipping: the clamp between the pieces of a block
    output_dim: int  # Gemma 4's output_proj width (3n: 0, none)
    clipped_linears: bool  # Gemma 4's use_clipped_linears
    text_width: int | None = None  # embed_audio's output (None: a tower saved alone)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def past(self) -> int:
        """Frames before a query's chunk in its key context (``max_past_horizon``: 12)."""
        return max(0, self.context_left - 1)

    @property
    def context(self) -> int:
        """Keys per chunk (24): the chunk, ``past`` frames before it, ``context_right`` after."""
        return self.chunk + self.past + self.context_right

    @property
    def distances(self) -> tuple[int, int]:
        """The query-minus-key distances a query attends to, ``(lo, hi)`` inclusive: 3n's local causal mask keeps
        ``-right .. past`` (0..12); Gemma 4's sliding window ``(past, right)`` keeps ``0 <= d < past`` and
        ``0 < -d < right`` (0..11)."""
        if self.kind == GEMMA3N:
            return -self.context_right, self.past
        return -max(self.context_right - 1, 0), self.past - 1

    @property
    def key_scale(self) -> float:
        """Gemma 4 scales keys by ``softplus(1) / ln 2``; 3n does not."""
        return math.log(1 + math.e) / math.log(2) if self.kind == GEMMA4 else 1.0

    @property
    def time_padding(self) -> tuple[int, int]:
        """Each subsampling conv's zero frames before and after (3n: reverse causal; 4: symmetric)."""
        return (0, 2) if self.kind == GEMMA3N else (1, 1)

    @property
    def sub_mels(self) -> int:
        """Mel bins left after the two convolutions (32 of 128)."""
        return conv_length(conv_length(self.n_mels))

    @property
    def has_output_proj(self) -> bool:
        return self.output_dim > 0

    @property
    def final_width(self) -> int:
        """The tower's output width: Gemma 4's ``output_proj``, 3n's blocks."""
        return self.output_dim or self.width

    @property
    def has_projector(self) -> bool:
        return self.text_width is not None

    # the speech-LLM encoder's questions, answered for this tower
    masked = True
    pooled = False
    group = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def conv_length(n):
    """Length after one ``Conv2d(k3, s2)`` with two frames of padding (either side): ``ceil(n / 2)``."""
    return (n + 1) // 2


def tower_frames(valid_mel):
    """Valid frames of the blocks (25/s) of ``valid_mel`` valid mel frames: ``ceil(v / 4)`` (``mask[::4]``)."""
    return -(-np.asarray(valid_mel, np.int64) // SUBSAMPLING)


def final_frames(config: UsmConfig, valid_mel):
    """Valid frames of the tower's output (3n: every ``reduction``-th frame)."""
    return -(-tower_frames(valid_mel) // config.reduction)


def from_hf(config: dict) -> UsmConfig:
    """The tower's config from a Gemma 3n or Gemma 4 ``config.json`` (the full model's ``audio_config``, or a tower
    saved alone); transformers' defaults fill what a config leaves out, as its config classes do."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not a Gemma audio model's: {sorted(MODEL_TYPES)}")
    kind, alone = MODEL_TYPES[model_type], model_type in TOWER_TYPES
    audio = config if alone else config.get("audio_config")
    if not isinstance(audio, dict):
        raise CheckpointError(f"config.json ({model_type}) has no audio_config: the model has no audio tower")
    text = None
    if not alone:
        text_config = config.get("text_config") or {}
        if "hidden_size" not in text_config:
            raise CheckpointError("config.json's text_config has no hidden_size: embed_audio's width is unknown")
        text = int(text_config["hidden_size"])
    if kind == GEMMA3N:
        for name in ("sscp_conv_kernel_size", "sscp_conv_stride_size"):
            want = [[3, 3], [3, 3]] if "kernel" in name else [[2, 2], [2, 2]]
            if [list(p) for p in audio.get(name) or want] != want:
                raise CheckpointError(f"{name} {audio[name]}: babelgrid reads Gemma 3n's subsampler as {want} only")
        c = dict(
            n_mels=int(_get(audio, "input_feat_size", 128)), width=int(_get(audio, "hidden_size", 1536)),
            heads=int(_get(audio, "conf_num_attention_heads", 8)),
            layers=int(_get(audio, "conf_num_hidden_layers", 12)),
            conv_channels=tuple(int(x) for x in _get(audio, "sscp_conv_channel_size", (128, 32))),
            chunk=int(_get(audio, "conf_attention_chunk_size", 12)),
            context_left=int(_get(audio, "conf_attention_context_left", 13)),
            context_right=int(_get(audio, "conf_attention_context_right", 0)),
            logit_cap=float(_get(audio, "conf_attention_logit_cap", 50.0)),
            conv_kernel=int(_get(audio, "conf_conv_kernel_size", 5)),
            residual_weight=float(_get(audio, "conf_residual_weight", 0.5)),
            reduction=int(_get(audio, "conf_reduction_factor", 4)), norm_eps=float(_get(audio, "rms_norm_eps", 1e-6)),
            sub_eps=float(_get(audio, "sscp_conv_group_norm_eps", 1e-3)),
            clip=float(_get(audio, "gradient_clipping", 1e10)), output_dim=0, clipped_linears=False,
        )  # fmt: skip
    else:
        act = _get(audio, "hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"hidden_act {act!r}: babelgrid reads Gemma 4's audio tower with silu only")
        eps = float(_get(audio, "rms_norm_eps", 1e-6))
        c = dict(
            n_mels=N_MELS, width=int(_get(audio, "hidden_size", 1024)),
            heads=int(_get(audio, "num_attention_heads", 8)),
            layers=int(_get(audio, "num_hidden_layers", 12)),
            conv_channels=tuple(int(x) for x in _get(audio, "subsampling_conv_channels", (128, 32))),
            chunk=int(_get(audio, "attention_chunk_size", 12)),
            context_left=int(_get(audio, "attention_context_left", 13)),
            context_right=int(_get(audio, "attention_context_right", 0)),
            logit_cap=float(_get(audio, "attention_logit_cap", 50.0)),
            conv_kernel=int(_get(audio, "conv_kernel_size", 5)),
            residual_weight=float(_get(audio, "residual_weight", 0.5)), reduction=1, norm_eps=eps, sub_eps=eps,
            clip=float(_get(audio, "gradient_clipping", 1e10)), output_dim=int(_get(audio, "output_proj_dims", 1536)),
            clipped_linears=bool(audio.get("use_clipped_linears", True)),
        )  # fmt: skip
        if c["conv_channels"][0] // 4 != conv_length(conv_length(N_MELS)):
            raise CheckpointError(
                f"subsampling_conv_channels {c['conv_channels']}: Gemma 4's input_proj_linear reads channels[0] / 4 = "
                f"{c['conv_channels'][0] // 4} mel bins, but 128 mels leave 32; restore the model's config.json"
            )
    if len(c["conv_channels"]) != 2:
        raise CheckpointError(f"the subsampler has {len(c['conv_channels'])} conv channel sizes; babelgrid reads 2")
    if c["width"] % c["heads"]:
        raise CheckpointError(f"hidden_size {c['width']} is not a multiple of the attention heads {c['heads']}")
    if c["chunk"] <= 0 or c["context_left"] < 1 or c["context_right"] < 0 or c["reduction"] < 1:
        raise CheckpointError(
            f"attention chunk {c['chunk']}, context {c['context_left']}/{c['context_right']}, reduction "
            f"{c['reduction']}: not a USM attention; restore the model's config.json"
        )
    return UsmConfig(kind=kind, text_width=text, **c)
