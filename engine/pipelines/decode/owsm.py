"""The decode job on an OWSM store: early exit and zero-shot ASR / speech translation with OWSM's attention decoder.

For every (language, layer, ln_post, task, decoding) each utterance is decoded from encoder layer ``layer`` with
OWSM's prompt ``<sos> <lang> <task> <notimestamps>`` (``engine.models.owsm.decoder.prompt``): task ``transcribe`` is
``<asr>``, ``translate`` is ``<st_eng>``; ``<lang>`` is the store language's ISO 639-3 token
(``engine.models.owsm.languages``: ``en`` -> ``<eng>``; ``--decode_as de=xxx`` names another), and a language the
token list lacks is refused before anything is written. ``ln_post`` on passes an intermediate layer through the
encoder's ``after_norm`` first, as the decoder was trained on it (layer L+1 is its output already); off feeds the
block's output as it is. Scores: WER/CER and BLEU/chrF exactly as Whisper's (``engine.pipelines.decode.merge``).

Decodings: ``greedy``; ``beam:N``, ESPnet's beam search (``engine.models.owsm.beam``: ``Speech2Text(beam_size=N,
ctc_weight=0, penalty=0, maxlenratio=-max_new_tokens)``; ``--patience`` and ``--length_penalty``, CTranslate2's,
are refused unless left at their defaults). ``--language detect``: each window's language token is ESPnet's
``Speech2Language`` choice (the most probable language token after ``<sos>``) on the memory being decoded, the
early-exit layer's as Whisper's decode detects on it; the window then decodes as forced does with that token, and
``language_token`` holds the first window's.

Exactness, as for Whisper: OWSM's decoder attends to the whole 30 s window, padding frames included, which a store
does not keep; so the encoder is recomputed from the store's audio (column ``path``) with the store's model and
compute dtype, once per batch of windows for every layer, task and decoding. At layer L+1 the greedy and beam tokens
and the detected languages are ESPnet's own (``tests/jobs/test_owsm.py``). Audio over the window is decoded window
by window and the windows' tokens joined, as Whisper's.

``--decoding ctc`` (alone or beside ``greedy``) is the CTC head's per-layer logit lens: the head on each stored
layer's states (through ``after_norm`` when ``ln_post`` is on), greedy CTC per window (argmax per valid frame, repeats
collapsed, ``<blank>`` dropped, as ESPnet's ``CTC.argmax``), no prompt and no language. The CTC head is per frame and
the store holds the valid frames exactly as the encoder computes them over the padded window, so nothing is
recomputed from audio. It only transcribes: a ``translate``-``ctc`` part is written empty, its utterances skipped as
``ctc_transcribes_only``.

Columns as Whisper's, except: ``language_token`` is OWSM's language (``fra``), ``avg_logprob`` the mean
log-probability of the generated tokens and ``<eos>`` under the decoder (the same forward pass, teacher-forced).
Resume per part as for Whisper; processes of a multi-process run claim one language each at a time
(``engine.pipelines.decode.store.decode_claimed``), so that a language's windows are encoded once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.data.audio import load_audio
from engine.dtypes import DTYPES
from engine.errors import AudioError, LanguageError
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.languages import owsm_language
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError, parse_decoding
from engine.pipelines.decode.ctc import _text_language
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.references import english_language, english_references
from engine.pipelines.decode.store import Units, check_store, decode_claimed, layer_variants
from engine.pipelines.decode.unit import audio_skip_reason, compression_ratio
from engine.stores.kv import write_value
from engine.stores.parts import read_part

TASKS = {"transcribe": "<asr>", "translate": "<st_eng>"}  # the job's task names -> OWSM's task tokens
CTC = "ctc"
MANIFEST_FIELDS = ("format", "version", "head", "model_name", "checkpoint_sha256", "store", "decode_as", "language")


def run_owsm_decode(config: DecodeConfig, reader, lease, summary, load) -> None:
    """Decodes the store's languages and layers with ``config.model``'s decoder (``load``: the family's decoder
    loader, ``load_owsm``) into ``config.run.out``; counts into ``summary`` (a ``DecodeSummary``). The caller holds
    the output's writer lease (``lease``). A work unit is one language: its windows are encoded once for every
    part."""
    if config.model is None:
        raise DecodeError("decode needs the store's model: pass --model (the OWSM folder or hub id it encoded with)")
    _refuse_whisper_beam_options(config)
    owsm = load(config.model, dtype=DTYPES[config.compute_dtype])
    name, sha256 = owsm.checkpoint.name, owsm.checkpoint.sha256
    langs, layers = check_store(config, reader, name, sha256)
    detect = config.language == "detect"
    tokens = {} if detect else {lang: _language_token(lang, config, owsm.config.languages()) for lang in langs}
    for task in config.tasks:
        if TASKS[task] not in owsm.config.tasks():
            raise DecodeError(f"task {task}: this OWSM model has no {TASKS[task]} token ({owsm.config.tasks()})")
    if "translate" in config.tasks and config.references is None and english_language(reader) is None:
        raise DecodeError(
            "task translate needs English references: the store has no English language; pass --references with a "
            "TSV file of id<TAB>English text"
        )
    english = english_references(config, reader) if "translate" in config.tasks else {}
    top = owsm.n_layers_out - 1
    variants = layer_variants(layers, config.ln_post, top)
    manifest = {
        "format": "babelgrid-hypotheses", "version": 1, "head": "decoder", "model_name": name,
        "checkpoint_sha256": sha256, "store": reader.url, "exact": True, "decode_as": dict(config.decode_as),
        "max_new_tokens": config.max_new_tokens, "compute_dtype": config.compute_dtype, "language": config.language,
    }  # fmt: skip
    parts = [(task, d, layer, ln) for layer, ln in variants for task in config.tasks for d in config.decodings]
    units = Units({lang: (lang,) for lang in langs}, lambda lang: {p: hyp.part_key(lang, *p) for p in parts})

    def work(kv, lang: str, pending: dict, done: list[int]) -> None:
        attention = [p for p in pending if p[1] != CTC]
        written = {}
        if attention:
            written |= _language(owsm, reader, lang, tokens.get(lang), done, attention, english, config, summary)
        for task, d, layer, ln in pending:
            if d == CTC:
                written[(task, d, layer, ln)] = _ctc_part(owsm, reader, lang, task, layer, ln, done, summary)
        for p, key in pending.items():
            part_rows, part_skips = written[p]
            write_value(kv, key, hyp.part_bytes(part_rows, done, part_skips), config.run.out)

    def finish(kv) -> None:
        merge(kv, config, reader, langs, {lang: _text_language(lang) for lang in langs}, variants, summary)

    summary.unit = "languages"
    # A folder written before --language detect was built decoded with forced languages.
    decode_claimed(config, reader, lease, summary, manifest, units, work, finish, "decode (owsm)",
                   fields=MANIFEST_FIELDS, check=lambda stored: {"language": "forced", **stored})  # fmt: skip


def _refuse_whisper_beam_options(config: DecodeConfig) -> None:
    """OWSM's beam search is ESPnet's (``engine.models.owsm.beam``): CTranslate2's patience and length penalty have
    no counterpart there, so a value other than the default is refused rather than ignored."""
    defaults = {f.name: f.default for f in dataclasses.fields(DecodeConfig)}
    changed = [name for name in ("patience", "length_penalty") if getattr(config, name) != defaults[name]]
    if changed:
        raise DecodeError(
            f"--{' and --'.join(changed)}: OWSM's beam search is ESPnet's, which ranks by the summed log-probability "
            "and stops when no hypothesis runs; these CTranslate2 options do not apply: leave them at their defaults"
        )


def _language_token(lang: str, config: DecodeConfig, known) -> str:
    mapping = dict(config.decode_as)
    try:
        return owsm_language(mapping.get(lang, lang), known)
    except LanguageError as e:
        raise DecodeError(str(e)) from None


def _kept(kv, key: str, config: DecodeConfig, done: list[int]) -> bool:
    old = read_part(kv, key, config.run.out, "decode")
    return old is not None and old[1]["done"] == done


def _language(owsm, reader, lang, lang_token, done, parts, english, config, summary):
    """``{part: (rows, skips)}`` of every part ``(task, decoding, layer, ln_post)`` of one language: its audio's
    windows encoded once per batch, each (layer, ln_post)'s memory decoded from them. ``lang_token`` is the forced
    language (``<fra>``), or None with ``--language detect``: each window's own, detected from that memory."""
    rows_of = reader.arrays(lang).rows
    audio_skips, order, features, owner = _windows(owsm, reader, lang, rows_of, done)
    out = {p: {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names} for p in parts}
    skipped = {p: list(audio_skips) for p in parts}
    results = {p: ([], [], []) for p in parts}  # per window: tokens, avg_logprob, language token
    memories = sorted({(layer, ln_post) for _, _, layer, ln_post in parts})
    batch = config.batch_size
    for start in range(0, len(features), batch):
        chunk = features[start : start + batch]
        n = len(chunk)
        if n < batch:  # one program for every batch: the last padded with copies of its first window
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        states = owsm.encode(chunk)
        for layer, ln_post in memories:
            memory = owsm.memory(states, layer) if ln_post else states[layer]
            # Detected from the memory decoded, as Whisper's decode detects from the early-exit layer.
            languages = owsm.detect_language(memory) if lang_token is None else [lang_token] * batch
            for task, decoding, layer_, ln_post_ in parts:
                if (layer_, ln_post_) != (layer, ln_post):
                    continue
                ids, lengths, avg = _decode(owsm, memory, languages, TASKS[task], decoding, config.max_new_tokens)
                tokens, logprobs, detected = results[(task, decoding, layer, ln_post)]
                tokens += [ids[i, : lengths[i]].tolist() for i in range(n)]
                logprobs += avg[:n].tolist()
                detected += languages[:n]
    summary.windows += len(features) * len(parts)
    for p in parts:
        task, decoding, layer, ln_post = p
        tokens, logprobs, detected = results[p]
        for u in order:
            mine = np.flatnonzero(owner == u)
            ids = sum((tokens[i] for i in mine), [])
            text = owsm.text(ids)
            row = rows_of[u]
            ref = row.transcription if task == "transcribe" else english.get(row.id)
            if not ref:
                skipped[p].append((lang, row.id, task, "no_reference"))
                ref = None
            values = dict(
                language=lang, id=row.id, recording=row.recording, utterance=int(u), layer=int(layer),
                ln_post=bool(ln_post), task=task, decoding=decoding, language_token=detected[mine[0]].strip("<>"),
                hypothesis=text, reference=ref, avg_logprob=float(np.mean([logprobs[i] for i in mine])),
                compression_ratio=compression_ratio(text), n_tokens=len(ids),
            )  # fmt: skip
            for name in out[p]:
                out[p][name].append(values[name])
            summary.decoded += 1
            summary.tokens += len(ids)
    return {p: (out[p], skipped[p]) for p in parts}


def _windows(owsm, reader, lang, rows_of, done):
    """(audio skips, utterances decoded, features f32[window, 3001, n_mels] of all their windows, owner i[window])."""
    adapter = OwsmEncoder(owsm)
    skips, order, features, owner = [], [], [], []
    for u in done:
        try:
            inputs, _ = adapter.windows(load_audio(rows_of[u].path), reader.info.long_audio)
        except AudioError as e:
            skips.append((lang, rows_of[u].id, "*", audio_skip_reason(e)))
            continue
        order.append(u)
        features += inputs
        owner += [u] * len(inputs)
    n_mels = owsm.config.n_mels
    stacked = np.stack(features) if features else np.zeros((0, owsm.config.frontend.n_frames, n_mels), np.float32)
    return skips, order, stacked, np.asarray(owner, np.int64)


def _decode(owsm, memory, languages: list[str], task_token: str, decoding: str, max_tokens: int):
    """Tokens of one batch, greedy or ESPnet's beam search (``decoding``), each row with its language's prompt, and
    the mean log-probability of each row's tokens and ``<eos>`` (teacher-forced)."""
    beam = parse_decoding(decoding)
    if beam == 1:
        ids, lengths = owsm.greedy(memory, languages, task_token, max_tokens=max_tokens)
    else:
        ids, lengths, _ = owsm.beam(memory, languages, task_token, beam=beam, max_tokens=max_tokens)
    head = owsm.prompts(memory.shape[0], languages, task_token)
    graphdef, state = nnx.split(owsm.decoder)
    avg = _avg_logprob(graphdef, state, head, ids, lengths, jnp.asarray(memory))
    return np.asarray(ids), np.asarray(lengths), np.asarray(avg)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _avg_logprob(graphdef, state, head, ids, lengths, memory):
    """f32[batch]: mean over ``ids[:, :lengths+1]`` (the text and its ``<eos>``, which fills the rest of ``ids``) of
    their log-probabilities after the prompt ``head``."""
    decoder = nnx.merge(graphdef, state)
    p = head.shape[1]
    logp = jax.nn.log_softmax(decoder.logits(jnp.concatenate([head, ids], axis=1), memory), axis=-1)
    picked = jnp.take_along_axis(logp[:, p - 1 : -1], ids[..., None], axis=-1)[..., 0]
    mask = jnp.arange(ids.shape[1])[None] <= lengths[:, None]
    return (picked * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


def _ctc_part(owsm, reader, lang, task, layer, ln_post, done, summary, batch: int = 16):
    """The rows and skips of one ``ctc`` part: the CTC head over the stored states of layer ``layer``."""
    rows_of = reader.arrays(lang).rows
    out = {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}
    if task != "transcribe":
        return out, [(lang, rows_of[u].id, task, "ctc_transcribes_only") for u in done]
    blank, per_window = owsm.config.token_id("<blank>"), owsm.config.n_frames
    skipped = [(lang, rows_of[u].id, task, "no_reference") for u in done if not rows_of[u].transcription]
    done = np.asarray(done, np.int64)
    for first in range(0, len(done), batch):
        index = done[first : first + batch]
        lengths = reader.lengths(lang)[index]
        states, _ = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
        x = jnp.asarray(states)
        if ln_post and layer < owsm.n_layers_out - 1:  # L+1 is after_norm's output already
            x = owsm.encoder.after_norm(x)
        logp = np.asarray(jax.nn.log_softmax(owsm.decoder.ctc_logits(x)))
        for i, u in enumerate(index):
            n = int(lengths[i])
            best = logp[i, :n].argmax(-1)
            ids = []
            for start in range(0, n, per_window):  # windows are decoded apart, as ESPnet decodes each
                w = best[start : start + per_window]
                ids += [int(t) for t in w[np.r_[True, w[1:] != w[:-1]]] if t != blank]
            text, row = owsm.text(ids), rows_of[u]
            values = dict(
                language=lang, id=row.id, recording=row.recording, utterance=int(u), layer=int(layer),
                ln_post=bool(ln_post), task=task, decoding=CTC, language_token=lang, hypothesis=text,
                reference=row.transcription or None, avg_logprob=float(logp[i, np.arange(n), best].mean()),
                compression_ratio=compression_ratio(text), n_tokens=len(ids),
            )  # fmt: skip
            for name in out:
                out[name].append(values[name])
            summary.decoded += 1
            summary.tokens += len(ids)
    return out, skipped
