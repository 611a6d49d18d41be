"""The decode job's work unit: one (language, layer, ln_post) of a store, decoded from its audio for every task and
decoding, one part each (``engine.pipelines.decode.hypotheses``)."""

from __future__ import annotations

import zlib

import numpy as np

from engine.data.audio import AudioNotFoundError, EmptyAudioError, SilentAudioError, load_audio
from engine.errors import AudioError
from engine.faults import fault_point
from engine.models.whisper.decoding import DecodingOptions
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import parse_decoding
from engine.pipelines.decode.references import whisper_code
from engine.stores.kv import write_value


def compression_ratio(text: str) -> float:
    """Whisper's ``compression_ratio``: UTF-8 bytes over their zlib-compressed size (its gzip ratio)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def decode_windows(whisper, mel, options: list[DecodingOptions], batch_size: int, dtype):
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


def decode_unit(
    config, whisper, reader, kv, english, dtype, lang, layer, ln_post, done_now, pending, loaded, summary
) -> dict:
    """Decodes one claimed (lang, layer, ln_post) for the parts ``pending`` ``{(task, decoding): key}`` and writes
    them; returns the audio cache ``loaded`` (one language's log-mels at a time)."""
    rows = reader.arrays(lang).rows
    code = whisper_code(lang, config, whisper)
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
        write_value(kv, key, hyp.part_bytes(out_rows, done_now, skipped_audio + skipped), config.run.out)
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
    results = decode_windows(whisper, all_mel, options, config.batch_size, dtype)
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
