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

The decode path is the head the store's model has (``run_decode``): Whisper's decoder here, OWSM's decoder
(``engine.pipelines.decode.owsm``), a CTC head (``engine.pipelines.decode.ctc``). Multi-process runs
(``jax.distributed``) of every path share the work through claim keys in the output store (``engine.runtime.claims``,
``engine.pipelines.decode.store.decode_claimed``): Whisper's work unit is one (language, layer, ln_post), the parts of
every task and decoding from that layer's encoder output. A process that dies leaves its claims to expire, and the
others take its units; process 0 writes the merged files once every unit is done, without a barrier (a dead peer
would hang it). A part is one write (its Parquet metadata is its done marker), so a killed process leaves a part
whole or absent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

from engine.dtypes import DTYPES
from engine.errors import LanguageError
from engine.models.family import FAMILIES, refuse_without_head
from engine.models.fastconformer.canary import load_canary
from engine.models.fastconformer.loaded import load_fastconformer
from engine.models.interface import CTC, DECODER, WINDOW_SECONDS
from engine.models.owsm.loaded import load_owsm
from engine.models.wav2vec2.loaded import load_wav2vec2
from engine.models.whisper.loaded import LoadedWhisper, load_whisper
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.canary import run_canary_decode
from engine.pipelines.decode.config import DecodeConfig, DecodeError, parse_decoding
from engine.pipelines.decode.ctc import run_ctc_decode
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.owsm import run_owsm_decode
from engine.pipelines.decode.references import english_language, english_references, whisper_code
from engine.pipelines.decode.store import Units, check_store, decode_claimed, layer_variants
from engine.pipelines.decode.unit import decode_unit
from engine.pipelines.encode.memory import SAFE_SHARE, available_memory
from engine.runtime.plan import size
from engine.runtime.runs import RunSummary, job_lease
from engine.stores.reader import open_store

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


@dataclasses.dataclass
class DecodeSummary(RunSummary):
    decoded: int = 0  # utterance x part decodings in this run
    windows: int = 0
    tokens: int = 0
    parts_kept: int = 0  # parts kept from an earlier run
    outputs: list[str] = dataclasses.field(default_factory=list)
    table: str = ""
    unit: str = "(language, layer, ln_post)"  # what one work unit of the run's decode path is

    def report(self) -> str:
        lines = [
            f"decoded {self.decoded} utterance-parts ({self.windows} windows, {self.tokens} tokens) in "
            f"{self.seconds:.1f} s; {self.parts_kept} parts kept from an earlier run; skipped: {self.n_skipped}",
            self.work_line(self.unit),
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
    langs, layers = check_store(
        config,
        reader,
        whisper.checkpoint.name,
        whisper.checkpoint.sha256,
        same=reader.info.dims.to_dict() == whisper.dims.to_dict(),
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


def run_decode(config: DecodeConfig, *, whisper: LoadedWhisper | None = None) -> DecodeSummary:
    """Decodes and scores every part of the config; writes the layout of ``engine.pipelines.decode.hypotheses``. The
    run holds the output folder's writer lease (``engine.runtime.lease``).

    The path is the head the store's model has (``engine.models.family.Family``): its decoder (Whisper's, OWSM's,
    which also reads its CTC head for ``--decoding ctc``), else its CTC head (wav2vec2 ``*ForCTC``,
    ``ParakeetForCTC``); a model with neither is refused before anything is written. ``whisper``: the store's
    Whisper model already loaded in ``config.compute_dtype`` (a notebook or test that holds one); by default
    ``config.model`` is loaded.
    """
    info = open_store(config.store).info
    family = FAMILIES[info.family]
    if family.decoder is not None and DECODER in family.store_heads(info):
        refuse_without_head(
            "decode", DECODER, None if whisper is not None else config.model, info,
            "decode needs a decoder (Whisper, OWSM, Canary) or a CTC head (wav2vec2 *ForCTC, ParakeetForCTC models)",
        )  # fmt: skip
        path, load = DECODER_PATHS[family.decoder], family.decoder
        if whisper is not None and load is load_whisper:
            load = functools.partial(_given, whisper)
    elif family.ctc is not None:  # before the lease: a model without the head writes nothing
        refuse_without_head(
            "decode", CTC, config.model, None,
            f"decode reads a {info.family} store through its model's {CTC} head: give the checkpoint that encoded it, "
            "with that head (a *ForCTC model)",
        )  # fmt: skip
        path, load = CTC_PATHS[family.ctc], family.ctc
    else:
        refuse_without_head(
            "decode", DECODER, config.model, info,
            "decode needs a decoder (Whisper, OWSM, Canary) or a CTC head (wav2vec2 *ForCTC, ParakeetForCTC models)",
        )  # fmt: skip
    if CTC in config.decodings and family.ctc is None:
        raise DecodeError(
            f"--decoding ctc reads a CTC head, which {info.family} models have none of; pass greedy or beam:N (ctc: "
            "OWSM stores)"
        )
    check_decode_batch(info, config)  # before the lease and the manifest: a corrected rerun is not refused
    with job_lease(config, "decode") as lease:
        summary = DecodeSummary()
        t0 = time.perf_counter()
        path(config, open_store(config.store), lease, summary, load)
        summary.seconds = time.perf_counter() - t0
        return summary


def check_decode_batch(info, config: DecodeConfig) -> None:
    """Refuses a ``--batch_size`` whose decoder call cannot fit in memory, before anything is written: every window of
    a call holds at least its stored states and the decoder's cross-attention keys and values over them (3 copies
    of f32[window frames, width]) for each beam, the lower bound of any family's decoder or CTC head."""
    beams = max(max(parse_decoding(d) for d in config.decodings), 1)
    frames = math.ceil(info.frame_rate * WINDOW_SECONDS)
    per_window = 3 * frames * info.embed * 4 * beams
    limit, what, _ = available_memory()
    if config.batch_size * per_window <= SAFE_SHARE * limit:
        return
    largest = int(SAFE_SHARE * limit // per_window)
    raise DecodeError(
        f"batch_size {config.batch_size} needs at least {size(config.batch_size * per_window)} per decoder call "
        f"({frames} frames x {info.embed} wide per window, states and cross-attention keys and values, x {beams} "
        f"beams), more than {SAFE_SHARE:.0%} of the {size(limit)} of {what}: pass --batch_size {max(largest, 1)} or "
        "less; nothing was written"
    )


def _given(whisper: LoadedWhisper, source, *, dtype=None) -> LoadedWhisper:
    del source, dtype  # the caller's model, loaded already in config.compute_dtype
    return whisper


def _decode(config: DecodeConfig, reader, lease, summary: DecodeSummary, load) -> None:
    """Whisper's decoder: every (language, layer, ln_post) a work unit, each decoded from the store's audio."""
    whisper = load(config.model, dtype=DTYPES[config.compute_dtype])
    langs, layers = _check(config, reader, whisper)
    dtype = DTYPES[config.compute_dtype]
    top = whisper.dims.n_audio_layer + 1
    english = english_references(config, reader) if "translate" in config.tasks else {}
    variants = layer_variants(layers, config.ln_post, top)
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

    loaded: dict[str, tuple] = {}

    def work(kv, unit: str, pending: dict, done: list[int]) -> None:
        nonlocal loaded
        lang, layer, ln_post = units[unit]
        loaded = decode_unit(
            config, whisper, reader, kv, english, dtype, lang, layer, ln_post, done, pending, loaded, summary
        )

    def finish(kv) -> None:
        codes = {lang: whisper_code(lang, config, whisper) for lang in langs}
        merge(kv, config, reader, langs, codes, variants, summary)

    decode_claimed(
        config,
        reader,
        lease,
        summary,
        _manifest(config, reader, whisper),
        Units(units, part_keys),
        work,
        finish,
        fields=MANIFEST_FIELDS,
    )


# The decode path of each head a family offers (engine.models.family.Family), by the head's loader: a path is
# called as path(config, reader, lease, summary, load) under the output's writer lease.
DECODER_PATHS = {load_whisper: _decode, load_owsm: run_owsm_decode, load_canary: run_canary_decode}  # tokens
CTC_PATHS = {load_wav2vec2: run_ctc_decode, load_fastconformer: run_ctc_decode}  # the per-layer CTC logit lens
