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


class StoreError(BabelgridError, ValueError):
    """A store cannot be opened, created or written as asked."""


class DamageError(StoreError):
    """Stored data failed its integrity check: a chunk or file is missing, truncated or does not match its checksum.
    Nothing read from it was used. ``babelgrid verify <store> --repair`` marks what is damaged as not done, so that
    rerunning the job that wrote it redoes exactly that. ``problem``: what is wrong, in a few words ("missing",
    "checksum mismatch", ...), for verify's table. (``engine.stores.integrity`` describes what each file carries.)"""

    def __init__(self, message: str, problem: str = "corrupt"):
        super().__init__(message)
        self.problem = problem
