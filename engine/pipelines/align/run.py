"""Word timestamps for every utterance of a layer store (``jobs/align.py``).

The model is the registry's ``cross_attention`` loader of the store's family: an ``Aligner``
(``engine.models.interface``), whose decoder's cross-attention heads time words. The store's layer the decoder reads
(the aligner's ``top``) is its input, so no audio is decoded or re-encoded. Transcripts come from the store's utterance
table (``transcripts="store"``: the dataset's text) or are decoded greedily from the same states (``"decode"``: window
by window). An utterance of several windows is aligned window by window (engine/models/whisper/timing.py); its times run
over the whole utterance.

The store keeps valid frames only, but the decoder may also read frames past them (the padding of the last window);
the aligner fills them (``Aligner.fill``). A store language the model has no language token for is skipped
(``no_language_token``).

Output (``OUT`` a local path or a TensorStore kvstore URL)::

    OUT/align.json                      settings and model of the run; a resumed run must match them
    OUT/<lang>/words.parquet            utterance, id, recording, word_index, word, start, end, probability
    OUT/<lang>/skipped.csv              utterance, id, reason: what has no words and why
    OUT/<lang>/parts/<first>.parquet    the same rows for utterances first..first+chunk-1 (the unit of resume)

Resume: a part is kept when the utterances done in the layer store over its range are the ones it was made from
(its Parquet metadata lists them); ``words.parquet`` and ``skipped.csv`` are rebuilt from the parts at the end.
Multi-process runs (``jax.distributed``) share the parts through claim keys in the output store
(``engine.runtime.claims``): a part is the work unit. A process that dies leaves its claims to expire, and the others
take its parts; process 0 writes the merged files once every part is done, without a barrier (a dead peer would hang
it). A part is one write (its Parquet metadata is its done marker), so a killed process leaves a part whole or absent.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from engine.dtypes import DTYPES
from engine.faults import fault_point
from engine.models.family import FAMILIES, refuse_without_head
from engine.models.interface import CROSS_ATTENTION, Aligner
from engine.pipelines.align.config import AlignConfig, AlignError
from engine.runtime.parallel import is_process_zero
from engine.runtime.runs import RunSummary, job_lease, open_claimed_run, progress_bar, work_claims
from engine.runtime.units import UnitLoop
from engine.stores.kv import open_kvstore, write_value
from engine.stores.parts import read_part
from engine.stores.provenance import identity, not_the_stores_model
from engine.stores.reader import open_store
from engine.stores.schema import is_done
from engine.stores.similarity import check_name
from engine.stores.words import MANIFEST, WORD_SCHEMA, audio_digest, part_bytes, part_key, write_language

FORMAT_NAME = "babelgrid-words"
FORMAT_VERSION = 2  # 2: utterances over 30 s aligned window by window (a resume of a 1 would mix the two)
log = logging.getLogger(__name__)
# Manifest fields a resumed run must share (the layer store's URL may be spelled differently between runs).
MANIFEST_FIELDS = (
    "format",
    "version",
    "model_name",
    "checkpoint_sha256",
    "transcripts",
    "median_filter_width",
    "chunk",
    "compute_dtype",
    "layer_store_identity",
)


@dataclasses.dataclass
class AlignSummary(RunSummary):
    aligned: int = 0  # utterances aligned in this run
    words: int = 0
    already_done: int = 0  # utterances in parts kept from an earlier run
    audio_seconds: float = 0.0
    outputs: list[str] = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [
            f"aligned {self.aligned} utterances ({self.words} words, {self.audio_seconds:.0f} s of audio) in "
            f"{self.seconds:.1f} s; {self.already_done} already done; skipped: {self.n_skipped}",
            self.work_line("parts"),
        ]
        lines += self.skip_lines()
        if self.skipped.get("no_transcription"):
            lines.append(
                f"{len(self.skipped['no_transcription'])} utterances have no transcription in the layer store: align "
                "them with --transcripts decode (greedy transcripts from the same states), or give the dataset "
                "transcripts (a manifest's transcription column, or <id>.txt beside each clip of a folder) and encode "
                "again into a new store"
            )
        return "\n".join(lines)


def _manifest(config: AlignConfig, reader, aligner: Aligner) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "store": reader.url,
        # which layer store, not only its path (engine.stores.provenance): a resume on one encoded again is refused
        "layer_store_identity": identity(reader.manifest),
        # the audio per language (id, recording, duration): the words' readers compare it with their store's
        "audio": {lang: audio_digest(reader, lang) for lang in reader.languages},
        "model_name": aligner.name,
        "checkpoint_sha256": aligner.sha256,
        "transcripts": config.transcripts,
        "median_filter_width": config.median_filter_width,
        "chunk": config.chunk,
        "compute_dtype": config.compute_dtype,
    }


def _check_store(reader, aligner: Aligner, source) -> None:
    info = reader.info
    if not aligner.same_store(info):
        raise AlignError(not_the_stores_model(info, aligner.name, aligner.sha256, source))
    top = aligner.top
    if top not in info.layers:
        raise AlignError(
            f"the layer store holds layers {list(info.layers)} but not {top} (the encoder output the decoder reads); "
            f"encode with --layers all or a list that includes {top}"
        )


NO_LANGUAGE = "no_language_token"  # the skip reason of a store language the model has no language token for


def _prompt_language(lang: str, aligner: Aligner) -> str | None:
    """The aligner's prompt language of a store language; None (its utterances are skipped) where it has none."""
    language = aligner.language(lang)
    if language is None:
        log.warning(
            "store language %r has no language token in model %r: its utterances are skipped (%s)",
            lang, aligner.name, NO_LANGUAGE,
        )  # fmt: skip
    return language


def _new_rows() -> dict:
    return {name: [] for name in WORD_SCHEMA.names}


def _align_chunk(aligner, reader, lang, language, rows, lengths, todo, config, summary, rows_out, skipped):
    """Aligns utterances ``todo`` (done in the store) of one part, appending to ``rows_out`` / ``skipped``."""
    window = aligner.window_frames
    by_windows: dict[int, list[int]] = {}
    for u in todo:
        by_windows.setdefault(-(-int(lengths[u]) // window), []).append(u)
    for n_windows, group in sorted(by_windows.items()):
        frames = n_windows * window
        for i in range(0, len(group), config.batch_size):
            batch = group[i : i + config.batch_size]
            # fill overwrites every frame past a length, so the reader need not zero them first.
            stored, n = reader.language_layer(lang, aligner.top, utterances=batch, zero_padding=False)
            states = aligner.fill(stored, n, frames)
            if config.transcripts == "decode":
                texts = aligner.transcribe(states, n, language)
            else:
                texts = []
                for u in batch:
                    text = rows[u].transcription
                    texts.append(aligner.tokens(text) if text else None)
            ok = []
            for u, t in zip(batch, texts, strict=True):
                if t is None:
                    skipped.append((u, rows[u].id, "no_transcription"))
                elif not aligner.fits(t, language):
                    skipped.append((u, rows[u].id, "transcript_too_long"))
                else:
                    ok.append((u, t))
            if not ok:
                continue
            # Pad the batch to a fixed size with copies of its first item: the batch size is then not one more
            # shape to compile for (the token bucket and the window count still are).
            pad = config.batch_size - len(ok) if len(group) >= config.batch_size else 0
            index = [batch.index(u) for u, _ in ok] + [batch.index(ok[0][0])] * pad
            words = aligner.align(
                states[index],
                n[index],
                [t for _, t in ok] + [ok[0][1]] * pad,
                [language] * len(index),
                config.median_filter_width,
            )
            for (u, _), ws in zip(ok, words, strict=False):
                for k, w in enumerate(ws):
                    rows_out["utterance"].append(u)
                    rows_out["id"].append(rows[u].id)
                    rows_out["recording"].append(rows[u].recording)
                    rows_out["word_index"].append(k)
                    rows_out["word"].append(w.text)
                    rows_out["start"].append(w.start)
                    rows_out["end"].append(w.end)
                    rows_out["probability"].append(w.probability)
                summary.aligned += 1
                summary.words += len(ws)
                summary.audio_seconds += rows[u].duration_s


def run_align(config: AlignConfig) -> AlignSummary:
    """Aligns every done utterance of the store's languages and writes the layout of the module docstring. The run
    holds the output folder's writer lease (``engine.runtime.lease``)."""
    with_heads = ", ".join(f.name.capitalize() for f in FAMILIES.values() if CROSS_ATTENTION in f.heads)
    reader = open_store(config.store)
    refuse_without_head(
        "align", CROSS_ATTENTION, config.model, reader.info,
        f"Word times are seconds, so an align run on the same audio serves any store: encode the clips with a model "
        f"with a {CROSS_ATTENTION} head ({with_heads}), run align on that store, and pass its --out as interp's "
        "--words on this one (BUILD.md#models)",
    )  # fmt: skip
    # The model against the store and the languages asked, before the lease: a request they refuse creates nothing.
    aligner: Aligner = FAMILIES[reader.info.family].cross_attention(config.model, dtype=DTYPES[config.compute_dtype])
    _check_store(reader, aligner, config.model)
    langs = list(config.langs) if config.langs else reader.languages()
    missing = sorted(set(langs) - set(reader.languages()))
    if missing:
        raise AlignError(f"languages {missing} are not in the layer store, which has {reader.languages()}")
    for lang in langs:
        check_name("language", lang)
    with job_lease(config, "align") as lease:
        return _align(config, lease, open_store(config.store), aligner, langs)


def _align(config: AlignConfig, lease, reader, aligner: Aligner, langs: list) -> AlignSummary:
    t0 = time.perf_counter()
    summary = AlignSummary()
    languages = {lang: _prompt_language(lang, aligner) for lang in langs}
    _, kv = open_kvstore(config.run.out)
    claims = work_claims(config.run, "align", kv)

    open_claimed_run(
        "babelgrid-align-manifest", claims, lease, kv, MANIFEST, _manifest(config, reader, aligner), config.run.out,
        fields=MANIFEST_FIELDS, error=AlignError, what="word timestamps folder", unrecorded=("layer_store_identity",),
    )  # fmt: skip
    # Work units (engine.runtime.claims): the parts, language by language. A snapshot of the utterances done in the
    # store: what each part is made from, and what a kept part must list.
    units, done = {}, {}
    for lang in langs:
        n = reader.arrays(lang).n_utterances
        done[lang] = is_done(reader.lengths(lang))
        for first in range(0, n, config.chunk):
            last = min(first + config.chunk, n)
            units[part_key(lang, first)] = (lang, first, last, [u for u in range(first, last) if done[lang][u]])

    def kept(unit: str) -> dict | None:
        """The metadata of the part ``unit`` if it was made from the utterances done now."""
        old = read_part(kv, unit, config.run.out, "align")
        return old[1] if old is not None and old[1]["done"] == units[unit][3] else None

    total = sum(last - first for _, first, last, _ in units.values())
    bar = progress_bar(total, "align", "utt", config.run.progress)
    todo = []
    for unit, (lang, first, last, done_now) in units.items():
        old = kept(unit)
        if old is None:
            todo.append(unit)
        elif is_process_zero():  # every process sees the parts kept from an earlier run; one counts them
            summary.already_done += len(done_now)
            _count_skips(summary, lang, reader.arrays(lang).rows, first, last, done_now, old["skipped"])
            bar.update(last - first)
    tables: dict[str, tuple] = {}
    with UnitLoop(claims, lease, summary, bar) as loop:
        weight = lambda unit: units[unit][2] - units[unit][1]  # noqa: E731
        what = f"parts of up to {config.chunk} utterances of one language"
        for claimed in loop.rounds(todo, lambda u: kept(u) is not None, total=len(units), weight=weight, what=what):
            for claim in claimed:
                lang, first, last, done_now = units[claim.unit]
                if lang not in tables:
                    tables = {lang: (reader.arrays(lang).rows, reader.lengths(lang))}  # one language at a time
                rows, lengths = tables[lang]
                rows_out, skipped = _new_rows(), []
                if languages[lang] is None:
                    skipped = [(u, rows[u].id, NO_LANGUAGE) for u in done_now]
                else:
                    _align_chunk(
                        aligner, reader, lang, languages[lang], rows, lengths, done_now, config, summary, rows_out,
                        skipped,
                    )  # fmt: skip
                fault_point("before_part")
                # One write per part: its metadata (the utterances it was made from) is its done marker.
                write_value(kv, claim.unit, part_bytes(rows_out, done_now, skipped), config.run.out)
                _count_skips(summary, lang, rows, first, last, done_now, skipped)
                loop.done(claim, progress=last - first)
    if is_process_zero():  # every part is done: rounds() ends only when no other process holds one
        for lang in langs:
            summary.outputs += _merge(kv, lang, reader.arrays(lang).n_utterances, config, reader)
    summary.seconds = time.perf_counter() - t0
    return summary


def _count_skips(summary, lang, rows, first, last, done_now, skipped) -> None:
    done = set(done_now)
    for u in range(first, last):
        if u not in done:
            summary.skip("not_encoded", lang, rows[u].id)
    for _, uid, reason in skipped:
        summary.skip(reason, lang, uid)


def _merge(kv, lang: str, n_utterances: int, config: AlignConfig, reader) -> list[str]:
    """words.parquet and skipped.csv of one language from its parts."""
    tables, skipped = [], []
    done = is_done(reader.lengths(lang))
    rows = reader.arrays(lang).rows
    for first in range(0, n_utterances, config.chunk):
        part = read_part(kv, part_key(lang, first), config.run.out, "align")
        if part is None:
            raise AlignError(f"part {part_key(lang, first)} is missing after every process finished")
        tables.append(part[0])
        skipped += [tuple(s) for s in part[1]["skipped"]]
    skipped += [(u, rows[u].id, "not_encoded") for u in range(n_utterances) if not done[u]]
    return write_language(kv, config.run.out, lang, tables, skipped, config.subtitles)
