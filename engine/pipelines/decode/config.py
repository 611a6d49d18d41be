"""The decode job's settings (``DecodeConfig``) and the one-line error of a value it cannot run with."""

from __future__ import annotations

import dataclasses
import pathlib

from engine.models.interface import TASKS
from engine.pipelines.stages.errors import DecodeError
from engine.runtime.options import ConfigError, RunOptions, option, validate

SOURCES = ("audio",)
LN_POST = ("on", "off", "both")
LANGUAGE_MODES = ("forced", "detect")
COMPUTE_DTYPES = ("float32", "bfloat16")


def parse_decoding(decoding: str) -> int:
    """'greedy' -> 1, 'beam:5' -> 5 (the beam size); 'ctc' (a CTC head's logit lens, OWSM stores) -> 0."""
    if decoding == "greedy":
        return 1
    if decoding == "ctc":
        return 0
    head, _, n = decoding.partition(":")
    if head == "beam" and n.isdigit() and int(n) >= 2:
        return int(n)
    raise DecodeError(
        f"decoding must be 'greedy', 'beam:N' with N >= 2 (e.g. beam:5) or 'ctc' (OWSM), got {decoding!r}"
    )


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """What to decode, from which layers and how; ``run.out`` is the output folder (local path or TensorStore kvstore
    URL)."""

    store: str = option(
        help="layer store written by the encode job; its utterance table points to the audio", required=True, reads=True
    )
    run: RunOptions = RunOptions()
    model: str | None = option(
        None,
        "the store's model: hub id, HF folder, CTranslate2 folder or OpenAI .pt "
        "(default: the packaged whisper-base, the demo store's)",
    )
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    layers: tuple[int, ...] | None = option(
        None, "encoder layers of the store to decode from: a list (2,4), a range (2-7) or all", parse="layers"
    )
    tasks: tuple[str, ...] = option(
        ("transcribe",),
        "comma-separated: transcribe, translate (to English), phones (IPA, a phone recogniser's: POWSM)",
        choices=TASKS,
        parse="list",
    )
    ln_post: str = option("on", "apply ln_post to intermediate layers (L+1 has it already); both doubles the work",
                          choices=LN_POST)  # fmt: skip
    decodings: tuple[str, ...] = option(
        ("greedy",),
        "comma-separated: greedy, beam:N (Whisper: CTranslate2's beam search; OWSM: ESPnet's), ctc (OWSM's CTC head)",
        parse="list", flag="decoding",
    )  # fmt: skip
    patience: float = option(1.0, "beam search: stop after round(N * patience) finished hypotheses")
    length_penalty: float = option(1.0, "beam search: rank by logprob / length ** length_penalty (0: no penalty)")
    language: str = option("forced", "forced: the store language's code; detect: per window", choices=LANGUAGE_MODES)
    # (store language, Whisper code) pairs; "lang=code" items are read as pairs.
    decode_as: tuple[tuple[str, str], ...] = option(
        (), "language tokens for languages Whisper lacks, e.g. ky=kk,ga=en (recorded)", parse="list"
    )
    max_new_tokens: int = option(224, "tokens per 30 s window at most (CTranslate2's default)", minimum=1)
    source: str = option("audio", "audio: recompute the encoder from the store's audio (exact)", choices=SOURCES)
    references: str | None = option(None, "TSV id<TAB>English text for translate (default: the store's English)")
    batch_size: int = option(8, "30 s windows per decoder call", minimum=1)
    compute_dtype: str = option("float32", "model dtype on the device", choices=COMPUTE_DTYPES)
    report_samples: int = option(3, "utterances per language shown layer by layer in report.md")

    def __post_init__(self):
        validate(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("tasks", "decodings"):  # a list flag given as '' or 'all' parses to None: the default
            if not getattr(self, name):
                object.__setattr__(self, name, defaults[name])
        object.__setattr__(self, "decode_as", tuple(_language_pair(item) for item in self.decode_as or ()))
        for decoding in self.decodings:
            parse_decoding(decoding)
        references_path(self.references)
        if not self.run.out:
            raise ConfigError("decode needs an output folder: run.out (--out)")


def _language_pair(item) -> tuple[str, str]:
    """("ky", "kk") from itself or from "ky=kk" (the flag's form)."""
    if not isinstance(item, str):
        return tuple(item)
    lang, sep, code = item.partition("=")
    if not sep or not lang.strip() or not code.strip():
        raise ConfigError(f"decode_as: {item!r} is not lang=code, e.g. ky=kk")
    return lang.strip(), code.strip()


def references_path(path: str | None) -> str | None:
    """``path`` if it is None or a file, else a DecodeError naming it."""
    if path is not None and not pathlib.Path(path).is_file():
        raise DecodeError(f"--references {path!r} is not a file; pass a TSV of id<TAB>English text")
    return path
