"""The Qwen audio encoder: Qwen3's (AuT) of Qwen3-ASR and Qwen3-Omni, as transformers 5 builds it (``Qwen3ASREncoder``,
``Qwen3OmniMoeAudioEncoder``: one code; their modeling files were read for this port), and Qwen2.5-Omni's (below).

- **Downsampler**: the log-mel is cut into chunks of ``2 * n_window`` mel frames (100: 1 s); each chunk goes through
  three ``Conv2d(k3, s2, p1)`` with GELU (``conv2d1..3``, ``downsample_hidden_size`` channels, time and mel both
  halved each time: 100 mel frames -> 13 frames, 128 mels -> 16), then ``conv_out`` (no bias) maps channels x mels
  to ``d_model``, and sinusoidal positions 0..12 are added, restarting in every chunk. A chunk's frames depend on
  that chunk's mel frames only; a clip of ``m`` valid mel frames has ``13 * (m // 100) + ceil((m % 100) / 8)``.
- **Windowed attention**: the valid frames of a clip are cut into attention windows of ``13 * n_window_infer //
  (2 * n_window)`` frames (104 for ``n_window_infer`` 800: 8 s), aligned with the chunks; every block attends within
  its window only (``cu_seqlens``), so the whole encoder is a function of each 8 s window alone.
- **Blocks**: pre-LN, Whisper's layer with a biased key (``self_attn.{q,k,v,out}_proj``, ``fc1``/``fc2``, GELU), then
  ``ln_post``.
- **Output projection**: ``proj1`` (d_model -> d_model), GELU, ``proj2`` (-> ``output_dim``, the LLM's width). The
  released checkpoints hold it in the tower (``thinker.audio_tower.proj1``); transformers' Qwen3-ASR conversion moves
  it to ``multi_modal_projector.linear_1``/``linear_2``: the same two layers.

Padding of the last chunk, which its last frame reads through the strided convolutions: Qwen3-ASR's
``Qwen3ASREncoder`` reads the window's own log-mel past the clip (the feature extractor pads the audio to 30 s with
silence), Qwen3-Omni's thinker passes only the valid mel frames and zero-pads the chunk (``chunk_and_pad_features``);
``tail`` records which. transformers pads Omni's chunks to the batch's longest chunk, 100 whenever the batch holds a
clip of 1 s or more; babelgrid always pads to 100, so a window's states never depend on its batch mates.

**Qwen2.5-Omni** (``Qwen2_5OmniAudioEncoder``) shares the chunking and the windowed attention, with other pieces:
chunks of 200 mel frames (``n_window`` 100) through Whisper's stem (``conv1``, GELU, zeroed past the chunk's valid
mel frames, ``conv2`` stride 2, GELU: 100 frames a chunk, 50/s), positions 0..99 restarting per chunk, attention
within each chunk (2 s), an unbiased key (as Whisper's); after the blocks, frame pairs averaged
(``get_pool_indices``: 25/s), ``ln_post`` and one linear ``proj``. Its ``ln_post`` output is therefore not a layer
at the blocks' rate: the stored layers stop at L, as Qwen2-Audio's.
"""

from __future__ import annotations

import dataclasses

from engine.errors import CheckpointError

ASR, OMNI, OMNI25 = "qwen3_asr", "qwen3_omni", "qwen2_5_omni"
# config.json model_type -> (kind, where the audio config is): a full model (``thinker_config.audio_config`` in the
# released folders, ``audio_config`` in transformers' conversion of Qwen3-ASR) or a tower saved alone
MODEL_TYPES = {
    "qwen3_asr": ASR,
    "qwen3_asr_encoder": ASR,
    "qwen3_asr_audio_encoder": ASR,
    "qwen3_omni_moe": OMNI,
    "qwen3_omni_moe_thinker": OMNI,
    "qwen3_omni_moe_audio_encoder": OMNI,
    "qwen2_5_omni": OMNI25,
    "qwen2_5_omni_thinker": OMNI25,
    "qwen2_5_omni_audio_encoder": OMNI25,
}
TOWER_TYPES = (
    "qwen3_asr_encoder",
    "qwen3_asr_audio_encoder",
    "qwen3_omni_moe_audio_encoder",
    "qwen2_5_omni_audio_encoder",
)
THINKER_TYPES = ("qwen3_omni_moe_thinker", "qwen2_5_omni_thinker")
HUB_IDS = {
    ASR: ("Qwen/Qwen3-ASR-0.6B", "Qwen/Qwen3-ASR-1.7B"),
    OMNI: ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "Qwen/Qwen3-Omni-30B-A3B-Thinking", "Qwen/Qwen3-Omni-30B-A3B-Captioner"),
    OMNI25: ("Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B"),
}
TAIL = {ASR: "features", OMNI: "zeros", OMNI25: "zeros"}  # the module docstring's padding of a clip's last chunk
LN_EPS = 1e-5  # nn.LayerNorm's default: the tower builds its norms without an eps
STRIDES = 3  # Conv2d(k3, s2, p1) layers of the downsampler


def conv_length(n: int, strides: int = STRIDES) -> int:
    """Length after ``strides`` stride-2 convolutions (``(n - 1) // 2 + 1`` each; 0 stays 0)."""
    for _ in range(strides):
        n = (n - 1) // 2 + 1 if n > 0 else 0
    return n


@dataclasses.dataclass(frozen=True)
class Qwen3AudioConfig:
    kind: str  # qwen3_asr | qwen3_omni | qwen2_5_omni
    n_mels: int
    width: int  # d_model
    heads: int
    layers: int
    ffn: int
    conv_channels: int  # downsample_hidden_size (0: Qwen2.5-Omni's Conv1d stem, d_model wide)
    n_window: int  # half a chunk, in mel frames
    n_window_infer: int  # an attention window, in mel frames (Qwen2.5-Omni: one chunk)
    output_dim: int  # the projection's width: what the LLM reads
    has_projector: bool = True  # False: transformers' Qwen3-ASR tower saved alone (its projector is the model's)

    @property
    def chunk(self) -> int:
        """Mel frames per chunk of the downsampler."""
        return 2 * self.n_window

    @property
    def strides(self) -> int:
        """Stride-2 convolutions before the blocks: Qwen3's three Conv2d, Qwen2.5-Omni's one Conv1d (conv2)."""
        return 1 if self.kind == OMNI25 else STRIDES

    @property
    def chunk_frames(self) -> int:
        """Encoder frames per full chunk (Qwen3: 13 of 100 mel frames; Qwen2.5-Omni: 100 of 200)."""
        return conv_length(self.chunk, self.strides)

    @property
    def window_frames(self) -> int:
        """Encoder frames per attention window (104)."""
        return self.chunk_frames * (self.n_window_infer // self.chunk)

    @property
    def conv_mels(self) -> int:
        """Mel bins left after the downsampler (16 of 128)."""
        return conv_length(self.n_mels)

    @property
    def tail(self) -> str:
        return TAIL[self.kind]

    @property
    def key_bias(self) -> bool:
        """Qwen3's attention has a biased key; Qwen2.5-Omni's key has none, as Whisper's."""
        return self.kind != OMNI25

    @property
    def pooled(self) -> bool:
        """Qwen2.5-Omni averages frame pairs after the blocks, before ``ln_post`` (25 frames/s)."""
        return self.kind == OMNI25

    # the speech-LLM encoder's questions, answered for this tower
    masked = True
    group = 1

    @property
    def text_width(self) -> int:
        return self.output_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def frames_of(config: Qwen3AudioConfig, mel_frames):
    """Encoder frames of ``mel_frames`` valid mel frames (an int or a NumPy integer array)."""
    full, rest = mel_frames // config.chunk, mel_frames % config.chunk
    step = 2**config.strides
    return full * config.chunk_frames + (rest + step - 1) // step


def pooled_frames(frames):
    """Frames after pooling pairs (``get_pool_indices``: ``(n - 2) // 2 + 1``, none of 0 or 1 frame)."""
    return (frames >= 2) * ((frames - 2) // 2 + 1)


def _get(d: dict, *names):
    for name in names:
        if d.get(name) is not None:
            return d[name]
    raise CheckpointError(f"config.json's audio config lacks {names[0]!r}; restore the model's config.json")


def from_hf(config: dict) -> Qwen3AudioConfig:
    """The tower's config from a Qwen3-ASR or Qwen3-Omni ``config.json`` (full model, thinker or tower alone).
    ``has_projector`` is False only for transformers' ``qwen3_asr_encoder`` saved alone."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not a Qwen3 audio model's: {sorted(MODEL_TYPES)}")
    if model_type in TOWER_TYPES:
        audio = config
    else:
        thinker = config.get("thinker_config") if model_type not in THINKER_TYPES else config
        audio = (thinker or config).get("audio_config")
        if not isinstance(audio, dict):
            raise CheckpointError(f"config.json ({model_type}) has no audio_config; restore the model's config.json")
    kind = MODEL_TYPES[model_type]
    n_window = int(_get(audio, "n_window"))
    infer = 2 * n_window if kind == OMNI25 else int(_get(audio, "n_window_infer"))  # 2.5: attention within a chunk
    if n_window <= 0 or infer <= 0 or infer % (2 * n_window):
        raise CheckpointError(f"n_window_infer {infer} is not a positive multiple of 2 * n_window ({2 * n_window})")
    width, heads = int(_get(audio, "d_model")), int(_get(audio, "encoder_attention_heads"))
    if width % heads:
        raise CheckpointError(f"d_model {width} is not a multiple of encoder_attention_heads {heads}")
    if (audio.get("activation_function") or "gelu") != "gelu":
        act = audio["activation_function"]
        raise CheckpointError(f"activation_function {act!r}: babelgrid reads the Qwen3 audio tower with gelu only")
    return Qwen3AudioConfig(
        kind=kind, n_mels=int(_get(audio, "num_mel_bins")), width=width, heads=heads,
        layers=int(_get(audio, "encoder_layers")), ffn=int(_get(audio, "encoder_ffn_dim")),
        conv_channels=0 if kind == OMNI25 else int(_get(audio, "downsample_hidden_size")), n_window=n_window,
        n_window_infer=infer,
        output_dim=int(_get(audio, "output_dim")), has_projector=model_type != "qwen3_asr_encoder",
    )  # fmt: skip
