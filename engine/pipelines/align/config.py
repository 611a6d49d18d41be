"""The align job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import ConfigError, RunOptions, option, validate
from engine.stores.words import SUBTITLE_FORMATS

TRANSCRIPT_SOURCES = ("store", "decode")
COMPUTE_DTYPES = ("float32", "bfloat16")


class AlignError(BabelgridError, ValueError):
    """The store, model or output folder cannot be used for alignment."""


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """What to align and how; ``run.out`` is the output folder (local path or TensorStore kvstore URL)."""

    store: str = option(help="layer store written by the encode job (must hold the final layer)", required=True,
                        reads=True)  # fmt: skip
    run: RunOptions = RunOptions()
    model: str | None = option(
        None,
        "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt "
        "(default: the packaged whisper-base, the demo store's)",
    )
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    transcripts: str = option("store", "store: the dataset's text; decode: greedy", choices=TRANSCRIPT_SOURCES)
    batch_size: int = option(8, "utterances per decoder call", minimum=1)
    chunk: int = option(64, "utterances per part file (the unit of resume)", minimum=1)
    median_filter_width: int = option(7, "odd width of the median filter over frames (Whisper: 7)")
    compute_dtype: str = option("float32", "model dtype on the device", choices=COMPUTE_DTYPES)
    subtitles: tuple[str, ...] = option(
        (), "also write per-utterance subtitle files: srt, vtt or both", choices=SUBTITLE_FORMATS, parse="list"
    )

    def __post_init__(self):
        validate(self)
        if self.subtitles is None:  # the flag's '' (none) parses to None
            object.__setattr__(self, "subtitles", ())
        if not self.run.out:
            raise ConfigError("align needs an output folder: run.out (--out)")
