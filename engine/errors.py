"""Exceptions babelgrid raises for bad input, each naming the thing and the fix."""


class BabelgridError(Exception):
    """Base class of every error babelgrid raises on purpose."""


class AudioError(BabelgridError, ValueError):
    """An audio file cannot be used: missing, corrupt, empty, silent, ..."""


class CheckpointError(BabelgridError, ValueError):
    """A checkpoint cannot be loaded: unknown layout, truncated, inconsistent."""


class ShapeError(BabelgridError, ValueError):
    """An array does not have the shape a function documents."""


class LanguageError(BabelgridError, ValueError):
    """A language code the model or dataset does not know."""
