"""Early exit and zero-shot ASR / speech translation over a layer store's languages (``jobs/decode.py``).

For every (language, layer, ln_post, task, decoding) part, each utterance is decoded from encoder layer ``layer``
(``DecodingOptions(encoder_layer=layer, apply_ln_post=ln_post)``), window by window for audio over 30 s, the windows'
texts joined; then scored against the store's transcription (transcribe) or the English transcription of the same id
(translate) with ``engine.text.metrics`` (jiwer, Whisper's normalisers, sacrebleu).

Exactness (``source="audio"``, the only source): a layer store keeps each utterance's valid frames only, but
Whisper's decoder attends to the whole 30 s window, padding frames included. So the encoder is recomputed up to the
layer from the audio the store's utterance table points to (column ``path``), with the store's front end, model and
compute dtype: its valid frames are the store's states (``tests/jobs/test_decode.py`` checks both, and the tokens).
The store supplies the utterance list, the done flags, the transcriptions and the layers on offer.

Output: the layout in ``engine/pipelines/decode/hypotheses.py`` and BUILD.md. Resume: a part is kept when the
utterances done in the store are the ones it was made from; the merged files are rebuilt from the parts at the end.

Multi-process runs (``jax.distributed``) share the work through claim keys in the output store
(``engine.runtime.claims``): a work unit is one (language, layer, ln_post), the parts of every task and decoding from
that layer's encoder output. A process that dies leaves its claims to expire, and the others take its units; process 0
writes the merged files once every unit is done, without a barrier (a dead peer would hang it). A part is one write
(its Parquet metadata is its done marker), so a killed process leaves a part whole or absent.
"""

from __future__ import annotations

import dataclasses
import importlib
import time

import numpy as np

from engine.dtypes import DTYPES
from engine.errors import LanguageError
from engine.models.family import CTC, DECODER, refuse_without_head
from engine.models.whisper.loaded import LoadedWhisper, load_whisper
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.references import english_language, english_references, whisper_code
from engine.pipelines.decode.unit import decode_unit
from engine.runtime.claims import WorkClaims
from engine.runtime.parallel import is_process_zero
from engine.runtime.runs import RunSummary, open_claimed_run, progress_bar, writer_lease
from engine.runtime.units import UnitLoop
from engine.stores.kv import open_kvstore
from engine.stores.parts import read_part
from engine.stores.reader import open_store
from engine.stores.schema import is_done

FORMAT_NAME = "babelgrid-hypotheses"
FORMAT_VERSION = 1
MANIFEST_FIELDS = (
    "format",
    "version",
    "model_name",
    "checkpoint_sha256",
    "source",
    "language",
    "decode_as",
    "patience",
    "length_penalty",
    "max_new_tokens",
    "compute_dtype",
)


# Families whose decoder is not Whisper's decode through their own run ("module:function", called as
# function(config, reader, summary) under the output's writer lease): OWSM's attention decoder.
# Families decoded by a path of their own: (its "module:function", the head the given model must have, if any).
# Whisper is this module's own path; a family in neither place has nothing to decode with and is refused.
FAMILY_DECODERS = {
    "owsm": ("engine.pipelines.decode.owsm:run_owsm_decode", None),  # its decoder (and --decoding ctc)
    "wav2vec2": ("engine.pipelines.decode.ctc:run_ctc_decode", CTC),  # the CTC logit lens of *ForCTC models
}


@dataclasses.dataclass
class DecodeSummary(RunSummary):
    decoded: int = 0  # utterance x part decodings in this run
    windows: int = 0
    tokens: int = 0
    parts_kept: int = 0  # parts kept from an earlier run
    outputs: list[str] = dataclasses.field(default_factory=list)
    table: str = ""

    def report(self) -> str:
        lines = [
            f"decoded {self.decoded} utterance-parts ({self.windows} windows, {self.tokens} tokens) in "
            f"{self.seconds:.1f} s; {self.parts_kept} parts kept from an earlier run; skipped: {self.n_skipped}",
            self.work_line("(language, layer, ln_post)"),
        ]
        return "\n".join([*lines, *self.skip_lines(), self.table])


def _manifest(config: DecodeConfig, reader, whisper) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "store": reader.url,
        "model_name": whisper.checkpoint.name,
        "checkpoint_sha256": whisper.checkpoint.sha256,
        "source": config.source,
        "exact": True,  # source audio: the decoder sees the window's padding frames as Whisper computes them
        "language": config.language,
        "decode_as": {a: b for a, b in config.decode_as},
        "patience": config.patience,
        "length_penalty": config.length_penalty,
        "max_new_tokens": config.max_new_tokens,
        "compute_dtype": config.compute_dtype,
    }


def _check(config: DecodeConfig, reader, whisper) -> tuple[list[str], list[int]]:
    info = reader.info
    if info.checkpoint_sha256 != whisper.checkpoint.sha256 or info.dims.to_dict() != whisper.dims.to_dict():
        raise DecodeError(
            f"the layer store was written by model {info.model_name!r} (sha256 {info.checkpoint_sha256[:12]}), but the "
            f"model given is {whisper.checkpoint.name!r}; pass the store's model with --model"
        )
    langs = list(config.langs) if config.langs else reader.languages()
    missing = sorted(set(langs) - set(reader.languages()))
    if missing:
        raise DecodeError(f"languages {missing} are not in the layer store, which has {reader.languages()}")
    layers = list(config.layers) if config.layers is not None else list(info.layers)
    lacking = [la for la in layers if la not in info.layers]
    if lacking:
        raise DecodeError(
            f"layers {lacking} are not in the layer store, which holds {list(info.layers)}; pass --layers from those "
            "(or encode the store with them)"
        )
    if "ctc" in config.decodings:
        raise DecodeError(
            "--decoding ctc reads a CTC head, which Whisper has none of; pass greedy or beam:N (ctc: OWSM stores)"
        )
    for lang, code in config.decode_as:
        try:
            whisper.tokenizer.language_token(code)
        except LanguageError:
            raise DecodeError(
                f"--decode_as {lang}={code}: {code!r} is not a language of this model's tokenizer; use a Whisper code "
                "such as kk or en"
            ) from None
    if "translate" in config.tasks and config.references is None and english_language(reader) is None:
        raise DecodeError(
            "task translate needs English references: the store has no English language; pass --references with a "
            "TSV file of id<TAB>English text"
        )
    return langs, layers


def _variants(layers, ln_post: str, top: int) -> list[tuple[int, bool]]:
    """(layer, ln_post) pairs: layer L+1 is ln_post's output already, so it is decoded once, marked on."""
    wanted = {"on": (True,), "off": (False,), "both": (True, False)}[ln_post]
    out = []
    for layer in layers:
        out += [(layer, True)] if layer == top else [(layer, ln) for ln in wanted]
    return out


def run_decode(config: DecodeConfig, *, whisper: LoadedWhisper | None = None) -> DecodeSummary:
    """Decodes and scores every part of the config; writes the layout of ``engine.pipelines.decode.hypotheses``. The
    run holds the output folder's writer lease (``engine.runtime.lease``).

    ``whisper``: the store's model already loaded in ``config.compute_dtype`` (a notebook or test that holds one);
    by default ``config.model`` is loaded.
    """
    info = open_store(config.store).info
    if info.family in FAMILY_DECODERS:
        path, head = FAMILY_DECODERS[info.family]
        if head is not None:  # before the lease: a model without the head writes nothing
            refuse_without_head(
                "decode", head, config.model, None,
                f"decode reads a {info.family} store through its model's {head} head: give that checkpoint",
            )  # fmt: skip
        module, _, function = path.partition(":")
        with writer_lease(config.run.out, "decode", config.run.break_lease):
            summary = DecodeSummary()
            getattr(importlib.import_module(module), function)(config, open_store(config.store), summary)
            return summary
    refuse_without_head(
        "decode", DECODER, None if whisper is not None else config.model, info,
        "decode needs a decoder (Whisper, OWSM) or a CTC head (wav2vec2 *ForCTC models)",
    )  # fmt: skip
    with writer_lease(config.run.out, "decode", config.run.break_lease) as lease:
        return _decode(config, lease, whisper)


def _decode(config: DecodeConfig, lease, whisper: LoadedWhisper | None) -> DecodeSummary:
    t0 = time.perf_counter()
    summary = DecodeSummary()
    reader = open_store(config.store)
    whisper = whisper or load_whisper(config.model, dtype=DTYPES[config.compute_dtype])
    langs, layers = _check(config, reader, whisper)
    dtype = DTYPES[config.compute_dtype]
    top = whisper.dims.n_audio_layer + 1
    english = english_references(config, reader) if "translate" in config.tasks else {}
    _, kv = open_kvstore(config.run.out)
    claims = WorkClaims(kv, config.run.out, "decode", ttl=config.run.claim_ttl)

    open_claimed_run(
        "babelgrid-decode-manifest", claims, kv, hyp.MANIFEST, _manifest(config, reader, whisper), config.run.out,
        fields=MANIFEST_FIELDS, error=DecodeError, what="decode folder",
    )  # fmt: skip
    variants = _variants(layers, config.ln_post, top)
    # A snapshot of the utterances done in the store: what each part is made from, and what a kept part must list.
    done = {lang: np.flatnonzero(is_done(reader.lengths(lang))).tolist() for lang in langs}
    # Work units (engine.runtime.claims): one (language, layer, ln_post) each, language by language, so that the
    # processes mostly share one language's audio at a time.
    units = {
        f"{lang}/L{layer:02d}-ln_{'on' if ln_post else 'off'}": (lang, layer, ln_post)
        for lang in langs
        for layer, ln_post in variants
    }

    def part_keys(unit: str) -> dict[tuple[str, str], str]:
        lang, layer, ln_post = units[unit]
        return {
            (task, decoding): hyp.part_key(lang, task, decoding, layer, ln_post)
            for task in config.tasks
            for decoding in config.decodings
        }

    def kept(key: str, lang: str) -> bool:
        old = read_part(kv, key, config.run.out, "decode")
        return old is not None and old[1]["done"] == done[lang]

    def unit_done(unit: str) -> bool:
        return all(kept(key, units[unit][0]) for key in part_keys(unit).values())

    bar = progress_bar(len(units) * len(config.tasks) * len(config.decodings), "decode", "part", config.run.progress)
    pending = {}  # unit -> {(task, decoding): key} of the parts not kept from an earlier run
    for unit in units:
        lang = units[unit][0]
        pending[unit] = {part: key for part, key in part_keys(unit).items() if not kept(key, lang)}
        if is_process_zero():  # every process sees the parts kept from an earlier run; one counts them
            summary.parts_kept += len(part_keys(unit)) - len(pending[unit])
            bar.update(len(part_keys(unit)) - len(pending[unit]))
    loaded: dict[str, tuple] = {}
    with UnitLoop(claims, lease, summary, bar) as loop:
        for claimed in loop.rounds([u for u in units if pending[u]], unit_done):
            for claim in claimed:
                lang, layer, ln_post = units[claim.unit]
                loaded = decode_unit(
                    config, whisper, reader, kv, english, dtype, lang, layer, ln_post, done[lang],
                    pending[claim.unit], loaded, summary,
                )  # fmt: skip
                loop.done(claim, progress=len(pending[claim.unit]))
    if is_process_zero():  # every unit is done: rounds() ends only when no other process holds one
        codes = {lang: whisper_code(lang, config, whisper) for lang in langs}
        merge(kv, config, reader, langs, codes, variants, summary)
    summary.seconds = time.perf_counter() - t0
    return summary
