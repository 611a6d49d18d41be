"""Whisper as the align job's ``Aligner`` (``engine.models.interface``): word times from its alignment heads.

A thin face over a ``LoadedWhisper``: the alignment itself is ``engine.models.whisper.timing`` (teacher-forced
cross-attention, median filter, DTW), the greedy transcripts ``LoadedWhisper.transcribe`` on the stored states. The
decoder reads the final encoder layer (L+1, after ``ln_post``), so a layer store that holds it feeds the decoder with
no audio decoded or re-encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from engine.errors import LanguageError
from engine.languages import fleurs_to_whisper
from engine.models.whisper import timing
from engine.models.whisper.decoding import DecodingOptions
from engine.models.whisper.features import N_ENCODER_FRAMES
from engine.models.whisper.loaded import LoadedWhisper, load_whisper


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperAligner:
    """A ``LoadedWhisper`` as an ``Aligner``; ``dtype``: what the stored states are cast to on the device (the
    model's compute dtype)."""

    whisper: LoadedWhisper
    dtype: object = jnp.float32
    window_frames: int = N_ENCODER_FRAMES

    @property
    def name(self) -> str:
        return self.whisper.checkpoint.name

    @property
    def sha256(self) -> str:
        return self.whisper.checkpoint.sha256

    @property
    def top(self) -> int:
        return self.whisper.dims.n_audio_layer + 1  # ln_post's output: what the decoder reads

    def same_store(self, info) -> bool:
        return info.checkpoint_sha256 == self.sha256 and info.dims.to_dict() == self.whisper.dims.to_dict()

    def language(self, lang: str) -> str | None:
        """Whisper's code of a store language, or None where it has no token. An English-only model's prompt has no
        language token: every language is aligned with it as English ("en")."""
        if not self.whisper.dims.is_multilingual:
            return "en"
        try:
            code = fleurs_to_whisper(lang)
            self.whisper.tokenizer.language_token(code)
        except LanguageError:
            return None
        return code

    def _code(self, language: str) -> str | None:
        """The code ``timing`` and ``transcribe`` take: None for an English-only model (no language token)."""
        return language if self.whisper.dims.is_multilingual else None

    def tokens(self, text: str) -> list[int]:
        return self.whisper.tokenizer.encode(" " + text.strip())

    def fill(self, states: np.ndarray, valid: np.ndarray, frames: int) -> np.ndarray:
        """The frames past each utterance's ``valid`` ones become a silent window's (``timing.fill_padding``), which
        overwrites them: the stored states need not be zero there."""
        return timing.fill_padding(states, valid, timing.silence_states(self.whisper), frames)

    def transcribe(self, states: np.ndarray, valid: np.ndarray, language: str) -> list[list[int]]:
        """Greedy transcripts of utterances ``f[b, windows * 1500, embed]``, window by window (as Whisper transcribes
        long audio), joined; windows with no valid frame are not decoded."""
        b, frames, _ = states.shape
        n_windows = frames // N_ENCODER_FRAMES
        windows = states.reshape(b * n_windows, N_ENCODER_FRAMES, -1)
        starts = np.arange(n_windows) * N_ENCODER_FRAMES
        n_valid = np.clip(valid[:, None] - starts[None, :], 0, N_ENCODER_FRAMES).reshape(-1)
        keep = np.flatnonzero(n_valid > 0)
        options = DecodingOptions(language=self._code(language))
        result = self.whisper.transcribe(None, options, xa=jnp.asarray(windows[keep], self.dtype))
        tokens: list[list[int]] = [[] for _ in range(b)]
        for k, toks in zip(keep, result.tokens, strict=True):
            tokens[k // n_windows].extend(toks)
        return tokens

    def fits(self, tokens: Sequence[int], language: str) -> bool:
        return timing.fits_text_context(self.whisper, tokens, self._code(language))

    def align(
        self, states: np.ndarray, valid: np.ndarray, tokens: Sequence[list[int]], languages: Sequence[str], width: int
    ) -> list[list[timing.Word]]:
        xa = jnp.asarray(states, self.dtype)
        codes = [self._code(lang) for lang in languages]
        config = timing.AlignmentConfig(median_filter_width=width)
        return timing.align_words(self.whisper, xa, valid, tokens, codes, config)


def load_aligner(source=None, *, dtype=jnp.float32) -> WhisperAligner:
    """Loads a Whisper checkpoint (``load_whisper``) as an ``Aligner``; ``dtype``: its compute and weight dtype."""
    return WhisperAligner(load_whisper(source, dtype=dtype), dtype)
