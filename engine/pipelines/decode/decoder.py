"""The decode job's decoder path: early exit and zero-shot ASR / speech translation with a model's text decoder
(``engine.models.interface.Decoder``: Whisper's, OWSM's, Canary's), whatever its family.

For every (language, layer, ln_post, task, decoding) part, each utterance is decoded from encoder layer ``layer``,
window by window for audio over 30 s, the windows' tokens joined; then scored against the store's transcription
(transcribe) or the English transcription of the same id (translate). The decoder's ``caps`` say what it can do:
the tasks it has prompts for, beam search and the beam options it honours (any other is refused unless at its
default, never ignored), ``--language detect``, ``--ln_post`` (a final norm to read early layers through), and
``--decoding ctc`` (a CTC head beside the decoder, read from the store's states window by window).

Exactness: a layer store keeps each utterance's valid frames only. A decoder that ``reads_padding`` (Whisper's,
OWSM's: its cross-attention reads the whole window) gets its memory recomputed from the audio the store's utterance
table points to, with the store's front end and model: its valid frames are the store's states
(``tests/jobs/test_decode.py``). Any other (Canary's: its cross-attention masks the padding) reads the store's states.

A store language the model has no language token for is skipped (``no_language_token``, logged, its rows named in
skipped.csv); ``--decode_as lang=code`` names the token to use. A work unit is one language, so that its audio is
read and its windows encoded once for every part; a part is one write (its Parquet metadata is its done marker).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from engine.data.audio import load_audio
from engine.errors import AudioError, LanguageError
from engine.faults import fault_point
from engine.languages import text_code
from engine.models.interface import Search
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError, parse_decoding
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.references import english_language, english_references
from engine.pipelines.decode.store import Units, check_store, decode_claimed, layer_variants
from engine.pipelines.decode.unit import compression_ratio
from engine.pipelines.stages.early_exit import cut_windows, score_language, search_windows
from engine.pipelines.stages.windows import audio_skip_reason
from engine.runtime.runs import status_interval
from engine.stores.kv import write_value
from engine.text import phones

log = logging.getLogger(__name__)
FORMAT_NAME = "babelgrid-hypotheses"
FORMAT_VERSION = 1
# Manifest fields a resumed run must share (the layer store's URL may be spelled differently between runs), and the
# values of those a folder written before the one decoder path did not record (OWSM's, Canary's).
MANIFEST_FIELDS = ("format", "version", "model_name", "checkpoint_sha256", "source", "language", "decode_as",
                   "patience", "length_penalty", "max_new_tokens", "compute_dtype", "matmul_precision")  # fmt: skip
UNRECORDED = ("matmul_precision",)  # folders written before it lack it: compared only where both have it
EARLIER = {"source": "audio", "language": "forced", "patience": 1.0, "length_penalty": 1.0}
BEAM_OPTIONS = ("patience", "length_penalty")
NO_LANGUAGE = "no_language_token"  # the skip reason of a store language the model has no token for
CTC = "ctc"
BATCH_UTTERANCES = 16  # utterances read from the store at a time (decoders that read the store)


def prepare_decoder(config: DecodeConfig, reader, decoder) -> tuple:
    """What ``run_decoder`` decodes, checked before the caller takes the lease: ``check_decoder``'s (languages, layers,
    prompt languages) and the English references of translate (a malformed --references file is named here)."""
    langs, layers, languages = check_decoder(config, reader, decoder)
    english = english_references(config, reader) if "translate" in config.tasks else {}
    return langs, layers, languages, english


def run_decoder(config: DecodeConfig, reader, lease, summary, decoder, prepared: tuple) -> None:
    """Decodes the store's languages and layers with ``decoder`` into ``config.run.out``; counts into ``summary`` (a
    ``DecodeSummary``). The caller holds the output's writer lease (``lease``); ``prepared``: ``prepare_decoder``'s."""
    langs, layers, languages, english = prepared
    if decoder.caps.ln_post:
        variants = layer_variants(layers, config.ln_post, decoder.n_layers_out - 1)
    else:
        variants = [(layer, False) for layer in layers]
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "store": reader.url, "model_name": decoder.name,
        "checkpoint_sha256": decoder.sha256, "source": config.source, "exact": True, "language": config.language,
        "decode_as": dict(config.decode_as), **{f: getattr(config, f) for f in BEAM_OPTIONS},
        "max_new_tokens": config.max_new_tokens, "compute_dtype": config.compute_dtype,
        "matmul_precision": config.run.matmul_precision, **dict(decoder.manifest_extra),
    }  # fmt: skip
    parts = [(task, d, layer, ln) for layer, ln in variants for task in config.tasks for d in config.decodings]
    units = Units({lang: (lang,) for lang in langs}, lambda lang: {p: hyp.part_key(lang, *p) for p in parts})

    def work(kv, lang: str, pending: dict, done: list[int]) -> None:
        written = _language(decoder, reader, lang, languages[lang], done, list(pending), english, config, summary)
        for p, key in pending.items():
            part_rows, part_skips = written[p]
            fault_point("before_part")
            # One write per part: its metadata (the utterances it was made from) is its done marker.
            write_value(kv, key, hyp.part_bytes(part_rows, done, part_skips), config.run.out)

    def finish(kv) -> None:
        codes = {lang: score_language(decoder, lang, languages[lang]) for lang in langs}
        merge(kv, config, reader, langs, codes, variants, summary)

    summary.unit = "languages"
    fields = MANIFEST_FIELDS + tuple(k for k, _ in decoder.manifest_extra)
    decode_claimed(config, reader, lease, summary, manifest, units, work, finish,
                   fields=fields, check=lambda stored: {**EARLIER, **stored}, unrecorded=UNRECORDED)  # fmt: skip


def check_decoder(config: DecodeConfig, reader, decoder) -> tuple[list[str], list[int], dict]:
    """``(languages, layers, {language: prompt language or None})`` of the run, or a DecodeError naming what the
    decoder cannot do with these settings, before anything is written."""
    caps = decoder.caps
    defaults = {f.name: f.default for f in dataclasses.fields(DecodeConfig)}
    changed = [f for f in BEAM_OPTIONS if f not in caps.beam_options and getattr(config, f) != defaults[f]]
    if changed:
        raise DecodeError(
            f"--{' and --'.join(changed)}: the beam search of {decoder.name!r} has no such option (it honours "
            f"{', '.join(caps.beam_options) or 'none of them'}); leave {'them' if len(changed) > 1 else 'it'} at the "
            "default"
        )
    beams = [parse_decoding(d) for d in config.decodings]
    if 0 in beams and not caps.ctc:
        raise DecodeError(f"--decoding ctc reads a CTC head, which {decoder.name!r} has none of; pass greedy or beam:N")
    if any(b > 1 for b in beams) and not caps.beam:
        raise DecodeError(f"--decoding beam:N: {decoder.name!r} decodes greedily only; pass greedy")
    if config.language == "detect" and not caps.detect_language:
        raise DecodeError(f"--language detect: {decoder.name!r} cannot detect a language; pass --language forced")
    for task in config.tasks:
        if task not in caps.tasks:
            raise DecodeError(f"task {task}: {decoder.name!r} has no prompt for it; it decodes {', '.join(caps.tasks)}")
    langs, layers = check_store(config, reader, decoder.name, decoder.sha256, same=decoder.same_store(reader.info))
    mapping = dict(config.decode_as)
    for lang, code in config.decode_as:
        try:
            decoder.language(lang, mapping)
        except LanguageError as e:
            raise DecodeError(f"--decode_as {lang}={code}: {e}") from None
    languages = {lang: decoder.language(lang, mapping) for lang in langs}
    for lang, language in languages.items():
        if language is None:
            log.warning("store language %r has no language token in model %r: its utterances are skipped (%s); "
                        "--decode_as %s=<code> names one to use", lang, decoder.name, NO_LANGUAGE, lang)  # fmt: skip
        elif config.language == "forced":
            for task in config.tasks:
                try:
                    decoder.prompt(task, language)
                except LanguageError as e:
                    raise DecodeError(f"task {task}, language {lang!r}: {e}") from None
    if "translate" in config.tasks and config.references is None and english_language(reader) is None:
        raise DecodeError(
            "task translate needs English references: the store has no English language; pass --references with a "
            "TSV file of id<TAB>English text"
        )
    if "phones" in config.tasks:
        unvoiced = [lang for lang, token in languages.items() if token and not phones.covers(text_code(lang))]
        if unvoiced:
            raise DecodeError(
                "task phones is scored against espeak-ng's phones of the transcription, and espeak-ng has no voice "
                f"for {', '.join(unvoiced)}: leave {'them' if len(unvoiced) > 1 else 'it'} out with --langs"
            )
    return langs, layers, languages


def _language(decoder, reader, lang, language, done, parts, english, config, summary) -> dict:
    """``{part: (rows, skips)}`` of every part ``(task, decoding, layer, ln_post)`` of one language."""
    rows_of = reader.arrays(lang).rows
    if language is None:
        empty = {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}
        return {p: (empty, [(lang, rows_of[u].id, p[0], NO_LANGUAGE) for u in done]) for p in parts}
    searched = [p for p in parts if p[1] != CTC]
    out = {}
    if searched:
        read = _from_audio if decoder.caps.reads_padding else _from_store
        out |= read(decoder, reader, lang, language, done, searched, english, config, summary)
    for p in parts:
        if p[1] == CTC:
            out[p] = _ctc_part(decoder, reader, lang, p, done, summary)
    return out


def _from_audio(decoder, reader, lang, language, done, parts, english, config, summary) -> dict:
    """The parts of one language from its audio: its windows encoded once per batch, each (layer, ln_post)'s
    memory decoded for every part that reads it."""
    rows_of = reader.arrays(lang).rows
    skips, order, inputs, owner = [], [], [], []
    for u in done:
        try:
            windows = decoder.windows(load_audio(rows_of[u].path), reader.info.long_audio)
        except AudioError as e:
            skips.append((lang, rows_of[u].id, "*", audio_skip_reason(e)))
            continue
        order.append(u)
        inputs += windows
        owner += [u] * len(windows)
    owner = np.asarray(owner, np.int64)
    results = {p: ([], [], []) for p in parts}  # per window: tokens, avg_logprob, language label
    variants = sorted({(layer, ln_post) for _, _, layer, ln_post in parts})
    size = config.batch_size
    forced = config.language == "forced"
    said = time.monotonic()
    for start in range(0, len(inputs), size):
        if time.monotonic() - said >= status_interval():  # the bar moves by whole languages: minutes apart
            said = time.monotonic()
            log.info("decode %s: %d of %d windows, each decoded for %d parts", lang, start, len(inputs), len(parts))
        chunk = inputs[start : start + size]
        n = len(chunk)
        chunk = chunk + [chunk[0]] * (size - n)  # one program for every batch: the last padded with its first
        for variant, memory, valid in decoder.memories(decoder.collate(chunk), variants):
            for p in parts:
                if (p[2], p[3]) != variant:
                    continue
                search = _search(config, p[1])
                tokens, avg, labels = decoder.search(memory, valid, p[0], [language if forced else None] * size, search)
                for got, new in zip(results[p], (tokens, avg, labels), strict=True):
                    got += list(new)[:n]
    out = {}
    for p in parts:
        summary.windows += len(inputs)
        tokens, avg, labels = results[p]
        columns, skipped = _empty(), list(skips)
        for u in order:
            mine = np.flatnonzero(owner == u)
            ids = sum((tokens[i] for i in mine), [])
            _row(columns, skipped, decoder, lang, rows_of[u], u, p, labels[mine[0]], ids,
                 float(np.mean([avg[i] for i in mine])), english, summary)  # fmt: skip
        out[p] = (columns, skipped)
    return out


def _from_store(decoder, reader, lang, language, done, parts, english, config, summary) -> dict:
    """The parts of one language from the store's states: each utterance's valid frames cut into its windows
    (``decoder.window_frames`` a full one), read ``BATCH_UTTERANCES`` utterances at a time."""
    rows_of = reader.arrays(lang).rows
    out = {p: (_empty(), []) for p in parts}
    per_window = decoder.window_frames
    done = np.asarray(done, np.int64)
    for first in range(0, len(done), BATCH_UTTERANCES):
        index = done[first : first + BATCH_UTTERANCES]
        lengths = reader.lengths(lang)[index]
        for layer in sorted({p[2] for p in parts}):
            states, _ = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
            windows, owner = [], []
            for i, n in enumerate(lengths):
                cut = cut_windows(states[i], int(n), per_window)
                windows += cut
                owner += [i] * len(cut)
            owner = np.asarray(owner)
            for p in (p for p in parts if p[2] == layer):
                tokens, avg, labels = search_windows(
                    decoder, windows, p[0], language, _search(config, p[1]), config.batch_size
                )
                summary.windows += len(windows)
                for i, u in enumerate(index):
                    mine = np.flatnonzero(owner == i)
                    ids = sum((tokens[w] for w in mine), [])
                    _row(*out[p], decoder, lang, rows_of[u], int(u), p, labels[mine[0]], ids,
                         float(np.mean([avg[w] for w in mine])), english, summary)  # fmt: skip
    return out


def _ctc_part(decoder, reader, lang, part, done, summary, batch: int = 16) -> tuple[dict, list]:
    """The rows and skips of one ``ctc`` part: the decoder's CTC head over the stored states of its layer."""
    task, _, layer, ln_post = part
    rows_of = reader.arrays(lang).rows
    out = _empty()
    if task != "transcribe":
        return out, [(lang, rows_of[u].id, task, "ctc_transcribes_only") for u in done]
    skipped = [(lang, rows_of[u].id, task, "no_reference") for u in done if not rows_of[u].transcription]
    done = np.asarray(done, np.int64)
    for first in range(0, len(done), batch):
        index = done[first : first + batch]
        lengths = reader.lengths(lang)[index]
        states, _ = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
        tokens, avg = decoder.ctc(states, lengths, layer, ln_post)
        for i, u in enumerate(index):
            row = rows_of[u]
            _row(out, [], decoder, lang, row, int(u), part, lang, tokens[i], avg[i], {}, summary,
                 reference=row.transcription or None)  # fmt: skip
    return out, skipped


def _search(config: DecodeConfig, decoding: str) -> Search:
    return Search(parse_decoding(decoding), config.max_new_tokens, config.patience, config.length_penalty)


def _empty() -> dict:
    return {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}


_UNSET = object()


def _row(columns, skipped, decoder, lang, row, u, part, label, ids, avg, english, summary, reference=_UNSET) -> None:
    """Appends one utterance's hypothesis row of ``part`` to ``columns`` (and a ``no_reference`` skip)."""
    task, decoding, layer, ln_post = part
    text = decoder.text(ids)
    if reference is _UNSET:
        # phones: the transcription, phonemised when scored (merge.score_rows)
        reference = english.get(row.id) if task == "translate" else row.transcription
        if not reference:
            skipped.append((lang, row.id, task, "no_reference"))
            reference = None
    values = dict(
        language=lang, id=row.id, recording=row.recording, utterance=int(u), layer=int(layer), ln_post=bool(ln_post),
        task=task, decoding=decoding, language_token=label, hypothesis=text, reference=reference, avg_logprob=avg,
        compression_ratio=compression_ratio(text), n_tokens=len(ids),
    )  # fmt: skip
    for name in columns:
        columns[name].append(values[name])
    summary.decoded += 1
    summary.tokens += len(ids)
