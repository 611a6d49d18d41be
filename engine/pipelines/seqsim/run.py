"""All-pairs similarity matrices from a layer store into a similarity store (``engine.stores.similarity``).

For every layer, language pair and measure, every utterance of language ``a`` is scored against every utterance of
language ``b`` by the measure's kernel (``engine.pipelines.seqsim.measures``: SeqSim with its two directional
terms on request, the pooled baselines, DTW and entropic OT). A score a measure could not measure (OT pairs whose
Sinkhorn did not converge) is written as NaN and listed in the layer's done marker (``nonconverged``), never used
as a score.

Memory is bounded by the run's budget (``engine.runtime.budget``, ``--memory_budget``): the pairs are walked layer by
layer, blocked over the pair triangle in tiles of languages that fit it, large pairs in utterance blocks, small ones
grouped into work units of about equal FLOPs (``tiling.tiles``); a process holds the languages it reads within the
budget (``HeldStates``), and a budget too small for some pair is refused before anything is written. A split pair's
blocks are staged and the pair-layer committed whole once all are (``tiling.blocks``).

Resume: a (measure, pair, layer) matrix is skipped when its done marker exists and was computed from as many done
utterances as the layer store now has (a language whose encoding went on since is recomputed); a staged block of
the same settings is kept, so only the missing blocks of a split pair are computed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.faults import fault_point
from engine.models.common.parallel import data_mesh
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.measures import (
    MEASURES,
    SEQSIM_MEASURES,
    MeasureContext,
    Scores,
    Side,
    kernel_calls,
    nan_marker,
    unscored,
)
from engine.pipelines.seqsim.summary import SimilaritySummary
from engine.pipelines.seqsim.tiling import blocks
from engine.pipelines.seqsim.tiling.tiles import (
    HeldStates,
    Item,
    Language,
    Sizing,
    check_budget,
    load_piece,
    plan_units,
)
from engine.pipelines.seqsim.transform import composed, layer_dimensions, layer_transforms
from engine.runtime.budget import resolve_budget
from engine.runtime.parallel import barrier, is_process_zero
from engine.runtime.runs import job_lease, process_zero_first, progress_bar, work_claims
from engine.runtime.units import UnitLoop
from engine.stores import provenance
from engine.stores.pairs import resolve_pairs
from engine.stores.reader import StoreReader, open_store
from engine.stores.schema import is_done
from engine.stores.similarity import SimilarityError, check_name, done_marker, new_manifest
from engine.stores.similarity_blocks import StagingSimilarityStore
from kernels.seqsim_fp8 import FP8_DEVICE_KINDS, has_fp8

__all__ = ["SimilaritySummary", "run_similarity"]

log = logging.getLogger(__name__)

WORKER_UNITS = 64  # --worker runs plan their units as for this many processes (32 units each; --unit_gflops overrides)
# How long Sinkhorn may try decides which ot pairs are NaN (not converged), never a converged pair's score: free on
# resume, so that non-converged pairs can be measured again with more (a layer whose marker differs is recomputed).
OT_TRIES = ("max_iterations",)


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
class Work:
    """What every unit of one run shares: the layer store, the similarity store and its pair arrays
    (``arrays[measure, a, b]``), the request, the kernels' context and the done marker each matrix must have
    (``wanted[measure, a, b]``)."""

    reader: StoreReader
    out: StagingSimilarityStore
    arrays: dict
    request: Request
    context: MeasureContext
    wanted: dict

    def matches(self, measure: str, a: str, b: str, layer: int) -> bool:
        """Whether the matrix of (measure, a, b) at ``layer`` is committed with this run's settings."""
        return _marker_matches(self.out.layer_marker(measure, a, b, layer), self.wanted[measure, a, b])


def run_similarity(config: SimilarityConfig, *, reader: StoreReader | None = None) -> SimilaritySummary:
    """Computes ``config.measures`` for every pair and layer into ``config.run.out``; returns the summary. The run
    holds the similarity store's writer lease (``engine.runtime.lease``)."""
    reader = reader or open_store(config.store)
    request = _request(config, reader)  # before the lease: a wrong request creates nothing
    _check_transform(config, request, reader.info.embed)
    mesh = data_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None
    context = MeasureContext(config.dtype, config.ot, mesh, config.seqsim_kernel, config.seqsim_precision,
                             config.seqsim_fp8_scale)  # fmt: skip
    _say_fp8(config)
    budget = resolve_budget(config.run.memory_budget)
    languages = held_languages(request.lengths, request.done_index, reader.info.embed, context, config.measures)
    check_budget(languages, request.pairs, budget.bytes, budget.source)  # a budget too small creates nothing either
    with job_lease(config, "seqsim") as lease:
        return _similarity(config, reader, request, lease, context, budget, languages)


def held_languages(lengths, done_index, embed: int, context: MeasureContext, measures) -> dict[str, Language]:
    """Each language of the run as a process holds it (``tiles.Language``): its done utterances' lengths, sized for
    the compute dtype, whether any measure reads states and whether SeqSim packs them (its path is packed)."""
    reads = any(MEASURES[m].needs_states for m in measures)
    packs = context.seqsim_path == "packed" and any(m in SEQSIM_MEASURES for m in measures)
    sizing = Sizing(embed, jnp.dtype(context.dtype).itemsize, reads, packs)
    return {lang: Language(lang, lengths[lang][index], sizing) for lang, index in done_index.items()}


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
    _check_complete(reader, lengths, done_index, config.allow_partial)
    return Request(layers, pairs, in_play, lengths, done_index)


def _similarity(config, reader, request: Request, lease, context, budget, languages) -> SimilaritySummary:
    t0 = time.perf_counter()
    info = reader.info
    layers, pairs = request.layers, request.pairs
    measures = tuple(dict.fromkeys(config.measures))
    tables = {lang: reader.utterances_table(lang) for lang in request.in_play}
    manifest = new_manifest(
        layer_store=config.store,
        model_name=info.model_name,
        checkpoint_sha256=info.checkpoint_sha256,
        layers=info.layers,  # every stored layer gets a position, so later runs can add layers
        remove_language=config.remove_language,
        dimensions=config.dimensions,  # --dimensions: fitted after --remove_language, applied after it
        dtype=config.dtype,  # every setting that changes a matrix's bytes, compared on every resume and worker join
        ot={k: v for k, v in dataclasses.asdict(config.ot).items() if k not in OT_TRIES},
        seqsim_precision=config.seqsim_precision,  # fp8 moves scores by up to 0.0035 (bench/RESULTS.md)
        seqsim_fp8_scale=config.seqsim_fp8_scale if config.seqsim_precision == "fp8" else None,
        layer_store_identity=provenance.identity(reader.manifest),  # its path may hold a store encoded again
        matmul_precision=config.run.matmul_precision,
    )
    url = config.run.out

    # Multi-host (jax.distributed): process 0 creates the store and the pair arrays, the others open them after.
    claims = work_claims(config.run, "seqsim")

    def create() -> StagingSimilarityStore:
        store = StagingSimilarityStore.create_or_open(url, manifest)
        if lease.opener:
            claims.clear(keep_live=lease.shared)  # under the writer lease, before any process claims
        for a, b in pairs if is_process_zero() and jax.process_count() > 1 else ():
            for m in measures:
                store.create_pair(m, a, b, _pair_ids(tables, a, b))
        return store

    out = process_zero_first("babelgrid-similarity-created", create)
    fit_start = time.perf_counter()
    transforms = layer_transforms(config, reader, request, budget.bytes)  # fitted before any pair is scored
    dimensions = layer_dimensions(config, reader, request, budget.bytes, transforms)  # on what that leaves
    fit_seconds = time.perf_counter() - fit_start
    lease.open()  # the store and its transforms exist: workers waiting to join go on
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

    # Every process plans its units from the markers it read; none writes before all have read them, so that every
    # process plans the same units (their names are the claims' keys).
    barrier("babelgrid-similarity-planned")
    summary = SimilaritySummary(already_done=len(layers) * len(pairs) - len(todo))
    summary.budget, summary.budget_source = budget.bytes, budget.source
    summary.precision = _precision_words(config)
    if transforms is not None or dimensions is not None:
        summary.transform, summary.transform_seconds = transform_label(config), fit_seconds
    target = None if config.unit_gflops is None else config.unit_gflops * 1e9
    if config.run.worker:
        # Workers start at any time and must name the same units: planned from every matrix of the run, done or not,
        # whatever is done by now (done units are then left out below), as if for WORKER_UNITS processes, and without
        # splitting pairs for balance (more block shapes, more kernels to compile: measured in bench/RESULTS.md).
        every = {(layer, a, b): measures for layer in layers for a, b in pairs}
        schedule = plan_units(every, layers, pairs, languages, budget.bytes, processes=WORKER_UNITS, target=target,
                              balance=False)  # fmt: skip
    else:
        schedule = plan_units(todo, layers, pairs, languages, budget.bytes, processes=jax.process_count(),
                              target=target)  # fmt: skip
    units = {unit.name: unit for unit in schedule.units}
    items = schedule.items()
    first = dict(zip(units, itertools.accumulate([0, *(len(u.items) for u in schedule.units)]), strict=False))
    work = Work(reader, out, arrays, request, context, wanted)

    def load(piece):
        change = None if transforms is None else transforms[piece.layer].function(piece.lang)
        change = composed(change, None if dimensions is None else dimensions[piece.layer].function())
        return load_piece(reader, languages[piece.lang], request.done_index[piece.lang], piece, context.dtype, change)

    held = HeldStates(budget.bytes, languages, items, load)

    def item_done(item) -> bool:
        if item.split:
            return blocks.is_staged(work, item)
        return all(work.matches(m, item.a, item.b, item.layer) for m in item.measures)

    def prefer(name: str) -> float:
        """The share of the bytes the unit's first item reads that this process holds already."""
        pieces = units[name].items[0].pieces()
        sizes = [held.size(p) for p in pieces]
        return sum(n for p, n in zip(pieces, sizes, strict=True) if p in held.held) / max(sum(sizes), 1)

    status: dict[Item, bool] = {}  # each item of a claimed unit, done or not, read once it is claimed

    def unit_done(name: str) -> bool:
        done = [item_done(item) for item in units[name].items]  # a killed process's unit may be partly done
        status.update(zip(units[name].items, done, strict=True))
        return all(done)

    # A unit with no matrix left to compute (every item's pair-layer done when this process read the markers).
    pending = [name for name, unit in units.items() if any((i.layer, i.a, i.b) in todo for i in unit.items)]
    progress = progress_bar(sum(len(units[name].items) for name in pending), "similarity", "item", config.run.progress)
    with UnitLoop(claims, lease, summary, progress) as loop:
        n_items = sum(len(u.items) for u in units.values())
        what = f"groups of (language pair, layer) items of one layer, {n_items} items in all"
        weight = lambda n: len(units[n].items)  # noqa: E731
        for claimed in loop.rounds(pending, unit_done, prefer, total=len(units), weight=weight, what=what):
            for claim in claimed:
                unit = units[claim.unit]
                for k, item in enumerate(unit.items):
                    if not status.pop(item, False):
                        _item(work, item, held.get(item, first[unit.name] + k), summary)
                loop.done(claim, progress=len(unit.items))
        blocks.commit_all(work, items, summary)  # split pairs whose last blocks were staged by a killed process
        if is_process_zero():
            out.tidy_staging()
    summary.peak_held = held.peak
    summary.reads = {lang: r / max(len(layers), 1) for lang, r in held.reads_per_language().items()}
    summary.seconds = time.perf_counter() - t0
    return summary


def _precision_words(config: SimilarityConfig) -> str:
    """The summary's words for --seqsim_precision fp8: its scale, and whether the device multiplies e4m3 or
    emulates it ("" without fp8)."""
    if config.seqsim_precision != "fp8" or not any(m in SEQSIM_MEASURES for m in config.measures):
        return ""
    how = "on tensor cores" if has_fp8(jax.local_devices()[0]) else "emulated"
    return f"fp8 e4m3, scale {config.seqsim_fp8_scale}, {how}"


def _say_fp8(config: SimilarityConfig) -> None:
    """--seqsim_precision fp8: says on stderr and in the log whether this device multiplies e4m3 on its tensor cores
    (``kernels.seqsim_fp8.has_fp8``) or emulates it. Emulated is allowed (the same numerics, bit for bit but for the
    order of float32 sums: how tests check it), but gives no speed-up, and on CPU runs slower than float32."""
    if config.seqsim_precision != "fp8" or not any(m in SEQSIM_MEASURES for m in config.measures):
        return
    device = jax.local_devices()[0]
    if has_fp8(device):
        line = (f"seqsim_precision fp8 (scale {config.seqsim_fp8_scale}): e4m3 products with float32 accumulation on "
                f"the tensor cores of {device.device_kind}")  # fmt: skip
        log.info(line)
    else:
        line = (f"seqsim_precision fp8 (scale {config.seqsim_fp8_scale}): EMULATED on {device.device_kind} (no e4m3 "
                f"tensor cores; kernels.seqsim_fp8.FP8_DEVICE_KINDS: {', '.join(FP8_DEVICE_KINDS)}): fp8's scores, "
                "no speed-up over --dtype (slower on CPU)")  # fmt: skip
        log.warning(line)
    print(line, file=sys.stderr)


def transform_label(config: SimilarityConfig) -> str:
    """What the run does to the states before every measure: ``--remove_language``, then ``--dimensions``."""
    parts = [f"remove_language {config.remove_language}"] if config.remove_language != "none" else []
    parts += [f"dimensions {config.dimensions}"] if config.dimensions != "none" else []
    return ", ".join(parts)


def _check_transform(config: SimilarityConfig, request: Request, embed: int) -> None:
    """``--remove_language lda:K`` separates the run's languages by at most one fewer directions than there are, and
    ``--dimensions drop:K`` leaves at least one of the store's dimensions: refused before the store records the
    setting (a corrected rerun into the same folder would be refused)."""
    dims, n_dims = config.dimension_kind
    if dims == "drop" and n_dims >= embed:
        raise SimilarityError(
            f"dimensions drop:{n_dims} would leave none of the store's {embed} dimensions: pass drop:K with K < {embed}"
            "; nothing was written"
        )
    kind, k = config.removal
    n = len(request.in_play)
    if kind == "lda" and k > n - 1:
        raise SimilarityError(
            f"remove_language lda:{k} needs K <= languages - 1 = {n - 1} (the run's languages {request.in_play} are "
            f"separated by at most {n - 1} directions): pass lda:{max(n - 1, 1)} or mean; nothing was written"
        )


def _marker_matches(marker: dict | None, want: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in want.items())


def _item(work: Work, item: Item, sides: tuple[Side, Side], summary: SimilaritySummary) -> None:
    """Computes one item: a whole pair's measures, written with their done markers; or one block of a split pair,
    staged, then the pair-layer committed if that was its last block."""
    A, B = sides
    scores = _score(A, B, item.measures, work.context, summary)
    for m in item.measures:
        if MEASURES[m].nan_scores:
            _count_unmeasured(summary, m, scores[m])
    if item.split:
        blocks.stage(work, item, A.index, B.index, scores)
        summary.blocks += 1
        fault_point("after_block")  # test-only (engine.faults): staged, the unit's claim still held
        if blocks.commit(work, item.layer, item.a, item.b, item.measures, item.grid, summary, staged_now=True):
            summary.pair_layers += 1
        return
    request, context = work.request, work.context
    marker = {**done_marker(A.index, B.index), "dtype": context.dtype}
    for m in item.measures:
        measure, scored = MEASURES[m], scores[m]
        extra = nan_marker(measure, context, scored, A.index, B.index) if measure.nan_scores else {}
        full = np.full((len(request.lengths[item.a]), len(request.lengths[item.b])), np.nan, np.float32)
        full[np.ix_(A.index, B.index)] = _with_nan(scored)
        work.out.write_layer(work.arrays[m, item.a, item.b], m, item.a, item.b, item.layer, full, {**marker, **extra})
        summary.matrices += 1
        fault_point("after_matrix")  # test-only (engine.faults): the unit's claim is still held
    summary.pair_layers += not item.rest  # a split pair's layer counts once, when its blocks are committed


def _score(A: Side, B: Side, measures, context: MeasureContext, summary: SimilaritySummary) -> dict[str, Scores]:
    """Every measure of ``measures`` on the pair (A, B), one call per kernel, timed; seqsim's FLOPs and seconds
    into ``summary``."""
    if not len(A.index) or not len(B.index):
        return unscored(A, B, measures)
    scores = {}
    for kernel, names in kernel_calls(measures):
        t = time.perf_counter()
        scores |= kernel.score(A, B, context, names)
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


def _check_complete(reader: StoreReader, lengths: dict, done_index: dict, allow_partial: bool) -> None:
    """Refuses a layer store whose encoding is unfinished, unless ``allow_partial``; then says what is missing. What
    the encode job skipped for its audio (its ``skipped.json``) is named apart: rerunning the encode job will not
    add it, so the refusal says what will."""
    url = reader.url
    missing = {lang: len(lengths[lang]) - len(done_index[lang]) for lang in lengths}
    missing = {lang: n for lang, n in missing.items() if n}
    if not missing:
        return
    counts = ", ".join(f"{lang}: {n} of {len(lengths[lang])}" for lang, n in sorted(missing.items()))
    n_skipped, skips = reader.skips_named(missing)
    named = f"; {n_skipped} of them skipped by the encode job for their audio or states: {skips}" if n_skipped else ""
    if not allow_partial:
        if n_skipped == sum(missing.values()):
            fix = ("a rerun of the encode job skips them again (the dataset with their audio fixed is another "
                   "revision of it, to encode into a new store): pass --allow_partial (SimilarityConfig.allow_partial) "
                   "to score the done ones")  # fmt: skip
        else:
            fix = ("finish it by rerunning the encode job on it, or pass --allow_partial "
                   "(SimilarityConfig.allow_partial) to score the done ones")  # fmt: skip
        raise SimilarityError(
            f"layer store {url!r} is not completely encoded (utterances not done: {counts}{named}); {fix}"
        )
    empty = sorted(lang for lang in lengths if not len(done_index[lang]))
    if empty:  # refused here, not once its first pair is read (or its --remove_language fitted) under the lease
        raise SimilarityError(f"--allow_partial: {empty} have no done utterance in layer store {url!r}: nothing of "
                              "theirs to score; leave them out with --langs or --pairs, or encode them")  # fmt: skip
    log.warning("scoring a partly encoded layer store (allow_partial): utterances not done: %s%s", counts, named)
    print(f"allow_partial: utterances not done, left out of every matrix: {counts}{named}", file=sys.stderr)


def _pair_ids(tables: dict, a: str, b: str) -> dict:
    ta, tb = tables[a], tables[b]
    return {
        "row_ids": [str(x) for x in ta.column("id").to_pylist()],
        "col_ids": [str(x) for x in tb.column("id").to_pylist()],
        "row_recording": [int(x) for x in ta.column("recording").to_pylist()],
        "col_recording": [int(x) for x in tb.column("recording").to_pylist()],
    }
