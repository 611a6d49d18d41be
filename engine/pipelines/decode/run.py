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
utterances done
in the store are the ones it was made from; the merged files are rebuilt from the parts at the end.

Multi-process runs (``jax.distributed``) share the work through claim keys in the output store
(``engine.runtime.claims``): a work unit is one (language, layer, ln_post), the parts of every task and decoding from
that layer's encoder output. A process that dies leaves its claims to expire, and the others take its units; process 0
writes the merged files once every unit is done, without a barrier (a dead peer would hang it). A part is one write
(its Parquet metadata is its done marker), so a killed process leaves a part whole or absent.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import pathlib
import time
import zlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from engine.data.audio import AudioNotFoundError, EmptyAudioError, SilentAudioError, load_audio
from engine.dtypes import DTYPES
from engine.errors import AudioError, BabelgridError, LanguageError
from engine.languages import fleurs_to_whisper
from engine.models.whisper.decoding import TASKS, DecodingOptions
from engine.models.whisper.loaded import LoadedWhisper, load_whisper
from engine.pipelines.decode import hypotheses as hyp
from engine.runtime.claims import DEFAULT_CLAIM_TTL, WorkClaims, rounds
from engine.runtime.faults import fault_point
from engine.runtime.options import check_choice
from engine.runtime.parallel import is_process_zero
from engine.runtime.parts import read_part, table_bytes
from engine.runtime.runs import RunSummary, process_zero_first, progress_bar, writer_lease
from engine.stores.kv import create_or_compare, open_kvstore, write_value
from engine.stores.reader import open_store
from engine.stores.schema import is_done
from engine.text import metrics as text_metrics

SOURCES = ("audio",)
LN_POST = ("on", "off", "both")
LANGUAGE_MODES = ("forced", "detect")
COMPUTE_DTYPES = ("float32", "bfloat16")
METRICS = ("wer", "cer", "bleu", "chrf")
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
log = logging.getLogger(__name__)


class DecodeError(BabelgridError, ValueError):
    """The store, model, settings or output folder cannot be used for decoding."""


def parse_decoding(decoding: str) -> int:
    """'greedy' -> 1, 'beam:5' -> 5 (the beam size)."""
    if decoding == "greedy":
        return 1
    head, _, n = decoding.partition(":")
    if head == "beam" and n.isdigit() and int(n) >= 2:
        return int(n)
    raise DecodeError(f"decoding must be 'greedy' or 'beam:N' with N >= 2 (e.g. beam:5), got {decoding!r}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    store: str  # layer store URL written by the encode job
    out: str  # output folder or kvstore URL
    model: str | None = None  # checkpoint source; None = the packaged whisper-base. Must be the store's model.
    langs: tuple[str, ...] | None = None  # None = every language of the store
    layers: tuple[int, ...] | None = None  # None = every layer of the store
    tasks: tuple[str, ...] = ("transcribe",)
    ln_post: str = "both"  # apply ln_post to intermediate layers: on, off or both (layer L+1 has it already)
    decodings: tuple[str, ...] = ("greedy",)  # greedy and/or beam:N
    patience: float = 1.0  # beam search (Whisper / CTranslate2 semantics)
    length_penalty: float = 1.0
    language: str = "forced"  # forced: the store language's Whisper code; detect: per window
    decode_as: tuple[tuple[str, str], ...] = ()  # (store language, Whisper code) for languages Whisper lacks
    max_new_tokens: int = 224
    source: str = "audio"
    references: str | None = None  # TSV (id, text) of English references for translate; else the store's English
    batch_size: int = 8  # windows per decoder call
    compute_dtype: str = "float32"
    report_samples: int = 3  # utterances per language shown in report.md
    claim_ttl: float = DEFAULT_CLAIM_TTL  # seconds until a dead process's (language, layer) claims may be taken over
    break_lease: bool = False
    progress: bool = True

    def __post_init__(self):
        check_choice("source", self.source, SOURCES)
        check_choice("ln_post", self.ln_post, LN_POST)
        check_choice("language", self.language, LANGUAGE_MODES)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        for task in self.tasks:
            check_choice("task", task, TASKS)
        for decoding in self.decodings:
            parse_decoding(decoding)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be >= 1, got {self.batch_size}, {self.max_new_tokens}"
            )
        if self.claim_ttl <= 0:
            raise ValueError(f"claim_ttl must be positive seconds, got {self.claim_ttl}")


@dataclasses.dataclass
class DecodeSummary(RunSummary):
    decoded: int = 0  # utterance x part decodings in this run
    windows: int = 0
    tokens: int = 0
    parts_kept: int = 0  # parts kept from an earlier run
    units: int = 0  # (language, layer, ln_post) work units this process claimed and did
    taken_over: int = 0  # of them, units whose claim had expired (a dead process's)
    busy_seconds: float = 0.0  # from the start of the work to the end of this process's last unit
    outputs: list[str] = dataclasses.field(default_factory=list)
    table: str = ""

    def report(self) -> str:
        lines = [
            f"decoded {self.decoded} utterance-parts ({self.windows} windows, {self.tokens} tokens) in "
            f"{self.seconds:.1f} s; {self.parts_kept} parts kept from an earlier run; skipped: {self.n_skipped}",
            f"work units: {self.units} claimed, busy {self.busy_seconds:.1f} s, {self.taken_over} taken over from "
            "expired claims",
        ]
        return "\n".join([*lines, *self.skip_lines(), self.table])


def compression_ratio(text: str) -> float:
    """Whisper's ``compression_ratio``: UTF-8 bytes over their zlib-compressed size (its gzip ratio)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


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
    if info.checkpoint_sha256 != whisper.checkpoint.sha256 or info.dims != whisper.dims:
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
    for lang, code in config.decode_as:
        try:
            whisper.tokenizer.language_token(code)
        except LanguageError:
            raise DecodeError(
                f"--decode_as {lang}={code}: {code!r} is not a language of this model's tokenizer; use a Whisper code "
                "such as kk or en"
            ) from None
    if "translate" in config.tasks and config.references is None and _english_language(reader) is None:
        raise DecodeError(
            "task translate needs English references: the store has no English language; pass --references with a "
            "TSV file of id<TAB>English text"
        )
    return langs, layers


def _english_language(reader) -> str | None:
    for lang in reader.languages():
        try:
            if fleurs_to_whisper(lang) == "en":
                return lang
        except LanguageError:
            continue
    return None


def _english_references(config: DecodeConfig, reader) -> dict[str, str]:
    if config.references is not None:
        refs = {}
        with open(config.references, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                uid, sep, text = line.rstrip("\n").partition("\t")
                if not sep:
                    raise DecodeError(f"{config.references}:{line_no}: expected 'id<TAB>text', got {line[:60]!r}")
                refs[uid] = text
        return refs
    english = _english_language(reader)
    rows = reader.arrays(english).rows
    return {r.id: r.transcription for r in reversed(rows) if r.transcription}  # the first recording wins


def _whisper_code(lang: str, config: DecodeConfig, whisper) -> str | None:
    mapping = dict(config.decode_as)
    if lang in mapping:
        return mapping[lang]
    try:
        code = fleurs_to_whisper(lang)
        whisper.tokenizer.language_token(code)
        return code
    except LanguageError:
        return None


def _variants(layers, ln_post: str, top: int) -> list[tuple[int, bool]]:
    """(layer, ln_post) pairs: layer L+1 is ln_post's output already, so it is decoded once, marked on."""
    wanted = {"on": (True,), "off": (False,), "both": (True, False)}[ln_post]
    out = []
    for layer in layers:
        out += [(layer, True)] if layer == top else [(layer, ln) for ln in wanted]
    return out


def _decode_windows(whisper, mel, options: list[DecodingOptions], batch_size: int, dtype):
    """Per entry of ``options`` (one encoder layer and ln_post for all): tokens, languages and avg_logprob of every
    window of ``mel f32[window, n_mels, 3000]``, in batches of ``batch_size`` (the last padded with copies of its
    first window, so that one program serves every batch). Each batch's decoder input is computed once and decoded
    for every entry (tasks, decodings): the encoder is the costly half of early exit on CPU."""
    results = [([], [], []) for _ in options]
    for start in range(0, len(mel), batch_size):
        chunk = mel[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, axis=0)])
        xa = whisper.audio_features(chunk, options[0]).astype(dtype)
        for (tokens, languages, avg), opts in zip(results, options, strict=True):
            res = whisper.transcribe(None, opts, xa=xa)
            tokens += res.tokens[:n]
            languages += res.languages[:n]
            avg += list(np.asarray(res.avg_logprob)[:n])
    return results


def audio_skip_reason(error: AudioError) -> str:
    """The skip reason of audio that cannot be decoded: ``audio_missing``, ``empty_audio`` (0 bytes or 0 samples),
    ``silent_audio`` (digital silence, which the encode job refuses) or ``audio_unreadable`` (anything else)."""
    if isinstance(error, AudioNotFoundError):
        return "audio_missing"
    if isinstance(error, EmptyAudioError):
        return "empty_audio"
    if isinstance(error, SilentAudioError):
        return "silent_audio"
    return "audio_unreadable"


def _load_mels(whisper, reader, lang, rows, todo, skipped):
    """Log-mel windows of the utterances ``todo`` from their audio; audio that cannot be decoded is skipped."""
    mels = {}
    for u in todo:
        try:
            audio = load_audio(rows[u].path)
        except AudioError as e:
            skipped.append((lang, rows[u].id, "*", audio_skip_reason(e)))
        else:
            mel, _ = whisper.features(audio, long_audio=reader.info.long_audio)
            mels[u] = np.asarray(mel)
    return mels


def _not_encoded_reason(path: str) -> str:
    """Why the store has no states for an utterance: the encode job refuses audio that is missing, empty, silent or
    unreadable and does not record why, so its audio is read again to name the reason; ``not_encoded`` when the audio
    is fine (the encode job has not reached it, or refused its states)."""
    try:
        load_audio(path)
    except AudioError as e:
        return audio_skip_reason(e)
    return "not_encoded"


def run_decode(config: DecodeConfig, *, whisper: LoadedWhisper | None = None) -> DecodeSummary:
    """Decodes and scores every part of the config; writes the layout of ``engine.pipelines.decode.hypotheses``. The
    run holds
    the output folder's writer lease (``engine.runtime.lease``).

    ``whisper``: the store's model already loaded in ``config.compute_dtype`` (a notebook or test that holds one);
    by default ``config.model`` is loaded.
    """
    with writer_lease(config.out, "decode", config.break_lease) as lease:
        return _decode(config, lease, whisper)


def _decode(config: DecodeConfig, lease, whisper: LoadedWhisper | None) -> DecodeSummary:
    t0 = time.perf_counter()
    summary = DecodeSummary()
    reader = open_store(config.store)
    whisper = whisper or load_whisper(config.model, dtype=DTYPES[config.compute_dtype])
    langs, layers = _check(config, reader, whisper)
    dtype = DTYPES[config.compute_dtype]
    top = whisper.dims.n_audio_layer + 1
    english = _english_references(config, reader) if "translate" in config.tasks else {}
    _, kv = open_kvstore(config.out)
    claims = WorkClaims(kv, config.out, "decode", ttl=config.claim_ttl)

    def create() -> None:
        create_or_compare(
            kv,
            hyp.MANIFEST,
            _manifest(config, reader, whisper),
            config.out,
            fields=MANIFEST_FIELDS,
            error=DecodeError,
            what="decode folder",
        )
        if is_process_zero():
            claims.clear()  # under the writer lease, before the barrier: no process claims anything yet

    process_zero_first("babelgrid-decode-manifest", create)
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
        old = read_part(kv, key, config.out)
        return old is not None and old[1]["done"] == done[lang]

    def unit_done(unit: str) -> bool:
        return all(kept(key, units[unit][0]) for key in part_keys(unit).values())

    bar = progress_bar(len(units) * len(config.tasks) * len(config.decodings), "decode", "part", config.progress)
    pending = {}  # unit -> {(task, decoding): key} of the parts not kept from an earlier run
    for unit in units:
        lang = units[unit][0]
        pending[unit] = {part: key for part, key in part_keys(unit).items() if not kept(key, lang)}
        if is_process_zero():  # every process sees the parts kept from an earlier run; one counts them
            summary.parts_kept += len(part_keys(unit)) - len(pending[unit])
            bar.update(len(part_keys(unit)) - len(pending[unit]))
    loaded: dict[str, tuple] = {}
    work_t0 = time.perf_counter()
    try:
        with claims:
            for claimed in rounds(claims, [u for u in units if pending[u]], unit_done):
                for claim in claimed:
                    lang, layer, ln_post = units[claim.unit]
                    lease.check()
                    loaded = _decode_unit(
                        config, whisper, reader, kv, english, dtype, lang, layer, ln_post, done[lang],
                        pending[claim.unit], loaded, summary,
                    )  # fmt: skip
                    claims.release(claim)
                    summary.units += 1
                    summary.busy_seconds = time.perf_counter() - work_t0
                    bar.update(len(pending[claim.unit]))
    finally:
        bar.close()
    summary.taken_over = claims.taken_over
    if is_process_zero():  # every unit is done: rounds() ends only when no other process holds one
        codes = {lang: _whisper_code(lang, config, whisper) for lang in langs}
        _merge(kv, config, reader, langs, codes, variants, summary)
    summary.seconds = time.perf_counter() - t0
    return summary



def _decode_unit(
    config, whisper, reader, kv, english, dtype, lang, layer, ln_post, done_now, pending, loaded, summary
) -> dict:
    """Decodes one claimed (lang, layer, ln_post) for the parts ``pending`` ``{(task, decoding): key}`` and writes
    them; returns the audio cache ``loaded`` (one language's log-mels at a time)."""
    rows = reader.arrays(lang).rows
    code = _whisper_code(lang, config, whisper)
    if lang not in loaded:
        skipped_audio: list[tuple] = []
        mels = {} if code is None else _load_mels(whisper, reader, lang, rows, done_now, skipped_audio)
        loaded = {lang: (mels, skipped_audio)}  # one language's audio in memory at a time
    mels, skipped_audio = loaded[lang]
    if code is None:
        parts = {part: ({name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}, []) for part in pending}
        for (task, _), (_, skipped) in parts.items():
            skipped += [(lang, rows[u].id, task, "no_whisper_language") for u in done_now]
    else:
        parts = _decode_parts(
            whisper, lang, code, rows, mels, layer, ln_post, list(pending), english, config, dtype, summary
        )
    for part, key in pending.items():
        out_rows, skipped = parts[part]
        fault_point("before_part")
        # One write per part: its metadata (the utterances it was made from) is its done marker.
        write_value(kv, key, hyp.part_bytes(out_rows, done_now, skipped_audio + skipped), config.out)
    return loaded


def _decode_parts(whisper, lang, code, rows, mels, layer, ln_post, parts, english, config, dtype, summary):
    """Decodes every utterance of ``mels`` from one (layer, ln_post) for each ``(task, decoding)`` of ``parts``:
    ``{part: (hypothesis columns, skips)}``."""
    options = [
        DecodingOptions(
            task=task,
            language=code if config.language == "forced" else None,
            max_new_tokens=config.max_new_tokens,
            encoder_layer=layer,
            apply_ln_post=ln_post,
            beam_size=parse_decoding(decoding),
            patience=config.patience,
            length_penalty=config.length_penalty,
        )
        for task, decoding in parts
    ]
    out = {part: ({name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}, []) for part in parts}
    order = sorted(mels)
    if not order:
        return out
    owner = np.concatenate([[u] * len(mels[u]) for u in order])
    all_mel = np.concatenate([mels[u] for u in order])
    results = _decode_windows(whisper, all_mel, options, config.batch_size, dtype)
    tok = whisper.tokenizer
    for (task, decoding), (tokens, languages, avg) in zip(parts, results, strict=True):
        summary.windows += len(all_mel)
        columns, skipped = out[(task, decoding)]
        for u in order:
            mine = np.flatnonzero(owner == u)
            ids = sum((tokens[i] for i in mine), [])
            text = tok.decode(ids).strip()
            row = rows[u]
            ref = row.transcription if task == "transcribe" else english.get(row.id)
            if not ref:
                skipped.append((lang, row.id, task, "no_reference"))
                ref = None
            values = dict(
                language=lang,
                id=row.id,
                recording=row.recording,
                utterance=u,
                layer=layer,
                ln_post=ln_post,
                task=task,
                decoding=decoding,
                language_token=languages[mine[0]],
                hypothesis=text,
                reference=ref,
                avg_logprob=float(np.mean([avg[i] for i in mine])),
                compression_ratio=compression_ratio(text),
                n_tokens=len(ids),
            )
            for name, value in values.items():
                columns[name].append(value)
            summary.decoded += 1
            summary.tokens += len(ids)
    return out


def score_rows(table: pa.Table, codes: Mapping[str, str]) -> list[dict]:
    """Corpus scores per (language, layer, ln_post, task, decoding) of hypothesis rows with a reference: WER and CER
    (jiwer, Whisper's normaliser of the reference's language), BLEU and chrF (sacrebleu, on the same normalised text).
    Empty hypotheses are scored (as all deletions), not dropped.

    ``codes``: the Whisper code each store language's transcription is written in (``--decode_as`` applied). It picks
    the normaliser and tokeniser for transcribe, not the hypothesis' language token, which ``--language detect`` may
    set to another language per utterance; translate is scored as English."""
    df = table.to_pandas()
    df = df[df["reference"].notna()]
    out = []
    for (lang, layer, ln_post, task, decoding), g in df.groupby(
        ["language", "layer", "ln_post", "task", "decoding"], sort=True
    ):
        target = "en" if task == "translate" else codes[lang]
        norm = text_metrics.normalizer_for(target)
        refs = [norm(r) for r in g["reference"]]
        hyps = [norm(h) for h in g["hypothesis"]]
        if not any(r.split() for r in refs):
            continue
        values = {
            "wer": text_metrics.error_rate(refs, hyps, "word", normalize=False),
            "cer": text_metrics.error_rate(refs, hyps, "char", normalize=False),
            "bleu": text_metrics.bleu(refs, hyps, target),
            "chrf": text_metrics.chrf(refs, hyps),
        }
        for metric in METRICS:
            out.append(
                dict(
                    language=lang,
                    layer=int(layer),
                    ln_post=bool(ln_post),
                    task=task,
                    decoding=decoding,
                    metric=metric,
                    value=values[metric],
                    n=len(g),
                )  # fmt: skip
            )
    return out


def _merge(kv, config, reader, langs, codes, variants, summary) -> None:
    tables, skipped = [], set()
    for lang in langs:
        for layer, ln_post in variants:
            for task in config.tasks:
                for decoding in config.decodings:
                    key = hyp.part_key(lang, task, decoding, layer, ln_post)
                    part = read_part(kv, key, config.out)
                    if part is None:
                        raise DecodeError(f"part {key} is missing after every process finished")
                    tables.append(part[0].replace_schema_metadata(None))
                    skipped |= {tuple(s) for s in part[1]["skipped"]}
        done = is_done(reader.lengths(lang))
        named = {(s[0], s[1]) for s in skipped if s[2] == "*"}  # audio the decoder could not read: named already
        for u, r in enumerate(reader.arrays(lang).rows):
            if not done[u] and (lang, r.id) not in named:
                skipped.add((lang, r.id, "*", _not_encoded_reason(r.path)))
    for lang, uid, _, reason in sorted(skipped):
        summary.skip(reason, lang, uid)
    table = pa.concat_tables(tables) if tables else hyp.HYPOTHESIS_SCHEMA.empty_table()
    scores = score_rows(table, {lang: code for lang, code in codes.items() if code is not None})
    from engine.pipelines.decode.report import figures, report_markdown, scores_table

    files = {
        hyp.HYPOTHESES: table_bytes(table),
        hyp.SCORES: _csv(hyp.SCORE_COLUMNS, [[s[c] for c in hyp.SCORE_COLUMNS] for s in scores]),
        hyp.SKIPPED: _csv(("language", "id", "task", "reason"), sorted(skipped)),
        hyp.REPORT: report_markdown(table, scores, summary, config.report_samples).encode(),
        **figures(scores),
    }
    for name, data in files.items():
        write_value(kv, name, data, config.out)
    root = config.out.rstrip("/") + "/"
    summary.outputs += [root + name for name in files]
    summary.table = scores_table(scores)


def _csv(header, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def references_path(path: str | None) -> str | None:
    if path is not None and not pathlib.Path(path).is_file():
        raise DecodeError(f"--references {path!r} is not a file; pass a TSV of id<TAB>English text")
    return path
