"""The audio towers of three speech LLMs, as transformers 5 builds them, and their projectors.

All three towers are Whisper-large-v3-shaped encoders with their own weights: conv1 (k3) and conv2 (k3, stride 2)
with GELU, learned positions (1500), pre-LN blocks (``self_attn`` with an unbiased key, ``fc1``/``fc2``, GELU), a
final ``layer_norm``. They differ after the blocks and in masking (transformers' modeling files, read for this):

- **Qwen2-Audio** (``Qwen2AudioEncoder``): the keys past each window's valid frames are masked (``Qwen2AudioModel``
  builds the mask from ``feature_attention_mask``: ``(mel - 1) // 2 + 1`` frames); after the blocks
  ``AvgPool1d(2, 2)`` over frames, then ``layer_norm`` (25 frames/s, ``(frames - 2) // 2 + 1`` valid); projector
  ``Qwen2AudioMultiModalProjector``: one ``linear`` to the LLM's width.
- **Audio Flamingo 3** (``AudioFlamingo3Encoder``): the same mask, pooling and norm; projector
  ``AudioFlamingo3MultiModalProjector``: ``linear_1``, ``projector_hidden_act``, ``linear_2`` (biases per
  ``projector_bias``).
- **Voxtral** (``VoxtralEncoder``): no mask (as Whisper, the blocks attend over the 30 s window's padding), no
  pooling (its ``avg_pooler`` is built and never called), ``layer_norm`` at 50 frames/s; the projector
  (``VoxtralModel.get_audio_features``) reshapes 4 consecutive frames into one of ``intermediate_size`` (5120 = 4 x
  1280) values, then ``linear_1``, act, ``linear_2``, no biases: 12.5 frames/s.

``from_hf`` reads a full model's ``config.json`` (``qwen2_audio``, ``voxtral``, ``audioflamingo3``: the audio tower
and the projector) or an audio tower's own (``*_encoder``: no projector).
"""

from __future__ import annotations

import dataclasses

from engine.errors import CheckpointError

KINDS = ("qwen2_audio", "voxtral", "audioflamingo3")
FULL = {kind: kind for kind in KINDS}  # a full speech LLM's config.json: the tower and the projector
TOWERS = {f"{kind}_encoder": kind for kind in KINDS}  # an audio tower's own
MODEL_TYPES = (*FULL, *TOWERS)
MASKED = ("qwen2_audio", "audioflamingo3")  # key mask over the valid frames, pooling by 2 after the blocks
HUB_IDS = {
    "qwen2_audio": "Qwen/Qwen2-Audio-7B-Instruct",
    "voxtral": "mistralai/Voxtral-Mini-3B-2507",
    "audioflamingo3": "nvidia/audio-flamingo-3-hf",
}
LN_EPS = 1e-5  # nn.LayerNorm's default: the towers build theirs without an eps


@dataclasses.dataclass(frozen=True)
class SpeechLLMConfig:
    kind: str  # qwen2_audio | voxtral | audioflamingo3
    n_mels: int
    width: int  # d_model
    heads: int
    layers: int
    ffn: int  # encoder_ffn_dim
    n_ctx: int  # max_source_positions: 1500 encoder frames, 30 s
    activation: str
    # the projector (None: an audio tower alone)
    text_width: int | None = None
    projector_act: str | None = None
    projector_bias: bool = False
    group: int = 1  # frames concatenated before the projector (Voxtral: intermediate_size // d_model = 4)

    @property
    def masked(self) -> bool:
        return self.kind in MASKED

    @property
    def pooled(self) -> bool:
        return self.kind in MASKED

    @property
    def has_projector(self) -> bool:
        return self.text_width is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _get(d: dict, *names, default=None):
    for name in names:
        if name in d and d[name] is not None:
            return d[name]
    if default is not None:
        return default
    raise CheckpointError(f"config.json's audio config lacks {names[0]!r}; restore the model's config.json")


def from_hf(config: dict) -> SpeechLLMConfig:
    """The config of a full speech LLM's or an audio tower's ``config.json`` (module docstring)."""
    model_type = config.get("model_type")
    if model_type in TOWERS:
        kind, audio, full = TOWERS[model_type], config, None
    elif model_type in FULL:
        kind, audio, full = FULL[model_type], config.get("audio_config") or {}, config
    else:
        raise CheckpointError(f"model_type {model_type!r} is none of the speech LLMs babelgrid reads: {MODEL_TYPES}")
    width = int(_get(audio, "d_model", "hidden_size", default=1280))
    ffn = int(_get(audio, "encoder_ffn_dim", "intermediate_size", default=5120))
    cfg = dict(
        kind=kind, n_mels=int(_get(audio, "num_mel_bins", default=128)), width=width,
        heads=int(_get(audio, "encoder_attention_heads", "num_attention_heads", default=20)),
        layers=int(_get(audio, "encoder_layers", "num_hidden_layers", default=32)), ffn=ffn,
        n_ctx=int(_get(audio, "max_source_positions", default=1500)),
        activation=str(_get(audio, "activation_function", default="gelu")),
    )  # fmt: skip
    if full is not None:
        text = full.get("text_config") or {}
        if "hidden_size" not in text:
            raise CheckpointError("config.json's text_config has no hidden_size: the projector's width is unknown")
        cfg["text_width"] = int(text["hidden_size"])
        if kind == "qwen2_audio":
            cfg["projector_bias"] = True  # nn.Linear(d_model, hidden_size, bias=True)
        else:
            cfg["projector_act"] = str(full.get("projector_hidden_act", "gelu"))
            cfg["projector_bias"] = bool(full.get("projector_bias", True)) if kind == "audioflamingo3" else False
        if kind == "voxtral":
            cfg["group"] = ffn // width  # get_audio_features: reshape(-1, audio_config.intermediate_size)
            if cfg["group"] * width != ffn:
                raise CheckpointError(f"Voxtral's intermediate_size {ffn} is not a multiple of d_model {width}")
    return SpeechLLMConfig(**cfg)
