"""Canary's Transformer decoder behind ``engine.models.interface.Decoder`` (decode's one decoder path).

Prompt (``LoadedCanary.prompt``): source language, target language, ``<|pnc|>``; task ``transcribe`` is source =
target = the store language's code (``fr_fr`` -> ``fr``; ``--decode_as fr_fr=xx`` names another), ``translate`` is
target English, so English itself is not translated. Memory: the decoder's cross-attention masks every frame past a
window's valid ones and the encoder masks a batch's padding, so the store's valid frames are all it reads
(``reads_padding`` off: nothing is recomputed from audio), layer L as ``CanaryModel`` reads it and any other layer
the same way (no final norm: ``ln_post`` off). Search: greedy or transformers' beam search
(``generate(num_beams=N, length_penalty=...)``; no patience); ``avg_logprob`` the mean log-probability of the tokens
and the eos after them (teacher-forced). Cohere ASR (``engine.models.fastconformer.cohere``) decodes through the same
class with its own prompt and declares ``transcribe`` its only task (``COHERE_CAPS``): it has no translation prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp

from engine.errors import CheckpointError, LanguageError
from engine.languages import fleurs_to_whisper
from engine.models.fastconformer.canary import LoadedCanary, load_canary
from engine.models.interface import DecoderCaps, Search

TARGET = "en"  # translate: X -> English
CAPS = DecoderCaps(beam_options=("length_penalty",), reads_padding=False, ln_post=False, training=True)
COHERE_CAPS = dataclasses.replace(CAPS, tasks=("transcribe",))


@dataclasses.dataclass(frozen=True, eq=False)
class CanaryTextDecoder:
    """``Decoder`` over a ``LoadedCanary`` (``loaded``)."""

    loaded: LoadedCanary
    caps: DecoderCaps = CAPS
    manifest_extra: tuple = (("head", "decoder"), ("punctuation", True))

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out

    @property
    def window_frames(self) -> int:
        return self.loaded.window_frames()

    def same_store(self, info) -> bool:
        return True  # the checkpoint's sha256 names the encoder

    def language(self, lang: str, decode_as: dict[str, str]) -> str | None:
        """Canary's code of store language ``lang`` (``decode_as`` first, else its ISO 639-1 code); None if the
        tokenizer has no ``<|xx|>`` token for it."""
        try:
            code = decode_as.get(lang) or fleurs_to_whisper(lang)
        except LanguageError:
            code = lang
        known = self.loaded.languages()
        if code in known:
            return code
        if lang in decode_as:
            raise LanguageError(
                f"{code!r} has no <|{code}|> token in this Canary model, which knows {', '.join(known)}"
            )
        return None

    def score_language(self, language: str) -> None:
        return None  # the store language's own code picks the normaliser

    def prompt(self, task: str, language: str) -> list[int]:
        if task == "translate" and language == TARGET:
            raise LanguageError(
                "Canary's decode here translates into English, and this language is English; pass --langs without it "
                "(its transcriptions stay the references)"
            )
        try:
            return self.loaded.prompt(language, language if task == "transcribe" else TARGET)
        except CheckpointError as e:
            raise LanguageError(str(e)) from None

    def search(self, memory, valid, task: str, languages: Sequence[str | None], search: Search):
        """``(tokens per row, avg_logprob per row, language per row)`` of memory ``f32[batch, frame, width]`` masked
        past ``valid``; one language for the batch."""
        canary, prompt = self.loaded, self.prompt(task, languages[0])
        if search.beam == 1:
            ids, n = canary.greedy(memory, valid, prompt, search.max_new_tokens)
        else:
            ids, n, _ = canary.beam(memory, valid, prompt, search.beam, search.max_new_tokens, search.length_penalty)
        avg = canary.avg_logprob(memory, valid, prompt, ids, n)
        return [ids[r, : n[r]].tolist() for r in range(len(ids))], avg.tolist(), list(languages)

    def text(self, ids: Sequence[int]) -> str:
        return self.loaded.text(ids)


def load_decoder(source, *, dtype=jnp.float32) -> CanaryTextDecoder:
    loaded = load_canary(source, dtype=dtype)
    return CanaryTextDecoder(loaded, caps=CAPS if loaded.translates else COHERE_CAPS)
