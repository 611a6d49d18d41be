"""What changes the computation of a FastConformer encoder, read from transformers' ``config.json`` of any model that
carries one (issue 47).

One encoder, ``ParakeetEncoderConfig`` (``model_type`` "parakeet_encoder"), found in five layouts:

- ``parakeet_encoder`` (``ParakeetEncoder``): the file itself is the encoder's config; tensors without prefix;
- ``parakeet_ctc`` (``ParakeetForCTC``: ``nvidia/parakeet-ctc-0.6b``, ``-1.1b``): ``encoder_config``, ``encoder.*``;
- ``parakeet_tdt``, ``parakeet_rnnt`` (``ParakeetForTDT``: ``nvidia/parakeet-tdt-0.6b-v3``; ``ParakeetForRNNT``):
  ``encoder_config``, ``encoder.*``;
- ``canary`` (``CanaryForConditionalGeneration``: ``nvidia/canary-1b-v2``): ``encoder_config``, ``model.encoder.*``;
- ``cohere_asr`` (``CohereAsrForConditionalGeneration``: ``CohereLabs/cohere-transcribe-03-2026``): ``encoder_config``
  merged into Cohere's defaults (48 x 1280, feed-forward 5120, 128 mel bins, no input scale), ``model.encoder.*``
  under ``save_pretrained``'s NeMo names (``engine.models.fastconformer.cohere``).

Only the encoder is read (``engine.models.common.prefixed``); ``parakeet_ctc`` adds its CTC head (``ctc_head.*``, a
1x1 convolution to ``vocab_size`` classes, the blank being ``pad_token_id``).

transformers' defaults are the real models' widths: hidden 1024, 8 heads, feed-forward 4096, depthwise kernel 9,
8x subsampling by three 3x3 stride-2 convolutions of 256 channels, silu. Parakeet-CTC 0.6B: 24 blocks, 80 mel bins,
inputs scaled by sqrt(1024) (``scale_input``); Parakeet-TDT 0.6B v3: 24 blocks, 128 mel bins; Canary-1B v2: 32
blocks, 128 mel bins, ``scale_input`` false (``CanaryConfig``'s encoder defaults). babelgrid refuses, by name, what it
does not build: another activation, an even kernel, a subsampling whose mel axis does not come out at
``num_mel_bins // stride ** layers`` (transformers' linear would not fit it either).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from engine.errors import CheckpointError
from engine.models.fastconformer import cohere

ENCODER, CTC, TDT, RNNT, CANARY = "parakeet_encoder", "parakeet_ctc", "parakeet_tdt", "parakeet_rnnt", "canary"
MODEL_TYPES = (ENCODER, CTC, TDT, RNNT, CANARY, cohere.COHERE)
PREFIX = {ENCODER: "", CTC: "encoder.", TDT: "encoder.", RNNT: "encoder.", CANARY: "model.encoder.",
          cohere.COHERE: "model.encoder."}  # fmt: skip
DECODER_TYPES = (CANARY, cohere.COHERE)  # the layouts with a text decoder beside the encoder
HUB_IDS = ("nvidia/parakeet-ctc-0.6b", "nvidia/parakeet-tdt-0.6b-v3", "nvidia/canary-1b-v2", cohere.HUB_ID)
ACTIVATIONS = ("silu", "swish")
LN_EPS = 1e-5  # torch.nn.LayerNorm's default: the blocks' norms pass none
BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default: the convolution module's norm
SECONDS_PER_FEATURE = 0.01  # 10 ms hop

# ParakeetEncoderConfig's defaults, and CanaryConfig's overrides of them, for a hand-written config.json.
_DEFAULTS = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, intermediate_size=4096, hidden_act="silu",
    attention_bias=True, convolution_bias=True, conv_kernel_size=9, subsampling_factor=8,
    subsampling_conv_channels=256, num_mel_bins=80, subsampling_conv_kernel_size=3, subsampling_conv_stride=2,
    scale_input=True,
)  # fmt: skip
_CANARY_DEFAULTS = dict(num_hidden_layers=32, num_mel_bins=128, scale_input=False)


@dataclasses.dataclass(frozen=True)
class FastConformerConfig:
    """The encoder's dimensions; layers are indexed ``0..n_layer`` (see ``model``)."""

    model_type: str  # one of MODEL_TYPES: the layout the weights come in
    n_layer: int  # conformer blocks, L (24 Parakeet 0.6B, 32 Canary 1B, 42 Parakeet 1.1B, 48 Cohere ASR)
    width: int  # hidden_size (1024; 1280 Cohere ASR)
    n_head: int  # attention heads (8)
    ffn_width: int  # intermediate_size (4096)
    conv_kernel: int  # the convolution module's depthwise taps (9)
    n_mels: int  # num_mel_bins (80 or 128)
    sub_channels: int  # subsampling_conv_channels (256)
    sub_kernel: int  # subsampling_conv_kernel_size (3)
    sub_stride: int  # subsampling_conv_stride (2)
    sub_layers: int  # log2(subsampling_factor): stride-2 convolutions (3: 8x, 80 ms frames)
    scale_input: bool  # the subsampling output times sqrt(width) before the blocks
    attention_bias: bool = True  # biases of the attention projections and the feed-forwards
    convolution_bias: bool = True  # biases of the convolution module's convolutions
    vocab_size: int | None = None  # the CTC head's classes (parakeet_ctc only)
    blank_id: int | None = None  # the CTC blank: pad_token_id (parakeet_ctc only)

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"FastConformerConfig.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        for name in ("n_layer", "width", "n_head", "ffn_width", "conv_kernel", "n_mels", "sub_channels", "sub_kernel",
                     "sub_stride", "sub_layers"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FastConformerConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.n_head:
            raise ValueError(f"FastConformerConfig.width={self.width} is not divisible by n_head={self.n_head}")
        if self.conv_kernel % 2 == 0 or self.sub_kernel % 2 == 0:
            raise ValueError(f"kernels must be odd ('same' padding), got {self.conv_kernel} and {self.sub_kernel}")
        if self.sub_mels != self.n_mels // self.sub_stride**self.sub_layers:
            raise ValueError(
                f"{self.n_mels} mel bins come out of the subsampling as {self.sub_mels}, not "
                f"{self.n_mels // self.sub_stride**self.sub_layers} as transformers' linear expects"
            )

    @property
    def head_width(self) -> int:
        return self.width // self.n_head

    @property
    def sub_padding(self) -> int:
        return (self.sub_kernel - 1) // 2

    def sub_length(self, n) -> int:
        """Length of an axis of ``n`` after the subsampling's strided convolutions."""
        for _ in range(self.sub_layers):
            n = (n + 2 * self.sub_padding - self.sub_kernel) // self.sub_stride + 1
        return n

    @property
    def sub_mels(self) -> int:
        """The mel axis after the subsampling: the linear reads ``sub_channels * sub_mels`` values per frame."""
        return self.sub_length(self.n_mels)

    @property
    def n_layers_out(self) -> int:
        """Layer indices stored: 0 (subsampling output) and 1..L (blocks)."""
        return self.n_layer + 1

    @property
    def seconds_per_frame(self) -> float:
        return SECONDS_PER_FEATURE * self.sub_stride**self.sub_layers

    @property
    def prefix(self) -> str:
        return PREFIX[self.model_type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_hf(config: Mapping, source: str = "config.json") -> FastConformerConfig:
    """``FastConformerConfig`` from a ``config.json`` dict of any of ``MODEL_TYPES``; refuses what is not built."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"'{source}' describes a {model_type!r} model; babelgrid's FastConformer family reads model_type "
            f"{', '.join(map(repr, MODEL_TYPES))} (Parakeet, Canary, Cohere ASR)"
        )
    encoder = config if model_type == ENCODER else config.get("encoder_config") or {}
    if not isinstance(encoder, Mapping):
        raise CheckpointError(f"'{source}': encoder_config must be an object, got {type(encoder).__name__}")
    # As CanaryConfig: its encoder defaults apply when there is no encoder_config at all; a given one's missing
    # fields take ParakeetEncoderConfig's.
    canary = model_type == CANARY and not config.get("encoder_config")
    # CohereAsrConfig merges a given encoder_config into its own defaults: they apply either way.
    own = cohere.ENCODER_DEFAULTS if model_type == cohere.COHERE else _CANARY_DEFAULTS if canary else {}
    defaults = {**_DEFAULTS, **own}
    cfg = {**defaults, **{k: v for k, v in encoder.items() if k in defaults}}

    def refuse(field: str, value, supported: str):
        raise CheckpointError(
            f"'{source}': encoder {field}={value!r} is not supported by babelgrid's FastConformer family: {supported}"
        )

    if cfg["hidden_act"] not in ACTIVATIONS:
        refuse("hidden_act", cfg["hidden_act"], "the conformer blocks are built with silu, as the real models")
    factor = int(cfg["subsampling_factor"])
    if factor < 2 or factor & (factor - 1):
        refuse("subsampling_factor", factor, "a power of two (8 in the real models), as transformers requires")
    vocab = blank = None
    if model_type == CTC:
        vocab, blank = config.get("vocab_size", 1025), config.get("pad_token_id", 1024)
        if not isinstance(blank, int) or not isinstance(vocab, int) or not 0 <= blank < vocab:
            raise CheckpointError(f"'{source}': pad_token_id {blank!r} (the CTC blank) is not a class of {vocab!r}")
    try:
        return FastConformerConfig(
            model_type=model_type,
            n_layer=int(cfg["num_hidden_layers"]),
            width=int(cfg["hidden_size"]),
            n_head=int(cfg["num_attention_heads"]),
            ffn_width=int(cfg["intermediate_size"]),
            conv_kernel=int(cfg["conv_kernel_size"]),
            n_mels=int(cfg["num_mel_bins"]),
            sub_channels=int(cfg["subsampling_conv_channels"]),
            sub_kernel=int(cfg["subsampling_conv_kernel_size"]),
            sub_stride=int(cfg["subsampling_conv_stride"]),
            sub_layers=int(math.log2(factor)),
            scale_input=bool(cfg["scale_input"]),
            attention_bias=bool(cfg["attention_bias"]),
            convolution_bias=bool(cfg["convolution_bias"]),
            vocab_size=vocab,
            blank_id=blank,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{source}' has unusable encoder dimensions: {e}") from None
