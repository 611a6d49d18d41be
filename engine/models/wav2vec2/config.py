"""The wav2vec2 family's dimensions and options: one frozen dataclass read from a transformers ``config.json``.

``Wav2Vec2Dims`` keeps the fields of ``Wav2Vec2Config`` and ``HubertConfig`` that change what the encoder computes
(widths, the conv feature encoder, the norms, the positional convolution, the CTC head and MMS adapters). Training-only
fields (dropouts, SpecAugment masking, the quantizer and codevectors, loss settings, classification heads) are read
past: they do not change inference. Options that change the computation in a way this package does not implement are
refused by name (``CheckpointError``), so that an unsupported model fails at load time, not with wrong numbers.

Covered checkpoints: wav2vec2 base/large (``feat_extract_norm`` "group" / "layer", ``do_stable_layer_norm`` off /
on), XLS-R 300M/1B/2B, MMS (``adapter_attn_dim``: an attention adapter in every layer), HuBERT base/large/xlarge and
Meta's Omnilingual ASR CTC models in their ``Wav2Vec2ForCTC`` conversions (pre-LN, ``pad_token_id`` 0: the blank is
``<s>``; ``tests/models/wav2vec2/test_omnilingual.py``). The positional conv's kernel may be even (128 in every released
model) or odd: transformers pads ``K // 2`` frames each side and drops one output frame for an even ``K``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from engine.errors import CheckpointError

SAMPLE_RATE = 16000  # Hz: every wav2vec2, HuBERT, XLS-R and MMS model takes 16 kHz audio
MODEL_TYPES = ("wav2vec2", "hubert")
# transformers' ACT2FN names this package computes (see layers.activation); others are refused by name.
ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")
# model_type values of relatives with a different encoder, and what differs, for the refusal message.
_RELATIVES = {
    "wav2vec2-conformer": "conformer blocks with rotary or relative position embeddings",
    "wav2vec2-bert": "a conformer on log-mel features",
    "wavlm": "gated relative position bias in every attention layer",
    "data2vec-audio": "a stack of positional convolutions with layer norm",
    "sew": "a squeezed, downsampled encoder",
    "sew-d": "disentangled attention",
    "unispeech": "a different checkpoint layout",
    "unispeech-sat": "a different checkpoint layout",
}


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Dims:
    """What the encoder computes, in transformers' field names (``Wav2Vec2Config`` / ``HubertConfig``)."""

    model_type: str  # "wav2vec2" or "hubert": the checkpoint's key prefix and the HuBERT projection option
    hidden_size: int  # encoder width, the EMBED axis
    num_hidden_layers: int  # transformer layers, called L here: hidden_states has L + 1 entries
    num_attention_heads: int
    intermediate_size: int  # feed-forward width
    hidden_act: str  # feed-forward activation
    conv_dim: tuple[int, ...]  # channels of each feature-encoder conv layer
    conv_kernel: tuple[int, ...]  # samples (layer 0) or frames (later layers) per kernel
    conv_stride: tuple[int, ...]
    conv_bias: bool
    feat_extract_norm: str  # "group": group norm on conv layer 0 only; "layer": layer norm after every conv layer
    feat_extract_activation: str
    feat_proj_layer_norm: bool  # layer norm before the feature projection (always on for wav2vec2; HuBERT option)
    num_conv_pos_embeddings: int  # kernel width of the positional convolution, in frames
    num_conv_pos_embedding_groups: int
    conv_pos_batch_norm: bool  # HuBERT option: batch norm before a plain (not weight-normed) positional conv
    do_stable_layer_norm: bool  # pre-LN layers and a final layer norm (large models) vs post-LN (base models)
    layer_norm_eps: float
    vocab_size: int | None  # CTC vocabulary of the config (an MMS adapter may bring its own size)
    pad_token_id: int | None  # the CTC blank
    adapter_attn_dim: int | None  # MMS attention adapters' bottleneck width

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        n = len(self.conv_dim)
        if not n or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must have one entry per conv layer, got {len(self.conv_dim)}, "
                f"{len(self.conv_kernel)} and {len(self.conv_stride)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use one of {ACTIVATIONS}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}"
            )

    @property
    def n_layers_out(self) -> int:
        """Entries of transformers' ``hidden_states``: 0 (the input to layer 1) and 1..L (each layer's output)."""
        return self.num_hidden_layers + 1

    @property
    def samples_per_frame(self) -> int:
        """Hop between encoder frames in samples: the product of the conv strides (320 for every released model)."""
        return math.prod(self.conv_stride)

    @property
    def seconds_per_frame(self) -> float:
        """Seconds per encoder frame (0.02 for every released model: 320 samples at 16 kHz)."""
        return self.samples_per_frame / SAMPLE_RATE

    @property
    def receptive_field(self) -> int:
        """Samples one encoder frame sees through the conv feature encoder (400 = 25 ms for released models)."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            field = (field - 1) * stride + kernel
        return field

    @property
    def has_adapter_layers(self) -> bool:
        """MMS attention adapters exist only in pre-LN layers: transformers' post-LN layer has none."""
        return self.adapter_attn_dim is not None and self.do_stable_layer_norm

    def frames(self, samples: int) -> int:
        """Valid encoder frames of ``samples`` samples: transformers' ``_get_feat_extract_output_lengths``."""
        n = int(samples)
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            n = (n - kernel) // stride + 1
        return max(n, 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def dims_from_hf_config(config: Mapping, source: str = "config.json") -> Wav2Vec2Dims:
    """``Wav2Vec2Dims`` from a transformers ``Wav2Vec2Config`` / ``HubertConfig`` dict; defaults are transformers'.

    Raises ``CheckpointError`` naming ``source`` and the option for a model type or option not implemented here.
    """
    model_type = config.get("model_type")
    if model_type in _RELATIVES:
        raise CheckpointError(
            f"'{source}' describes a {model_type!r} model ({_RELATIVES[model_type]}); the wav2vec2 family here covers "
            f"model_type {' and '.join(map(repr, MODEL_TYPES))} (wav2vec2, XLS-R, MMS, HuBERT)"
        )
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"'{source}' has model_type {model_type!r}; a wav2vec2-family config.json has model_type "
            f"{' or '.join(map(repr, MODEL_TYPES))}"
        )
    position = config.get("position_embeddings_type")
    if position not in (None, "conv"):
        raise CheckpointError(
            f"'{source}' asks for position_embeddings_type={position!r}; only the convolutional positional embedding "
            "of wav2vec2 and HuBERT is implemented"
        )
    if config.get("add_adapter"):
        raise CheckpointError(
            f"'{source}' sets add_adapter=true (a strided conv adapter after the encoder, for speech-to-text "
            "fine-tuning), which is not implemented; MMS language adapters are adapter_attn_dim, and are supported"
        )
    if config.get("tie_last_hidden_states"):
        raise CheckpointError(
            f"'{source}' sets tie_last_hidden_states=true, which changes what hidden_states[-1] means; remove it "
            "(transformers' wav2vec2 and HuBERT models leave it unset)"
        )

    def get(name, default):
        return config.get(name, default) if config.get(name) is not None else default

    try:
        return Wav2Vec2Dims(
            model_type=model_type,
            hidden_size=int(get("hidden_size", 768)),
            num_hidden_layers=int(get("num_hidden_layers", 12)),
            num_attention_heads=int(get("num_attention_heads", 12)),
            intermediate_size=int(get("intermediate_size", 3072)),
            hidden_act=str(get("hidden_act", "gelu")),
            conv_dim=tuple(int(c) for c in get("conv_dim", (512,) * 7)),
            conv_kernel=tuple(int(k) for k in get("conv_kernel", (10, 3, 3, 3, 3, 2, 2))),
            conv_stride=tuple(int(s) for s in get("conv_stride", (5, 2, 2, 2, 2, 2, 2))),
            conv_bias=bool(get("conv_bias", False)),
            feat_extract_norm=str(get("feat_extract_norm", "group")),
            feat_extract_activation=str(get("feat_extract_activation", "gelu")),
            # wav2vec2's feature projection always has its layer norm; HuBERT's has it unless switched off
            feat_proj_layer_norm=model_type == "wav2vec2" or bool(get("feat_proj_layer_norm", True)),
            num_conv_pos_embeddings=int(get("num_conv_pos_embeddings", 128)),
            num_conv_pos_embedding_groups=int(get("num_conv_pos_embedding_groups", 16)),
            conv_pos_batch_norm=model_type == "hubert" and bool(get("conv_pos_batch_norm", False)),
            do_stable_layer_norm=bool(get("do_stable_layer_norm", False)),
            layer_norm_eps=float(get("layer_norm_eps", 1e-5)),
            vocab_size=None if config.get("vocab_size") is None else int(config["vocab_size"]),
            pad_token_id=None if config.get("pad_token_id") is None else int(config["pad_token_id"]),
            adapter_attn_dim=None if config.get("adapter_attn_dim") is None else int(config["adapter_attn_dim"]),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{source}' has unusable wav2vec2 dimensions: {e}") from None
