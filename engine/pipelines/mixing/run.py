"""Context mixing by value zeroing: how much of each word's representation at a layer comes from each other word of
its utterance (``jobs/mixing.py``; docs/value_zeroing.md says what is computed and what the demo shows).

The model is the store's (its checkpoint's sha256 is checked) and must offer ``Encoder.value_zeroing`` (Whisper, the
wav2vec2 family; others are refused in one line). Each utterance is read again from the audio its utterance table
points to and encoded once (layers 0..L of its window, the padding Whisper attends to included: the store keeps the
valid frames only, and perhaps in half precision); then every chosen block re-runs from its input with each word's
value vectors zeroed, the words' masks batched (``engine.models.common.value_zeroing``), giving one row-normalised
``word x word`` matrix per block. Words are the align job's (``--words``: ``<lang>/words.parquet``, times in seconds),
as inclusive frame spans at the reference's frame rate (``frame_rate`` for padded windows; for unpadded ones the
window's frames over its seconds). Utterances over one window, with fewer than two words or without words are skipped
and counted.

Work units are languages, claimed (``engine.runtime.claims``) so that any number of ``--worker`` processes share a
run; each is written whole with its digest as soon as it is done (a rerun reads it back)::

    OUT/matrices/<lang>.npz     ids, layers, word_offsets, words, starts, ends, spans, and mixing_<k>
                                f32[layer, word, word] of the k-th utterance (row i: word i's change when each word
                                is zeroed, summing to 1); skipped (lang, id, reason)
    OUT/mixing.parquet          per language and layer: the share of self and of context, by word distance
                                (``engine.pipelines.mixing.summary``)
    OUT/figures/mixing.png      self share against layer per language; context share by word distance
    OUT/interp.parquet          with --interp: the mixing of the words interp matched across languages against the
                                others' (``engine.pipelines.mixing.tiein``)
    OUT/manifest.json           the run's settings: a rerun with others is refused
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import time

import numpy as np

from engine import captions
from engine.data.audio import SAMPLE_RATE, load_audio
from engine.errors import AudioError, BabelgridError
from engine.faults import fault_point
from engine.models.common.value_zeroing import mixing_matrix, word_spans
from engine.models.family import load_encoder
from engine.pipelines.mixing import summary as summary_lib
from engine.pipelines.mixing import tiein
from engine.pipelines.mixing.config import MixingConfig, MixingError
from engine.runtime.runs import RunSummary, output_run, progress_bar, work_claims
from engine.runtime.units import claimed_units
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_value
from engine.stores.provenance import identity, not_the_stores_model
from engine.stores.reader import open_store
from engine.stores.records import npz_bytes, read_npz
from engine.stores.words import check_words_store, read_words, words_language

log = logging.getLogger(__name__)

MATRICES = "matrices/"
# the arrays of matrices/<lang>.npz besides mixing_<k> (docs/outputs.md)
MATRIX_KEYS = ("ids", "layers", "word_offsets", "word_index", "words", "starts", "ends", "spans", "skipped")
_EDGES = re.compile(r"^[\W_]+|[\W_]+$", re.UNICODE)  # punctuation around a word: a word of none is no word


@dataclasses.dataclass
class MixingSummary(RunSummary):
    blocks: tuple = ()
    utterances: int = 0
    words: int = 0
    parts: int = 0  # languages this process computed (the others were read back or done by other workers)
    lines: list = dataclasses.field(default_factory=list)
    paths: tuple = ()

    def report(self) -> str:
        head = (f"mixing: value zeroing at blocks {list(self.blocks)} of {self.utterances} utterances ({self.words} "
                f"words) in {self.seconds:.1f} s; {self.parts} languages computed here")  # fmt: skip
        return "\n".join([head, *self.lines, *self.skip_lines(), *(f"wrote {p}" for p in self.paths)])


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance's words, as the job scores them."""

    id: str
    path: str
    index: tuple[int, ...]  # the align job's word_index
    words: tuple[str, ...]
    starts: tuple[float, ...]
    ends: tuple[float, ...]


def run_mixing(config: MixingConfig) -> MixingSummary:
    """Zeroes, scores and writes (module docstring); returns the summary."""
    start = time.perf_counter()
    summary = MixingSummary()
    reader = open_store(config.store)
    langs, encoder, blocks = checked(config, reader)
    summary.blocks = blocks
    check_words_store(config.words, reader, langs, MixingError)
    picked = {lang: chosen(config, reader, lang, summary) for lang in langs}
    interp = tiein.aligned(config.interp) if config.interp else None  # read (and refused) before any work
    url = config.run.out
    _, kv = open_kvstore(url)
    claims = work_claims(config.run, "mixing", kv)
    fix = repair_hint(url, "mixing")

    def stored(lang: str) -> bool:
        return read_value(kv, f"{MATRICES}{lang}.npz", url).state == "value"

    # What the parts are made from: the store, and each language's utterances and their words as chosen now (a
    # --words folder aligned again, or encoding gone on, is another input: refused, not mixed with the old parts).
    chosen_now = {lang: hashlib.sha256(repr(picked[lang]).encode()).hexdigest() for lang in langs}
    inputs = {"layer_store": identity(reader.manifest), "utterances_and_words": chosen_now}
    with output_run(config, "mixing", MixingError, ignore=("chunk",), claims=(claims,), inputs=inputs) as lease:
        missing = [lang for lang in langs if not stored(lang)]
        total = sum(len(picked[lang]) for lang in missing) * len(blocks)
        bar = progress_bar(total, "mixing", "block", config.run.progress)
        for lang in claimed_units(claims, lease, summary, bar, missing, stored, len(langs), "languages"):
            fault_point("before_part")  # test-only (engine.faults): the unit's claim is held
            arrays = _language(encoder, reader, lang, picked[lang], blocks, config, bar)
            write_outputs(kv, {f"{MATRICES}{lang}.npz": npz_bytes(arrays)}, url)
            summary.parts += 1
            log.info("mixing: %s done", lang)
        bar.close()
        parts = {lang: _read_part(kv, lang, url, fix, blocks) for lang in langs}
        for part in parts.values():
            for la, uid, reason in part["skipped"]:
                summary.skip(str(reason), str(la), str(uid))
            summary.utterances += len(part["ids"])
            summary.words += len(part["words"])
        rows = summary_lib.rows(parts)
        created = reader.manifest.get("created") or {}
        counts = [len(p["ids"]) for p in parts.values()]
        subtitle = captions.source_line(encoder.name, created, "n = " + captions.count_range(counts, "utterances"))
        writes = {summary_lib.TABLE: summary_lib.parquet(rows), summary_lib.FIGURE: summary_lib.png(rows, subtitle)}
        summary.lines = summary_lib.report_lines(rows)
        if interp is not None:
            tied = tiein.rows(parts, interp)
            writes[tiein.TABLE] = tiein.parquet(tied)
            summary.lines += tiein.report_lines(tied)
        write_outputs(kv, writes, url)
    summary.paths = tuple(url.rstrip("/") + "/" + k for k in writes)
    summary.seconds = time.perf_counter() - start
    return summary


def checked(config: MixingConfig, reader) -> tuple[list[str], object, tuple[int, ...]]:
    """(the run's languages, the loaded encoder, the blocks), once checked against the store and the model."""
    info = reader.info
    langs = list(config.langs) if config.langs else list(reader.languages)
    missing = sorted(set(langs) - set(reader.languages))
    if missing:
        raise MixingError(f"languages {missing} are not in the layer store, which has {list(reader.languages)}")
    encoder = load_encoder(config.model, adapter=config.adapter)
    if encoder.sha256 != info.checkpoint_sha256 or encoder.family != info.family:
        raise MixingError(not_the_stores_model(info, encoder.name, encoder.sha256, config.model))
    if encoder.value_zeroing is None:
        raise MixingError(f"{encoder.name} ({encoder.family}) cannot re-run one block from its input yet: value "
                          "zeroing is offered for Whisper and the wav2vec2 family")  # fmt: skip
    n_blocks = encoder.value_zeroing.blocks
    blocks = tuple(config.layers) if config.layers is not None else tuple(range(1, n_blocks + 1))
    bad = [b for b in blocks if not 1 <= b <= n_blocks]
    if bad:
        raise MixingError(f"--layers {bad} are not blocks of this model (1..{n_blocks}: block l gives layer l; "
                          f"{encoder.layer_meaning})")  # fmt: skip
    return langs, encoder, blocks


def chosen(config: MixingConfig, reader, lang: str, summary: MixingSummary) -> list[Utterance]:
    """The first ``config.utterances`` utterances of ``lang`` the store has done that have at least two timed words."""
    try:
        table = read_words(config.words, words_language(config.words, lang)).to_pydict()
    except BabelgridError as e:
        raise MixingError(f"mixing needs {lang}'s word timestamps: {e}") from None
    timed: dict[str, list] = {}
    for uid, wi, word, s, e in zip(table["id"], table["word_index"], table["word"], table["start"], table["end"],
                                   strict=True):  # fmt: skip
        if _EDGES.sub("", str(word).strip()) and math.isfinite(s) and math.isfinite(e) and 0 <= s <= e:
            timed.setdefault(str(uid), []).append((int(wi), str(word).strip(), float(s), float(e)))
    rows = reader.arrays(lang).rows
    if timed and not {str(row.id) for row in rows} & set(timed):
        raise MixingError(f"no utterance of {lang} in the layer store has words in --words {config.words!r} (its ids "
                          f"{sorted(timed)[:3]} ...): they were aligned on another store (its align.json names it); "
                          "run jobs.align on this one")  # fmt: skip
    out = []
    for u in np.flatnonzero(reader.done(lang)):
        row = rows[int(u)]
        words = sorted(timed.get(str(row.id), []))
        if len(words) < 2:
            summary.skip("fewer_than_two_words", lang, str(row.id))
            continue
        out.append(Utterance(str(row.id), str(row.path), *(tuple(x) for x in zip(*words, strict=True))))
        if len(out) == config.utterances:
            break
    return out


def _language(encoder, reader, lang: str, utterances: list[Utterance], blocks, config: MixingConfig, bar) -> dict:
    """One language's part (module docstring)."""
    vz = encoder.value_zeroing
    ids, index, words, starts, ends, spans, offsets, skipped, arrays = [], [], [], [], [], [], [0], [], {}
    for utt in utterances:
        try:
            audio = load_audio(utt.path)
            inputs, valid = encoder.windows(audio, reader.info.long_audio)
        except AudioError as e:
            skipped.append((lang, utt.id, "audio_unreadable"))
            log.warning("mixing: %s/%s skipped: %s", lang, utt.id, e)
            bar.update(len(blocks))
            continue
        if len(inputs) > 1:
            skipped.append((lang, utt.id, "longer_than_one_window"))
            bar.update(len(blocks))
            continue
        frames = int(valid[0])
        # the reference's rate: encoder frames over the seconds of the input (a padded window's frames over its 30 s)
        rate = encoder.frame_rate if encoder.pads_windows else frames / (len(audio) / SAMPLE_RATE)
        keep = [k for k, s in enumerate(utt.starts) if math.ceil(s * rate) < frames]  # a word past the last frame
        if len(keep) < 2:
            skipped.append((lang, utt.id, "fewer_than_two_words"))
            bar.update(len(blocks))
            continue
        span = word_spans([utt.starts[k] for k in keep], [utt.ends[k] for k in keep], rate, frames)
        states = vz.layers(encoder.collate(inputs, 1))[:, 0]
        matrices = []
        for block in blocks:
            d = vz.distances(block, states[block - 1], frames, span, config.chunk)
            matrices.append(mixing_matrix(d, span, config.aggregate))
            bar.update(1)
        arrays[f"mixing_{len(ids)}"] = np.stack(matrices).astype(np.float32)
        ids.append(utt.id)
        index += [utt.index[k] for k in keep]
        words += [utt.words[k] for k in keep]
        starts += [utt.starts[k] for k in keep]
        ends += [utt.ends[k] for k in keep]
        spans.append(span)
        offsets.append(len(words))
    return arrays | {
        "ids": np.array(ids, dtype=str),
        "layers": np.asarray(blocks, np.int32),
        "word_offsets": np.asarray(offsets, np.int64),
        "word_index": np.asarray(index, np.int32),
        "words": np.array(words, dtype=str),
        "starts": np.asarray(starts, np.float64),
        "ends": np.asarray(ends, np.float64),
        "spans": np.concatenate(spans) if spans else np.zeros((0, 2), np.int64),
        "skipped": np.array(skipped, dtype=str).reshape(-1, 3),
    }


def _read_part(kv, lang: str, url: str, fix: str, blocks) -> dict:
    key = f"{MATRICES}{lang}.npz"
    found = read_output(kv, key, url, fix=fix)
    if found is None:  # finished by every worker, yet gone: deleted under the run
        raise MixingError(f"{url}/{key} is missing after every language was done: rerun to redo it")
    data = read_npz(found, key, url, fix)
    if tuple(int(b) for b in data["layers"]) != tuple(blocks):
        raise MixingError(f"{url}/{key} holds blocks {list(data['layers'])}, not {list(blocks)}: use a new --out")
    return data
