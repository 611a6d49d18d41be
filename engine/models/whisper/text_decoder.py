"""Whisper's text decoder behind ``engine.models.interface.Decoder`` (decode's one decoder path).

Memory: the decoder attends to the whole 30 s window, its padding included, so decode recomputes it from the audio:
``windows`` are the log-mel windows (``LoadedWhisper.features``), ``memory`` the encoder up to the layer, through
``ln_post`` or not (``decoding.audio_features``, the early exit). Search: greedy or CTranslate2's beam search
(``LoadedWhisper.transcribe``), a language detected per window when none is given (``--language detect``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.errors import LanguageError
from engine.languages import fleurs_to_whisper
from engine.models.interface import Checkpointed, DecoderCaps, Search
from engine.models.whisper.decoding import DecodingOptions
from engine.models.whisper.features import N_ENCODER_FRAMES
from engine.models.whisper.loaded import LoadedWhisper, load_whisper

# What every Whisper decoder does; an English-only model transcribes only (its "detected" language is English).
CAPS = DecoderCaps(beam_options=("patience", "length_penalty"), detect_language=True, alignment_heads=True,
                   training=True, plan=True)  # fmt: skip
ENGLISH_ONLY = dataclasses.replace(CAPS, tasks=("transcribe",))


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperDecoder(Checkpointed):
    """``Decoder`` over a ``LoadedWhisper`` (``loaded``); ``dtype``: the compute dtype of the decoder's input."""

    loaded: LoadedWhisper
    dtype: object = jnp.float32
    window_frames: int = N_ENCODER_FRAMES
    manifest_extra: tuple = ()  # Whisper's decode.json predates the "head" field

    @property
    def caps(self) -> DecoderCaps:
        return CAPS if self.loaded.dims.is_multilingual else ENGLISH_ONLY

    @property
    def n_layers_out(self) -> int:
        return self.loaded.dims.n_audio_layer + 2

    def same_store(self, info) -> bool:
        return info.dims.to_dict() == self.loaded.dims.to_dict()

    def language(self, lang: str, decode_as: dict[str, str]) -> str | None:
        """The Whisper code store language ``lang`` is decoded as (``decode_as`` first, which must be a language of
        the tokenizer); None if the tokenizer has none."""
        if lang in decode_as:
            code = decode_as[lang]
            try:
                self.loaded.tokenizer.language_token(code)
            except LanguageError:
                raise LanguageError(
                    f"{code!r} is not a language of this model's tokenizer; use a Whisper code such as kk or en"
                ) from None
            return code
        try:
            code = fleurs_to_whisper(lang)
            self.loaded.tokenizer.language_token(code)
            return code
        except LanguageError:
            return None

    def prompt(self, task: str, language: str) -> list[int]:
        return list(self.loaded.tokenizer.sot_sequence(language, task))

    def score_language(self, language: str) -> str:
        return language  # Whisper's codes are the normalisers' ISO 639-1 codes

    def windows(self, audio: np.ndarray, long_audio: str) -> list[np.ndarray]:
        mel, _ = self.loaded.features(audio, long_audio=long_audio)
        return list(np.asarray(mel))

    def collate(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def memories(self, batch: np.ndarray, variants: Sequence[tuple[int, bool]]):
        """``((layer, ln_post), memory, valid)`` of every variant: the encoder run up to each layer on the batch."""
        valid = np.full(len(batch), N_ENCODER_FRAMES, np.int32)
        for layer, ln_post in variants:
            options = DecodingOptions(encoder_layer=layer, apply_ln_post=ln_post)
            yield (layer, ln_post), self.loaded.audio_features(batch, options).astype(self.dtype), valid

    def final_norm(self, states):
        """``ln_post`` of states ``f[batch, frame, embed]`` of an intermediate layer: what ``memories`` gives for
        (layer, True) from what it gives for (layer, False)."""
        return self.loaded.model.encoder.ln_post(jnp.asarray(states)).astype(self.dtype)

    def search(self, memory, valid, task: str, languages: Sequence[str | None], search: Search):
        """``(tokens per row, avg_logprob per row, language label per row)``; one language for the whole batch or
        None (detected per row)."""
        del valid  # every frame of Whisper's window is read
        options = DecodingOptions(
            task=task,
            language=languages[0],
            max_new_tokens=search.max_new_tokens,
            beam_size=search.beam,
            patience=search.patience,
            length_penalty=search.length_penalty,
        )
        result = self.loaded.transcribe(None, options, xa=memory)
        return result.tokens, list(np.asarray(result.avg_logprob)), list(result.languages)

    def text(self, ids: Sequence[int]) -> str:
        return self.loaded.tokenizer.decode(list(ids)).strip()


def load_decoder(source=None, *, dtype=jnp.float32, loaded: LoadedWhisper | None = None) -> WhisperDecoder:
    """Whisper's ``Decoder``: ``source`` loaded in ``dtype``, or a ``LoadedWhisper`` already loaded (``loaded``)."""
    return WhisperDecoder(loaded if loaded is not None else load_whisper(source, dtype=dtype), dtype)
