"""The guard the headline job's loops run under: the encode job's batches and the seqsim job's kernel calls refuse
implicit host-to-device copies, as big_vision runs its loops (BUILD.md, "Data parallelism"). What they need on the
device they put there with ``jax.device_put``; a copy made otherwise is a babelgrid bug: an extra host-to-device
copy per pair or per batch on an accelerator, whose cost no CPU run shows (none has been measured on one).

``BABELGRID_TRANSFER_GUARD`` (the environment) sets the level: ``disallow`` (the default: the copy stops the run with
a ``TransferGuardError`` that says so), ``log`` (JAX logs each such copy, and the run goes on) or ``allow`` (off).
A run that meets one should go on with ``log`` and report the message; the tests run with the default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax

from engine.errors import BabelgridError

ENV = "BABELGRID_TRANSFER_GUARD"
LEVELS = ("disallow", "log", "allow")
REFUSED = "Disallowed host-to-device transfer"  # JAX's words for a copy the guard refused


class TransferGuardError(BabelgridError, RuntimeError):
    """An implicit host-to-device copy inside a guarded loop (a babelgrid bug, not the user's input)."""


def guard_level() -> str:
    """The level of ``ENV``: ``disallow`` where it is unset or empty; another value than ``LEVELS`` is an error."""
    level = os.environ.get(ENV) or "disallow"
    if level not in LEVELS:
        raise BabelgridError(f"{ENV}={level!r}: use one of {', '.join(LEVELS)}")
    return level


@contextlib.contextmanager
def guarded_loop(where: str) -> Iterator[None]:
    """Runs its body with implicit host-to-device copies at ``guard_level()``; a refused one is re-raised as a
    ``TransferGuardError`` naming ``where`` (the loop) and how to run on."""
    try:
        with jax.transfer_guard_host_to_device(guard_level()):
            yield
    except jax.errors.JaxRuntimeError as e:
        if REFUSED not in str(e):
            raise
        jax_says = str(e).split("\n", 1)[0]
        raise TransferGuardError(
            f"{where}: an implicit host-to-device copy, which babelgrid's loops never make on purpose (a bug: please "
            f"report this message). JAX: {jax_says}. To run on meanwhile, set {ENV}=log (JAX logs each such copy) "
            f"or {ENV}=allow"
        ) from e
