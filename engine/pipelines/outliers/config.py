"""The outliers job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

K = 5.0  # an outlier dimension's mean magnitude exceeds K times the median dimension's (docs/outliers.md)
TRANSLATIONS = 32  # ids shared by two or more languages whose translations the cosine shares are measured on
FRAME_PAIRS = 2000  # random frame pairs a language, per layer, for anisotropy
TOP = 10  # outlier dimensions listed per (layer, language) in dimensions.csv at most


class OutliersError(BabelgridError, ValueError):
    """The outliers job cannot run as asked: an unknown layer or language, a store with too little, other settings."""


@dataclasses.dataclass(frozen=True)
class OutliersConfig:
    """Which store's layers and languages to measure for outlier dimensions, anisotropy and effective rank
    (``engine.pipelines.outliers``; definitions in ``kernels.outliers`` and docs/outliers.md)."""

    store: str = option(help="layer store written by the encode job: local path or kvstore URL", required=True,
                        reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    langs: tuple[str, ...] | None = option(None, "comma-separated language codes of the store, or 'all'",
                                           parse="list")  # fmt: skip
    layers: tuple[int, ...] | None = option(
        None, "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)", parse="layers"
    )
    k: float = option(K, "a dimension is an outlier where its mean magnitude (mean |x_i| over the frames) exceeds k "
                      "times the median dimension's", positive=True)  # fmt: skip
    translations: int = option(
        TRANSLATIONS, "utterance ids shared by two or more of the run's languages, sampled (seeded), whose "
        "translations the cosine shares are measured on: every pair of their readings across languages", minimum=0,
    )  # fmt: skip
    frame_pairs: int = option(FRAME_PAIRS, "random frame pairs a language for anisotropy (seeded; frames of two "
                              "different utterances where it has two)", minimum=1)  # fmt: skip
    top: int = option(TOP, "outlier dimensions listed per layer and language in dimensions.csv at most (all are "
                      "counted in outliers.csv)", minimum=1)  # fmt: skip
    seed: int = option(0, "seed of the translation ids and the frame pairs (the same pairs at every layer)")
    block: int = option(16, "utterances per store read", minimum=1)

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise OutliersError("outliers needs an output folder: run.out (--out)")
