"""The decode job on a Canary store: early exit and zero-shot ASR / speech translation to English with Canary's
Transformer decoder (``engine.models.fastconformer.canary``), greedy.

For every (language, layer, task) each utterance is decoded from the store's states of encoder layer ``layer`` with
Canary's prompt (``LoadedCanary.prompt``: source language, target language, ``<|pnc|>``): task ``transcribe`` is
source = target = the store language's code (``fr_fr`` -> ``fr``; ``--decode_as fr_fr=xx`` names another), task
``translate`` is target English. A language without a ``<|xx|>`` token in the checkpoint's tokenizer is refused
before anything is written, and so is English with ``translate`` (this job translates to English; its English
transcriptions are the references).

Exactness: the decoder's cross-attention masks every frame past an utterance's valid ones, and the FastConformer
encoder masks a batch's padding, so a window's valid frames (what the store holds) are all the decoder reads: nothing
is recomputed from audio. The decoder reads layer L as ``CanaryModel`` does (no encoder norm, no projection), and any
other layer the same way: ``ln_post`` is off in every row. Audio over 30 s is decoded window by window (each full
window's frames are the same number, ``LoadedCanary.window_frames``) and the windows' tokens joined. At layer L the
tokens are ``CanaryForConditionalGeneration.generate``'s (greedy) on the same clip; at layer k, its decoder's on
``hidden_states[k]`` (tests/models/test_canary.py; through this job: tests/jobs/test_decode_canary.py).

Decodings: ``greedy`` and ``beam:N``, transformers' beam search (``engine.models.fastconformer.beam``:
``generate(num_beams=N, length_penalty=--length_penalty)``; ``--patience`` has no counterpart and is refused unless
1.0; ``ctc`` is refused: Canary has no CTC head). Columns as
Whisper's, except: ``language_token`` is Canary's source language code (``fr``), ``avg_logprob`` the mean
log-probability of the generated tokens and the eos after them (teacher-forced, the same decoder). Resume per part;
a work unit is one (language, layer), claimed as the other paths claim theirs
(``engine.pipelines.decode.store.decode_claimed``).
"""

from __future__ import annotations

import numpy as np

from engine.dtypes import DTYPES
from engine.errors import CheckpointError, LanguageError
from engine.languages import fleurs_to_whisper
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError, parse_decoding
from engine.pipelines.decode.ctc import _text_language
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.references import english_language, english_references
from engine.pipelines.decode.store import Units, check_store, decode_claimed
from engine.pipelines.decode.unit import compression_ratio
from engine.stores.kv import write_value

TARGET = "en"  # translate: X -> English
BATCH_UTTERANCES = 16  # utterances read from the store at a time
PAD_FRAMES = 16  # a batch's memory is padded to a multiple of this many frames (fewer compilations)
MANIFEST_FIELDS = ("format", "version", "head", "model_name", "checkpoint_sha256", "store", "decode_as",
                   "max_new_tokens", "compute_dtype", "length_penalty")  # fmt: skip


def run_canary_decode(config: DecodeConfig, reader, lease, summary, load) -> None:
    """Decodes the store's languages and layers with ``config.model``'s decoder (``load``: ``load_canary``) into
    ``config.run.out``; counts into ``summary``. The caller holds the output's writer lease (``lease``)."""
    if config.model is None:
        raise DecodeError("decode needs the store's model: pass --model (the Canary folder or hub id it encoded with)")
    if "ctc" in config.decodings:
        raise DecodeError("--decoding ctc reads a CTC head, which Canary has none of; pass greedy or beam:N")
    if config.patience != 1.0:
        raise DecodeError(
            "--patience: Canary's beam search is transformers' generate(num_beams=N), which has no patience; leave it "
            "at 1.0 (--length_penalty applies, as generate's)"
        )
    try:
        canary = load(config.model, dtype=DTYPES[config.compute_dtype])
    except CheckpointError as e:
        raise DecodeError(str(e)) from None
    langs, layers = check_store(config, reader, canary.name, canary.sha256)
    codes = {lang: _canary_code(lang, config, canary.languages()) for lang in langs}
    if "translate" in config.tasks:
        english = [lang for lang in langs if codes[lang] == TARGET]
        if english:
            raise DecodeError(
                f"task translate: Canary's decode here translates into English, and {english[0]!r} is English; pass "
                "--langs without it (its transcriptions stay the references)"
            )
        if config.references is None and english_language(reader) is None:
            raise DecodeError(
                "task translate needs English references: the store has no English language; pass --references with "
                "a TSV file of id<TAB>English text"
            )
    english = english_references(config, reader) if "translate" in config.tasks else {}
    prompts = {(lang, task): canary.prompt(codes[lang], codes[lang] if task == "transcribe" else TARGET)
               for lang in langs for task in config.tasks}  # fmt: skip
    manifest = {
        "format": "babelgrid-hypotheses", "version": 1, "head": "decoder", "model_name": canary.name,
        "checkpoint_sha256": canary.sha256, "store": reader.url, "exact": True, "decode_as": dict(config.decode_as),
        "max_new_tokens": config.max_new_tokens, "compute_dtype": config.compute_dtype, "punctuation": True,
        "length_penalty": config.length_penalty,
    }  # fmt: skip
    units = {f"{lang}/L{layer:02d}": (lang, layer) for lang in langs for layer in layers}

    def part_keys(unit: str) -> dict:
        lang, layer = units[unit]
        return {(task, d): hyp.part_key(lang, task, d, layer, False) for task in config.tasks for d in config.decodings}

    def work(kv, unit: str, pending: dict, done: list[int]) -> None:
        lang, layer = units[unit]
        for (task, decoding), key in pending.items():
            args = (canary, reader, lang, layer, task, decoding, prompts[(lang, task)], codes[lang], english)
            rows, skips = _part(*args, np.asarray(done, np.int64), config, summary)
            write_value(kv, key, hyp.part_bytes(rows, done, skips), config.run.out)

    def finish(kv) -> None:
        merge(kv, config, reader, langs, {lang: _text_language(lang) for lang in langs},
              [(layer, False) for layer in layers], summary)  # fmt: skip

    summary.unit = "(language, layer)"
    decode_claimed(config, reader, lease, summary, manifest, Units(units, part_keys), work, finish, "decode (canary)",
                   fields=MANIFEST_FIELDS)  # fmt: skip


def _canary_code(lang: str, config: DecodeConfig, known: list[str]) -> str:
    """Canary's code of store language ``lang`` (``--decode_as`` first, else its ISO 639-1 code)."""
    mapping = dict(config.decode_as)
    try:
        code = mapping.get(lang) or fleurs_to_whisper(lang)
    except LanguageError:
        code = lang
    if code not in known:
        raise DecodeError(
            f"language {lang!r} ({code}) has no <|{code}|> token in this Canary model, which knows "
            f"{', '.join(known)}; pass --langs without it, or --decode_as {lang}=xx"
        )
    return code


def _windows(states: np.ndarray, n: int, per_window: int) -> list[np.ndarray]:
    """One utterance's valid frames ``states[:n]`` cut into its encoder windows (every full one ``per_window``)."""
    return [states[start : min(start + per_window, n)] for start in range(0, max(n, 1), per_window)]


def _part(canary, reader, lang, layer, task, decoding, prompt, code, english, done, config, summary):
    """(rows, skips) of one (language, layer, task, decoding) part."""
    rows_of = reader.arrays(lang).rows
    out = {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}
    skipped = []
    per_window = canary.window_frames()
    for first in range(0, len(done), BATCH_UTTERANCES):
        index = done[first : first + BATCH_UTTERANCES]
        lengths = reader.lengths(lang)[index]
        states, _ = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
        windows, owner = [], []
        for i, n in enumerate(lengths):
            cut = _windows(states[i], int(n), per_window)
            windows += cut
            owner += [i] * len(cut)
        tokens, logprobs = _decode(canary, windows, prompt, decoding, config)
        summary.windows += len(windows)
        owner = np.asarray(owner)
        for i, u in enumerate(index):
            mine = np.flatnonzero(owner == i)
            ids = sum((tokens[w] for w in mine), [])
            text, row = canary.text(ids), rows_of[u]
            ref = row.transcription if task == "transcribe" else english.get(row.id)
            if not ref:
                skipped.append((lang, row.id, task, "no_reference"))
                ref = None
            values = dict(
                language=lang, id=row.id, recording=row.recording, utterance=int(u), layer=int(layer), ln_post=False,
                task=task, decoding=decoding, language_token=code, hypothesis=text, reference=ref,
                avg_logprob=float(np.mean([logprobs[w] for w in mine])), compression_ratio=compression_ratio(text),
                n_tokens=len(ids),
            )  # fmt: skip
            for name in out:
                out[name].append(values[name])
            summary.decoded += 1
            summary.tokens += len(ids)
    return out, skipped


def _decode(canary, windows: list[np.ndarray], prompt: list[int], decoding: str, config: DecodeConfig):
    """Tokens (greedy or beam search: ``decoding``; a list per window) and mean log-probabilities of ``windows``
    (f32[frame, width] each), in batches of ``config.batch_size`` rows (the last padded with copies of its first)."""
    beams = parse_decoding(decoding)
    tokens, logprobs = [], []
    size = config.batch_size
    for start in range(0, len(windows), size):
        chunk = windows[start : start + size]
        frames = max(len(w) for w in chunk)
        frames += -frames % PAD_FRAMES
        memory = np.zeros((size, frames, chunk[0].shape[-1]), np.float32)
        valid = np.zeros(size, np.int32)
        for r in range(size):
            w = chunk[r] if r < len(chunk) else chunk[0]
            memory[r, : len(w)], valid[r] = w, len(w)
        if beams == 1:
            ids, n = canary.greedy(memory, valid, prompt, config.max_new_tokens)
        else:
            ids, n, _ = canary.beam(memory, valid, prompt, beams, config.max_new_tokens, config.length_penalty)
        avg = canary.avg_logprob(memory, valid, prompt, ids, n)
        tokens += [ids[r, : n[r]].tolist() for r in range(len(chunk))]
        logprobs += avg[: len(chunk)].tolist()
    return tokens, logprobs
