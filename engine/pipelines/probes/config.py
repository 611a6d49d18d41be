"""The probes job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate

PROBES = ("lid", "samediff", "cca")
WORD_PROBES = ("samediff", "cca")  # the probes that need --words
FOLDS = 5  # lid: outer folds, split by utterance id (engine.pipelines.stages.lid.FOLDS; here, --help loads no JAX)
MIN_CHARS = (
    3  # samediff, cca: kamperh's Buckeye lists use 5 and 0.5 s; the demo's repeated words are short function words
)
MAX_TOKENS = 2000  # per language: N^2 / 2 pairs, and N x word frames x embed floats held per layer


class ProbesError(BabelgridError, ValueError):
    """The probes cannot run as asked: unknown probe, language or layer, word probes without words."""


@dataclasses.dataclass(frozen=True)
class ProbesConfig:
    """store: layer store; out: output folder or kvstore URL; probes: names of ``PROBES`` (None = lid, and the word
    probes when ``words`` is given); words: align job output (``<lang>/words.parquet``); langs / layers: None = all
    of the store; folds: LID's outer folds; min_chars / max_tokens: samediff's word filter and sample per language;
    block: utterances per store read; seed: folds and token samples."""

    store: str = option(required=True, help="layer store written by the encode job: local path or kvstore URL",
                        reads=True)  # fmt: skip
    probes: tuple[str, ...] | None = option(
        None, f"probes among {','.join(PROBES)} (default: lid, + samediff,cca with --words)", choices=PROBES,
        parse="list",
    )  # fmt: skip
    words: str | None = option(None, "word tokens: the output folder of jobs.align (<lang>/words.parquet)",
                               reads=True)  # fmt: skip
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    layers: tuple[int, ...] | None = option(
        None, "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)", parse="layers"
    )
    folds: int = option(FOLDS, "lid: outer folds, split by utterance id", minimum=3)
    min_chars: int = option(MIN_CHARS, "samediff, cca: shortest word type kept, in letters", minimum=1)
    max_tokens: int = option(MAX_TOKENS, "samediff, cca: word tokens sampled per language at most", minimum=2)
    block: int = option(32, "utterances per store read", minimum=1)
    seed: int = option(0, "seed of the folds and of the token samples")
    run: RunOptions = RunOptions()

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ProbesError("probes needs an output folder: run.out (--out)")
        needs = sorted(set(self.probes or ()) & set(WORD_PROBES))
        if needs and not self.words:
            raise ProbesError(
                f"probes {needs} need word tokens: give words (--words, the output folder of python -m jobs.align "
                "--store STORE --out WORDS), or run --probes lid"
            )

    @property
    def chosen(self) -> tuple[str, ...]:
        if self.probes is not None:
            return tuple(p for p in PROBES if p in self.probes)
        return PROBES if self.words else ("lid",)
