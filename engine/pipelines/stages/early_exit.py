"""Early exit: a model's text decoder reading an encoder layer, and what every job that scores its text decides the
same way (the decode job, the sae job's early exit, the heads job's WER/CER).

- ``has_decoder``: whether the model that wrote a layer store has a text decoder, asked of the registry
  (``Family.store_heads``): a family may hold models with and without one (Canary and Parakeet), so the family's
  decoder loader alone does not say;
- ``cut_windows``, ``search_windows``: a layer's stored valid frames cut into the decoder's windows and decoded in
  batches of a fixed size, masked past each window's frames (a decoder that masks the padding: Canary's);
- ``score_language``, ``score_normalizer``: which language's normaliser scores a store language's text (the prompt
  language's where the decoder says its codes are the normalisers', else the store language's own,
  ``engine.languages.text_code``).
"""

from __future__ import annotations

import numpy as np

from engine.languages import text_code
from engine.models.family import FAMILIES
from engine.models.interface import DECODER, Search
from engine.text import metrics

PAD_FRAMES = 16  # such a batch's memory is padded to a multiple of this many frames (fewer compilations)


def has_decoder(info) -> bool:
    """Whether the model that wrote a layer store (``info``: its ``StoreInfo``) has a text decoder: its family has a
    decoder loader and the store's model carries the decoder (``Family.store_heads``)."""
    family = FAMILIES[info.family]
    return family.decoder is not None and DECODER in family.store_heads(info)


def cut_windows(states: np.ndarray, n: int, per_window: int) -> list[np.ndarray]:
    """One utterance's valid frames ``states[:n]`` cut into its encoder windows (every full one ``per_window``)."""
    return [states[start : min(start + per_window, n)] for start in range(0, max(n, 1), per_window)]


def search_windows(decoder, windows: list[np.ndarray], task: str, language: str, search: Search, size: int):
    """Tokens, mean log-probabilities and labels of ``windows`` (f32[frame, width] each), in batches of ``size`` rows
    (the last padded with copies of its first), masked past each window's frames."""
    tokens, logprobs, labels = [], [], []
    for start in range(0, len(windows), size):
        chunk = windows[start : start + size]
        frames = max(len(w) for w in chunk)
        frames += -frames % PAD_FRAMES
        memory = np.zeros((size, frames, chunk[0].shape[-1]), np.float32)
        valid = np.zeros(size, np.int32)
        for r in range(size):
            w = chunk[r] if r < len(chunk) else chunk[0]
            memory[r, : len(w)], valid[r] = w, len(w)
        ids, avg, label = decoder.search(memory, valid, task, [language] * size, search)
        tokens += ids[: len(chunk)]
        logprobs += list(avg)[: len(chunk)]
        labels += list(label)[: len(chunk)]
    return tokens, logprobs, labels


def score_language(decoder, lang: str, language: str | None) -> str | None:
    """The code whose normaliser scores ``lang``'s rows: the prompt language's where the decoder's codes are the
    normalisers' (``Decoder.score_language``), else the store language's ``text_code``."""
    if language is None:
        return None
    return decoder.score_language(language) or text_code(lang)


def score_normalizer(decoder, lang: str, language: str | None):
    """Whisper's normaliser of ``score_language``'s code, or None where the decoder has no token for ``lang``
    (``language`` None: its rows are not decoded)."""
    code = score_language(decoder, lang, language)
    return None if code is None else metrics.normalizer_for(code)
