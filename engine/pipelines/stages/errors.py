"""The errors that a shared stage raises and a job's light config raises too: here, so that the config (``--help``)
loads no JAX and the stage imports no job room."""

from __future__ import annotations

from engine.errors import BabelgridError


class DecodeError(BabelgridError, ValueError):
    """The store, model, settings or output folder cannot be used for decoding."""


class RetrievalError(BabelgridError, ValueError):
    """Retrieval cannot run as asked: unknown measure, layer or language, no output folder, bad scores."""
