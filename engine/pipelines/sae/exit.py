"""Early-exit WER/CER with an SAE's reconstruction standing in for its layer: the speech analogue of the "loss
recovered" that text SAEs report.

For a family with a text decoder (Whisper, OWSM, Canary), the decoder reads encoder layer L directly, as the decode
job's early exit does (``--ln_post on``: the encoder's final norm applied to an intermediate layer, where the family
has one), twice per window:

- ``stored``: the layer as the model computes it;
- ``reconstructed``: its valid frames replaced by the SAE's reconstruction of the store's states of those frames
  (``x_hat``, per frame, as the exported weights apply), the window's padding frames left as the model computes them
  (the store never held them, and the SAE was never trained on them).

A decoder that reads a window's padding (Whisper's, OWSM's) gets the window recomputed from the audio the store's
utterance table points to, as the decode job does; one that masks the padding (Canary's) reads the store's states
cut into windows. Greedy, the store language's own prompt, ``--max_new_tokens``; the first ``--decode_utterances``
finished utterances with a transcription of each language the decoder has a token for. WER and CER are the decode
job's (``engine.text.metrics``: jiwer after Whisper's normaliser of the language), pooled over the utterances of a
language and over all of them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from engine.data.audio import load_audio
from engine.errors import AudioError
from engine.models.family import FAMILIES
from engine.models.interface import Search
from engine.pipelines.sae.config import SaeError
from engine.pipelines.stages.early_exit import cut_windows, has_decoder, score_normalizer, search_windows
from engine.stores.provenance import not_the_stores_model
from engine.text import metrics

log = logging.getLogger(__name__)

KINDS = ("stored", "reconstructed")
EXIT_COLUMNS = ("layer", "language", "utterances", "wer", "wer_reconstructed", "cer", "cer_reconstructed")


@dataclasses.dataclass(frozen=True)
class ExitScores:
    """One layer's early-exit scores: ``rows`` per language (``EXIT_COLUMNS``), then ``"all"`` pooled."""

    rows: list
    hypotheses: dict  # (language, kind) -> [(id, reference, hypothesis)]


def load_decoder(model: str | None, info):
    """The store's text decoder from ``--model`` (checked against the store's checkpoint), or None with the reason
    the early exit is not scored."""
    if model is None:
        return None, "early-exit WER/CER: not scored (give --model, the store's checkpoint, to decode)"
    if not has_decoder(info):
        return None, f"early-exit WER/CER: not scored ({info.model_name}, a {info.family} model, has no text decoder)"
    decoder = FAMILIES[info.family].decoder(model)
    if decoder.sha256 != info.checkpoint_sha256:
        raise SaeError(f"--model {model!r}: {not_the_stores_model(info, decoder.name, decoder.sha256, model)}")
    return decoder, None


def early_exit(decoder, reader, layer: int, reconstruct: Callable[[np.ndarray], np.ndarray], langs, per_language: int,
               max_new_tokens: int, batch_size: int, bar=None) -> ExitScores:  # fmt: skip
    """WER/CER of layer ``layer`` decoded as stored and as ``reconstruct`` (``f32[frames, embed] -> f32[frames,
    embed]``, the SAE applied to stored frames) gives it back (module docstring). ``bar``: a progress bar advanced
    by each language's ``exit_utterances`` once decoded (or skipped)."""
    search = Search(1, max_new_tokens, 1.0, 1.0)
    top = decoder.n_layers_out - 1
    norm = decoder.final_norm if decoder.caps.ln_post and layer < top else None
    rows, pooled, hypotheses = [], {kind: ([], []) for kind in KINDS}, {}
    for lang in langs:
        language = decoder.language(lang, {})
        picked = exit_utterances(reader, lang, per_language)
        if language is None:
            log.warning("sae: %s has no language token in %s: not decoded", lang, decoder.name)
            _advance(bar, len(picked))
            continue
        if not picked:
            continue
        decode = _from_audio if decoder.caps.reads_padding else _from_store
        got = decode(decoder, reader, lang, layer, picked, reconstruct, norm, language, search, batch_size)
        _advance(bar, len(picked))
        if not got["stored"]:  # every picked utterance's audio was unreadable (logged): nothing to score
            continue
        normalizer = score_normalizer(decoder, lang, language)
        row = {"layer": layer, "language": lang}
        for kind in KINDS:
            refs = [reference for _, reference, _ in got[kind]]
            hyps = [hypothesis for _, _, hypothesis in got[kind]]
            row[_column("wer", kind)] = metrics.error_rate(refs, hyps, "word", normalizer)
            row[_column("cer", kind)] = metrics.error_rate(refs, hyps, "char", normalizer)
            pooled[kind][0].extend(normalizer(r) for r in refs)
            pooled[kind][1].extend(normalizer(h) for h in hyps)
            hypotheses[lang, kind] = got[kind]
        row["utterances"] = len(got["stored"])
        rows.append(row)
    if rows:
        row = {"layer": layer, "language": "all", "utterances": sum(r["utterances"] for r in rows)}
        for kind in KINDS:
            refs, hyps = pooled[kind]
            row[_column("wer", kind)] = metrics.error_rate(refs, hyps, "word", False)
            row[_column("cer", kind)] = metrics.error_rate(refs, hyps, "char", False)
        rows.append(row)
    return ExitScores(rows, hypotheses)


def _column(measure: str, kind: str) -> str:
    return measure if kind == "stored" else f"{measure}_reconstructed"


def _advance(bar, n: int) -> None:
    if bar is not None:
        bar.update(n)


def exit_utterances(reader, lang: str, per_language: int) -> list[int]:
    """The first ``per_language`` finished utterances of ``lang`` with a transcription."""
    rows = reader.arrays(lang).rows
    done = [int(u) for u in np.flatnonzero(reader.done(lang)) if rows[int(u)].transcription]
    return done[:per_language]


def _stored(reader, lang: str, layer: int, u: int) -> np.ndarray:
    n = int(reader.lengths(lang)[u])
    states, _ = reader.language_layer(lang, layer, np.asarray([u]), np.float32, frames=n)
    return states[0, :n]


def _from_audio(decoder, reader, lang, layer, picked, reconstruct, norm, language, search, size) -> dict:
    """Windows recomputed from the audio, the store's valid frames replaced by their reconstruction in the second."""
    rows = reader.arrays(lang).rows
    inputs, swaps, owner = [], [], []
    for u in picked:
        try:
            windows = decoder.windows(load_audio(rows[u].path), reader.info.long_audio)
        except AudioError as e:
            log.warning("sae: %s/%s not decoded (%s)", lang, rows[u].id, e)
            continue
        stored = _stored(reader, lang, layer, u)
        cut = cut_windows(stored, len(stored), decoder.window_frames)
        if len(cut) != len(windows):
            log.warning("sae: %s/%s not decoded: %d windows from its audio, %d in the store", lang, rows[u].id,
                        len(windows), len(cut))  # fmt: skip
            continue
        inputs += windows
        swaps += [reconstruct(w) for w in cut]
        owner += [u] * len(windows)
    tokens = {kind: [] for kind in KINDS}
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]
        n = len(chunk)
        chunk = chunk + [chunk[0]] * (size - n)  # one program for every batch, as the decode job
        (_, raw, valid), *_ = decoder.memories(decoder.collate(chunk), [(layer, False)])
        raw = np.array(raw, np.float32)
        rebuilt = raw.copy()
        for r, swap in enumerate(swaps[start : start + n]):
            rebuilt[r, : len(swap)] = swap
        for kind, memory in (("stored", raw), ("reconstructed", rebuilt)):
            memory = norm(memory) if norm is not None else memory
            ids, _, _ = decoder.search(memory, valid, "transcribe", [language] * size, search)
            tokens[kind] += list(ids)[:n]
    return _texts(decoder, rows, owner, tokens)


def _from_store(decoder, reader, lang, layer, picked, reconstruct, norm, language, search, size) -> dict:
    """The store's states cut into windows, and their reconstruction (a decoder that masks the padding)."""
    rows = reader.arrays(lang).rows
    windows, owner = [], []
    for u in picked:
        stored = _stored(reader, lang, layer, u)
        cut = cut_windows(stored, len(stored), decoder.window_frames)
        windows += cut
        owner += [u] * len(cut)
    tokens = {}
    for kind, memory in (("stored", windows), ("reconstructed", [reconstruct(w) for w in windows])):
        if norm is not None:
            memory = [np.asarray(norm(w[None]))[0] for w in memory]
        tokens[kind], _, _ = search_windows(decoder, memory, "transcribe", language, search, size)
    return _texts(decoder, rows, owner, tokens)


def _texts(decoder, rows, owner, tokens) -> dict:
    """(id, reference, hypothesis) per utterance and kind, its windows' tokens joined."""
    owner = np.asarray(owner, np.int64)
    out = {kind: [] for kind in KINDS}
    for u in dict.fromkeys(owner.tolist()):
        mine = np.flatnonzero(owner == u)
        for kind in KINDS:
            ids = sum((list(tokens[kind][i]) for i in mine), [])
            out[kind].append((str(rows[u].id), rows[u].transcription, decoder.text(ids)))
    return out
