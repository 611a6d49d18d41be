"""Whisper model dimensions, one frozen dataclass for every size.

Field names follow OpenAI's ``whisper.model.ModelDimensions`` so that the
``dims`` dict of an OpenAI ``.pt`` checkpoint loads unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelDimensions:
    n_mels: int  # mel bins of the input features (80, or 128 from large-v3 on)
    n_audio_ctx: int  # encoder positions (1500 = 30 s at 50 frames/s)
    n_audio_state: int  # encoder width
    n_audio_head: int
    n_audio_layer: int  # number of encoder blocks, called L in babelgrid
    n_vocab: int
    n_text_ctx: int  # decoder positions (448)
    n_text_state: int  # decoder width
    n_text_head: int
    n_text_layer: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelDimensions.{field.name} must be a positive int, got {value!r}")
        if self.n_audio_state % self.n_audio_head:
            raise ValueError(f"n_audio_state={self.n_audio_state} is not divisible by n_audio_head={self.n_audio_head}")
        if self.n_text_state % self.n_text_head:
            raise ValueError(f"n_text_state={self.n_text_state} is not divisible by n_text_head={self.n_text_head}")

    @property
    def n_encoder_layers_out(self) -> int:
        """Number of encoder layer indices: 0 (stem), 1..L (blocks), L+1 (ln_post)."""
        return self.n_audio_layer + 2

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        # 99 languages up to large-v2; large-v3 added Cantonese (vocab 51866).
        return self.n_vocab - 51765 - int(self.is_multilingual)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelDimensions:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d)
        if missing:
            raise ValueError(f"model dimensions lack {sorted(missing)}")
        return cls(**{k: int(d[k]) for k in names})


def _dims(n_mels, width, heads, layers, n_vocab=51865, text_layers=None):
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,
        n_audio_state=width,
        n_audio_head=heads,
        n_audio_layer=layers,
        n_vocab=n_vocab,
        n_text_ctx=448,
        n_text_state=width,
        n_text_head=heads,
        n_text_layer=layers if text_layers is None else text_layers,
    )


PRESETS: dict[str, ModelDimensions] = {
    "tiny": _dims(80, 384, 6, 4),
    "base": _dims(80, 512, 8, 6),
    "small": _dims(80, 768, 12, 12),
    "medium": _dims(80, 1024, 16, 24),
    "large-v1": _dims(80, 1280, 20, 32),
    "large-v2": _dims(80, 1280, 20, 32),
    "large-v3": _dims(128, 1280, 20, 32, n_vocab=51866),
    "turbo": _dims(128, 1280, 20, 32, n_vocab=51866, text_layers=4),
}
for _name in ("tiny", "base", "small", "medium"):
    PRESETS[f"{_name}.en"] = dataclasses.replace(PRESETS[_name], n_vocab=51864)
PRESETS["large"] = PRESETS["large-v3"]
PRESETS["large-v3-turbo"] = PRESETS["turbo"]


def preset(name: str) -> ModelDimensions:
    """Dimensions of a named OpenAI Whisper size (``tiny`` ... ``large-v3``, ``turbo``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown Whisper size {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """f32[length, channels]: OpenAI's encoder positional embedding (``whisper.model.sinusoids``).

    Fixed by the dims alone, so it lives here: the model builds it and checkpoint readers fill it in where a
    format does not store it, without either importing the other.
    """
    if channels % 2:
        raise ValueError(f"sinusoids needs an even number of channels, got {channels}")
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)
