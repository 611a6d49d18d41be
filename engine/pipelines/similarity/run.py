"""All-pairs similarity matrices from a layer store into a similarity store (``engine.stores.similarity``).

For every layer, language pair and measure, every utterance of language ``a`` is scored against every utterance of
language ``b`` by the measure's kernel (``engine.pipelines.similarity.measures``: SeqSim with its two directional
terms on request, the pooled baselines, DTW and entropic OT). A score a measure could not measure (OT pairs whose
Sinkhorn did not converge) is written as NaN and listed in the layer's done marker (``nonconverged``), never used
as a score.
The loop is layer-outer, pair-inner: each language is read from the layer store once per
layer and dropped before the next layer, so memory holds one layer of the languages in play, not every layer.

Resume: a (measure, pair, layer) matrix is skipped when its done marker exists and was computed from as many done
utterances as the layer store now has (a language whose encoding went on since is recomputed).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.dtypes import DTYPES
from engine.pipelines.similarity.config import SimilarityConfig
from engine.pipelines.similarity.measures import (
    MEASURES,
    MeasureContext,
    Scores,
    Side,
    kernel_calls,
    nan_marker,
    unscored,
)
from engine.runtime.claims import WorkClaims
from engine.runtime.faults import fault_point
from engine.runtime.parallel import data_mesh, is_process_zero
from engine.runtime.runs import RunSummary, process_zero_first, progress_bar, writer_lease
from engine.runtime.units import UnitLoop
from engine.stores.kv import open_kvstore
from engine.stores.reader import StoreReader, open_store
from engine.stores.schema import is_done
from engine.stores.similarity import (
    PAIR_SEPARATOR,
    SimilarityError,
    SimilarityStore,
    check_name,
    done_marker,
    new_manifest,
    resolve_pairs,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SimilaritySummary(RunSummary):
    already_done: int = 0  # (pair, layer) whose every measure was complete and skipped
    matrices: int = 0  # (measure, pair, layer) matrices written
    seqsim_flops: float = 0.0  # 2 * sum(len_a) * sum(len_b) * embed per pair-layer
    seqsim_seconds: float = 0.0  # kernel time, device synchronised, compilation included
    ot_pairs: int = 0  # utterance pairs scored by the ot measure
    ot_nonconverged: int = 0  # of those, pairs whose Sinkhorn did not converge (NaN in the store)
    ot_fallback: int = 0  # of those, pairs finished in the log domain after kernel mode left float32 range

    @property
    def pair_layers(self) -> int:
        """(pair, layer) units computed in this run."""
        return self.units

    @property
    def gflops(self) -> float:
        return self.seqsim_flops / max(self.seqsim_seconds, 1e-9) / 1e9

    def report(self) -> str:
        line = (
            f"computed {self.pair_layers} pair-layers ({self.matrices} matrices) in {self.seconds:.1f} s; "
            f"{self.already_done} pair-layers already complete"
        )
        line += f"; busy {self.busy_seconds:.1f} s, {self.taken_over} taken over from expired claims"
        if self.seqsim_flops:
            line += f"; seqsim {self.seqsim_flops / 1e9:.2f} GFLOP at {self.gflops:.2f} GFLOP/s"
        if self.ot_nonconverged:
            line += (
                f"; ot: {self.ot_nonconverged} of {self.ot_pairs} pairs did not converge (NaN in the store, listed "
                "as 'nonconverged' in the done markers): raise --ot_iterations or --ot_epsilon, or --ot_threshold"
            )
        if self.ot_fallback:
            line += (
                f"; ot: {self.ot_fallback} of {self.ot_pairs} pairs left float32 range in kernel mode and were "
                "finished in the log domain (counted as 'fallback' in the done markers; their scores are valid)"
            )
        return line


@dataclasses.dataclass(frozen=True)
class Request:
    """What a run covers, read from the layer store once: ``lengths[lang]``: i32[utterance], each utterance's
    frames (0 = not done), a snapshot taken before the work: the rows computed now, recorded in each done marker,
    and what a done marker is checked against on resume; ``done_index[lang]``: i64[done], the done utterances."""

    layers: tuple[int, ...]
    pairs: list[tuple[str, str]]
    in_play: list[str]  # the languages of the pairs
    lengths: dict[str, np.ndarray]
    done_index: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Unit:
    """One work unit: the ``measures`` of one language pair at one layer that are not done yet."""

    layer: int
    a: str
    b: str
    measures: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.a}{PAIR_SEPARATOR}{self.b}"


@dataclasses.dataclass(frozen=True)
class Work:
    """What every unit of one run shares: the layer store, the similarity store and its pair arrays
    (``arrays[measure, a, b]``), the request and the kernels' context."""

    reader: StoreReader
    out: SimilarityStore
    arrays: dict
    request: Request
    context: MeasureContext


def run_similarity(config: SimilarityConfig, *, reader: StoreReader | None = None) -> SimilaritySummary:
    """Computes ``config.measures`` for every pair and layer into ``config.run.out``; returns the summary. The run
    holds the similarity store's writer lease (``engine.runtime.lease``)."""
    reader = reader or open_store(config.store)
    request = _request(config, reader)  # before the lease: a wrong request creates nothing
    with writer_lease(config.run.out, "seqsim", config.run.break_lease) as lease:
        return _similarity(config, reader, request, lease)


def _request(config: SimilarityConfig, reader: StoreReader) -> Request:
    """Languages, layers and pairs the store has, and a complete store unless allow_partial."""
    available = reader.languages()
    langs = available if config.langs is None else list(dict.fromkeys(config.langs))
    for lang in langs:
        check_name("language", lang)
        if lang not in available:
            raise SimilarityError(f"language {lang!r} is not in layer store {reader.url!r}; it has {available}")
    layers = reader.info.layers if config.layers is None else tuple(config.layers)
    for layer in layers:
        reader.layer_position(layer)  # StoreError listing the stored layers
    if len(langs) < 2:
        raise SimilarityError(
            f"seqsim compares languages, and layer store {reader.url!r} has {len(available)} ({available}"
            f"{'' if config.langs is None else f', --langs {list(langs)}'}): encode a second language into it first"
        )
    pairs = resolve_pairs(config.pairs, langs, available)
    in_play = sorted({lang for pair in pairs for lang in pair})
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in in_play}
    done_index = {lang: np.flatnonzero(is_done(n)) for lang, n in lengths.items()}
    _check_complete(reader.url, lengths, done_index, config.allow_partial)
    return Request(layers, pairs, in_play, lengths, done_index)


def _similarity(config: SimilarityConfig, reader: StoreReader, request: Request, lease) -> SimilaritySummary:
    t0 = time.perf_counter()
    info = reader.info
    layers, pairs, in_play = request.layers, request.pairs, request.in_play
    measures = tuple(dict.fromkeys(config.measures))
    tables = {lang: reader.utterances_table(lang) for lang in in_play}
    manifest = new_manifest(
        layer_store=config.store,
        model_name=info.model_name,
        checkpoint_sha256=info.checkpoint_sha256,
        layers=info.layers,  # every stored layer gets a position, so later runs can add layers
    )
    url = config.run.out

    # Multi-host (jax.distributed): process 0 creates the store and the pair arrays, the others open them after.
    claims = WorkClaims(open_kvstore(url)[1], url, "seqsim", ttl=config.run.claim_ttl)

    def create() -> SimilarityStore:
        store = SimilarityStore.create_or_open(url, manifest)
        if is_process_zero():
            claims.clear()  # under the writer lease, before any process claims
        for a, b in pairs if is_process_zero() and jax.process_count() > 1 else ():
            for m in measures:
                store.create_pair(m, a, b, _pair_ids(tables, a, b))
        return store

    out = process_zero_first("babelgrid-similarity-created", create)
    mesh = data_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None
    context = MeasureContext(config.dtype, config.ot, mesh)

    arrays, todo, wanted = {}, {}, {}
    for a, b in pairs:
        ids = _pair_ids(tables, a, b)
        expect = done_marker(request.done_index[a], request.done_index[b])
        for m in measures:
            arrays[m, a, b] = out.create_pair(m, a, b, ids)
            markers = out.done_markers(m, a, b)
            wanted[m, a, b] = {**expect, **MEASURES[m].marker_settings(context)}
            for layer in layers:
                if not _marker_matches(markers.get(layer), wanted[m, a, b]):
                    todo.setdefault((layer, a, b), []).append(m)

    summary = SimilaritySummary(already_done=len(layers) * len(pairs) - len(todo))
    # Work units are (layer, pair) matrices, claimed by the processes (engine.runtime.claims): layer by layer (one
    # layer of the languages in memory), the largest pairs of a layer first, so the last units are the smallest.
    cost = {lang: float(request.lengths[lang][request.done_index[lang]].sum()) for lang in in_play}
    order = sorted(todo, key=lambda k: (layers.index(k[0]), -cost[k[1]] * cost[k[2]], k))
    units = {unit.name: unit for unit in (Unit(layer, a, b, tuple(todo[layer, a, b])) for layer, a, b in order)}

    def unit_done(name: str) -> bool:
        unit = units[name]
        return all(
            _marker_matches(out.done_markers(m, unit.a, unit.b).get(unit.layer), wanted[m, unit.a, unit.b])
            for m in unit.measures
        )

    work = Work(reader, out, arrays, request, context)
    progress = progress_bar(len(todo), "similarity", "pair-layer", config.run.progress)
    with UnitLoop(claims, lease, summary, progress) as loop:
        for claimed in loop.rounds(list(units), unit_done):
            cache: dict[str, Side] = {}  # the languages of one layer at a time
            cache_layer = None
            for claim in claimed:
                unit = units[claim.unit]
                if unit.layer != cache_layer:
                    cache, cache_layer = {}, unit.layer
                _pair_layer(work, unit, cache, summary)
                summary.matrices += len(unit.measures)
                loop.done(claim)
    summary.seconds = time.perf_counter() - t0
    return summary


def _marker_matches(marker: dict | None, want: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in want.items())


def _pair_layer(work: Work, unit: Unit, cache: dict[str, Side], summary: SimilaritySummary) -> None:
    """Computes and writes the measures of one ``unit``; ``cache`` holds the languages loaded at its layer."""
    request, context = work.request, work.context
    need_states = any(MEASURES[m].needs_states for m in unit.measures)
    for lang in (unit.a, unit.b):
        if lang not in cache or (need_states and cache[lang].states is None):
            index = request.done_index[lang]
            lengths = request.lengths[lang][index]
            cache[lang] = _load(work.reader, lang, unit.layer, index, lengths, need_states, context.dtype)
    A, B = cache[unit.a], cache[unit.b]
    scores = _score(A, B, unit.measures, context, summary)
    marker = {**done_marker(A.index, B.index), "dtype": context.dtype}
    for m in unit.measures:
        measure, scored = MEASURES[m], scores[m]
        extra = {}
        if measure.nan_scores:
            extra = nan_marker(measure, context, scored, A.index, B.index)
            _count_unmeasured(summary, m, scored)
        full = np.full((len(request.lengths[unit.a]), len(request.lengths[unit.b])), np.nan, np.float32)
        full[np.ix_(A.index, B.index)] = _with_nan(scored)
        work.out.write_layer(work.arrays[m, unit.a, unit.b], m, unit.a, unit.b, unit.layer, full, {**marker, **extra})
        fault_point("after_matrix")  # test-only (engine.runtime.faults): the unit's claim is still held


def _score(A: Side, B: Side, measures, context: MeasureContext, summary: SimilaritySummary) -> dict[str, Scores]:
    """Every measure of ``measures`` on the pair (A, B), one call per kernel, timed; seqsim's FLOPs and seconds
    into ``summary``."""
    if not len(A.index) or not len(B.index):
        return unscored(A, B, measures)
    scores = {}
    for kernel, names in kernel_calls(measures):
        t = time.perf_counter()
        scores |= kernel.call(A, B, context, names)
        if kernel.cost.kind == "matmul":
            summary.seqsim_seconds += time.perf_counter() - t
            summary.seqsim_flops += kernel.cost.useful_flops(A.lengths, B.lengths, A.states.shape[-1])
    return {m: scores[m] for m in measures}


def _with_nan(scores: Scores) -> np.ndarray:
    """f32[done_a, done_b] to store: a score the measure could not measure is NaN, never an approximation of the
    measure, so that retrieval cannot use it silently."""
    if scores.failed is None:
        return scores.values
    return np.where(scores.failed, np.nan, scores.values).astype(np.float32)


def _count_unmeasured(summary: SimilaritySummary, measure: str, scores: Scores) -> None:
    failed = scores.failed
    summary.ot_pairs += failed.size
    summary.ot_nonconverged += int(failed.sum())
    summary.ot_fallback += scores.fallback
    if failed.any():
        log.warning("%s: %d of %d pairs did not converge (written as NaN)", measure, int(failed.sum()), failed.size)


def _check_complete(url: str, lengths: dict, done_index: dict, allow_partial: bool) -> None:
    """Refuses a layer store whose encoding is unfinished, unless ``allow_partial``; then says what is missing."""
    missing = {lang: len(lengths[lang]) - len(done_index[lang]) for lang in lengths}
    missing = {lang: n for lang, n in missing.items() if n}
    if not missing:
        return
    counts = ", ".join(f"{lang}: {n} of {len(lengths[lang])}" for lang, n in sorted(missing.items()))
    if not allow_partial:
        raise SimilarityError(
            f"layer store {url!r} is not completely encoded (utterances not done: {counts}); finish it by rerunning "
            "the encode job on it, or pass --allow_partial (SimilarityConfig.allow_partial) to score the done ones"
        )
    log.warning("scoring a partly encoded layer store (allow_partial): utterances not done: %s", counts)
    print(f"allow_partial: utterances not done, left out of every matrix: {counts}", file=sys.stderr)


def _pair_ids(tables: dict, a: str, b: str) -> dict:
    ta, tb = tables[a], tables[b]
    return {
        "row_ids": [str(x) for x in ta.column("id").to_pylist()],
        "col_ids": [str(x) for x in tb.column("id").to_pylist()],
        "row_recording": [int(x) for x in ta.column("recording").to_pylist()],
        "col_recording": [int(x) for x in tb.column("recording").to_pylist()],
    }


def _load(
    reader: StoreReader, lang: str, layer: int, index: np.ndarray, lengths: np.ndarray, need_states: bool, dtype: str
) -> Side:
    """The done utterances ``index`` of one language at one layer; ``lengths``: their frames (the run's snapshot)."""
    lengths = lengths.astype(np.int32)
    if not need_states or not len(index):
        return Side(index, lengths, None)
    # Only the frames some done utterance uses, in the compute dtype, in one read; the kernels mask past each length.
    states, _ = reader.language_layer(
        lang, layer, utterances=index, dtype=DTYPES[dtype], frames=int(lengths.max()), zero_padding=False
    )
    return Side(index, lengths, jnp.asarray(states))
