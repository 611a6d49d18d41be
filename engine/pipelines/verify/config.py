"""The verify job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate


class VerifyError(BabelgridError, ValueError):
    """A location cannot be verified as asked (nothing babelgrid wrote is there)."""


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """What to scrub: a layer store, a similarity store or a job's output folder, local or ``s3://`` / ``gs://``.

    repair: mark what is damaged as not done (utterances, pair-layers, parts), so that rerunning the job that wrote
      it redoes exactly that; rebuild a damaged ``lengths`` chunk from the states that verify cleanly.
    """

    location: str = option(help="a layer store, similarity store or job output: local path or kvstore URL",
                           required=True)  # fmt: skip
    repair: bool = option(False, "mark the damaged utterances, pair-layers and parts as not done, for a rerun to redo")
    run: RunOptions = RunOptions()

    def __post_init__(self):
        validate(self)
