"""What changes the computation of a w2v-BERT 2.0 conformer encoder, read from either family's ``config.json``.

One architecture, two checkpoints (issue 28):

- ``Wav2Vec2BertConfig`` (``model_type`` "wav2vec2-bert", ``facebook/w2v-bert-2.0``): the fields without prefix.
- ``SeamlessM4Tv2Config`` (``model_type`` "seamless_m4t_v2", ``facebook/seamless-m4t-v2-large``): the
  ``speech_encoder_*`` fields, ``hidden_size`` and the position fields the text side shares.

Both real configs use ``position_embeddings_type="relative_key"`` (Shaw et al.'s learned embedding of the clipped
distance ``key - query`` in ``[-64, 8]``, one vector per head width), a swish (SiLU) activation and a causal depthwise
convolution of 31 taps; babelgrid implements exactly that. It refuses, by name, what would change the conformer layers
and is not implemented: ``position_embeddings_type`` "rotary", "relative" (Transformer-XL) or none, another activation,
an even depthwise kernel (transformers refuses it too). Options that act only in training (dropout, layerdrop,
SpecAugment masking) or only after the conformer layers (the adapter, the intermediate feed-forward, the Seamless
encoder's final norms) do not change the stored layers and are accepted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from engine.errors import CheckpointError

W2V_BERT = "wav2vec2-bert"  # transformers' model_type of Wav2Vec2BertConfig
SEAMLESS_M4T_V2 = "seamless_m4t_v2"  # transformers' model_type of SeamlessM4Tv2Config
FAMILIES = (W2V_BERT, SEAMLESS_M4T_V2)

TORCH_LN_EPS = 1e-5  # torch.nn.LayerNorm's default: the Seamless conformer blocks' norms pass no eps
SECONDS_PER_FRAME = 0.02  # 10 ms fbank hop, two frames stacked into one 160-wide input (20 ms)
RELATIVE_KEY = "relative_key"
ACTIVATIONS = ("swish", "silu")  # the same function in transformers' ACT2FN

# transformers' defaults for the fields babelgrid reads, per family (a config.json written by save_pretrained holds
# every field, but hand-written ones may rely on the defaults).
_DEFAULTS = {
    W2V_BERT: {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feature_projection_input_dim": 160,
        "hidden_act": "swish",
        "layer_norm_eps": 1e-5,
        "position_embeddings_type": RELATIVE_KEY,
        "left_max_position_embeddings": 64,
        "right_max_position_embeddings": 8,
        "conv_depthwise_kernel_size": 31,
    },
    SEAMLESS_M4T_V2: {
        "hidden_size": 1024,
        "speech_encoder_layers": 24,
        "speech_encoder_attention_heads": 16,
        "speech_encoder_intermediate_size": 4096,
        "feature_projection_input_dim": 160,
        "speech_encoder_hidden_act": "swish",
        "layer_norm_eps": 1e-5,
        "position_embeddings_type": RELATIVE_KEY,
        "left_max_position_embeddings": 64,
        "right_max_position_embeddings": 8,
        "conv_depthwise_kernel_size": 31,
        "speech_encoder_chunk_size": 20000,
        "speech_encoder_left_chunk_num": 128,
    },
}
# Seamless field -> the Wav2Vec2Bert name of the same quantity.
_SEAMLESS_NAMES = {
    "speech_encoder_layers": "num_hidden_layers",
    "speech_encoder_attention_heads": "num_attention_heads",
    "speech_encoder_intermediate_size": "intermediate_size",
    "speech_encoder_hidden_act": "hidden_act",
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The conformer encoder's dimensions and numerics; layers are indexed ``0..n_layer`` (see ``model``)."""

    family: str  # W2V_BERT or SEAMLESS_M4T_V2: which checkpoint layout the weights come in
    n_layer: int  # conformer blocks, called L (24 in both real models)
    width: int  # hidden_size, the embed axis (1024)
    n_head: int  # attention heads (16)
    ffn_width: int  # hidden width of each half-step feed-forward (4096)
    n_input: int  # feature_projection_input_dim: 2 stacked frames x 80 mel bins (160)
    depthwise_kernel: int  # taps of the causal depthwise convolution (31)
    left_positions: int  # relative_key clips key - query at -left_positions (64 frames, 1.28 s) ...
    right_positions: int  # ... and at +right_positions (8 frames, 160 ms)
    projection_ln_eps: float  # the feature projection's norm: config.layer_norm_eps in both families
    block_ln_eps: float  # the conformer blocks' norms: layer_norm_eps (w2v-BERT), torch's 1e-5 (Seamless)
    chunk_size: int | None = None  # Seamless: attention only within chunks of this many frames (20000: 400 s)
    left_chunks: int = -1  # Seamless: ... and the left_chunks chunks before (negative: all of them)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"EncoderConfig.family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("n_layer", "width", "n_head", "ffn_width", "n_input", "depthwise_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.n_head:
            raise ValueError(f"EncoderConfig.width={self.width} is not divisible by n_head={self.n_head}")
        if self.depthwise_kernel % 2 == 0:
            raise ValueError(
                f"EncoderConfig.depthwise_kernel must be odd (transformers' too), got {self.depthwise_kernel}"
            )
        if self.left_positions < 0 or self.right_positions < 0:
            raise ValueError(
                f"relative_key clipping must be >= 0, got left={self.left_positions}, right={self.right_positions}"
            )
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise ValueError(f"EncoderConfig.chunk_size must be positive or None, got {self.chunk_size}")

    @property
    def head_width(self) -> int:
        return self.width // self.n_head

    @property
    def n_positions(self) -> int:
        """Rows of each block's ``distance_embedding``: one per clipped distance."""
        return self.left_positions + self.right_positions + 1

    @property
    def n_layers_out(self) -> int:
        """Layer indices stored: 0 (projected features) and 1..L (blocks)."""
        return self.n_layer + 1

    @property
    def seconds_per_frame(self) -> float:
        return SECONDS_PER_FRAME

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_hf(config: Mapping, source: str = "config.json") -> EncoderConfig:
    """``EncoderConfig`` from a ``Wav2Vec2BertConfig`` or ``SeamlessM4Tv2Config`` dict; refuses what is not built.

    ``source`` names the file in error messages.
    """
    family = config.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(
            f"'{source}' describes a {family!r} model; babelgrid's w2v-BERT family reads model_type "
            f"{W2V_BERT!r} (Wav2Vec2BertModel, e.g. facebook/w2v-bert-2.0) or {SEAMLESS_M4T_V2!r} "
            "(SeamlessM4Tv2Model, e.g. facebook/seamless-m4t-v2-large)"
        )
    given = {**_DEFAULTS[family], **{k: v for k, v in config.items() if k in _DEFAULTS[family]}}
    # One vocabulary of names from here on, the Wav2Vec2Bert one.
    cfg = {_SEAMLESS_NAMES.get(k, k): v for k, v in given.items()}

    def refuse(field: str, value, supported: str):
        name = next((s for s, w in _SEAMLESS_NAMES.items() if w == field and family == SEAMLESS_M4T_V2), field)
        raise CheckpointError(
            f"'{source}': {name}={value!r} is not supported by babelgrid's w2v-BERT family: {supported}"
        )

    if cfg["position_embeddings_type"] != RELATIVE_KEY:
        refuse(
            "position_embeddings_type",
            cfg["position_embeddings_type"],
            "only 'relative_key' (Shaw) is implemented, which w2v-bert-2.0 and seamless-m4t-v2-large use; "
            "'rotary', 'relative' and none are not",
        )
    if cfg["hidden_act"] not in ACTIVATIONS:
        refuse("hidden_act", cfg["hidden_act"], "the conformer blocks are built with swish (SiLU), as the real models")
    kernel = int(cfg["conv_depthwise_kernel_size"])
    if kernel % 2 == 0:
        refuse("conv_depthwise_kernel_size", kernel, "it must be odd (31 in the real models)")
    chunk = cfg.get("speech_encoder_chunk_size") if family == SEAMLESS_M4T_V2 else None
    try:
        return EncoderConfig(
            family=family,
            n_layer=int(cfg["num_hidden_layers"]),
            width=int(cfg["hidden_size"]),
            n_head=int(cfg["num_attention_heads"]),
            ffn_width=int(cfg["intermediate_size"]),
            n_input=int(cfg["feature_projection_input_dim"]),
            depthwise_kernel=kernel,
            left_positions=int(cfg["left_max_position_embeddings"]),
            right_positions=int(cfg["right_max_position_embeddings"]),
            projection_ln_eps=float(cfg["layer_norm_eps"]),
            block_ln_eps=float(cfg["layer_norm_eps"]) if family == W2V_BERT else TORCH_LN_EPS,
            chunk_size=None if chunk is None else int(chunk),
            left_chunks=int(cfg.get("speech_encoder_left_chunk_num", -1)) if family == SEAMLESS_M4T_V2 else -1,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{source}' has unusable encoder dimensions: {e}") from None
