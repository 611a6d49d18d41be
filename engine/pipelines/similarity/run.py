"""All-pairs similarity matrices from a layer store into a similarity store (``engine.stores.similarity``).

For every layer, language pair and measure, every utterance of language ``a`` is scored against every utterance of
language ``b``: SeqSim (``kernels.seqsim``, with its two directional terms on request), the pooled baselines of
``kernels.pooling``, DTW (``kernels.dtw``) and entropic OT (``kernels.ot``). OT pairs whose Sinkhorn did not
converge are written as NaN and listed in the layer's done marker (``nonconverged``), never used as scores.
The loop is layer-outer, pair-inner: each language is read from the layer store once per
layer and dropped before the next layer, so memory holds one layer of the languages in play, not every layer.

Resume: a (measure, pair, layer) matrix is skipped when its done marker exists and was computed from as many done
utterances as the layer store now has (a language whose encoding went on since is recomputed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.dtypes import DTYPES
from engine.runtime.claims import DEFAULT_CLAIM_TTL, WorkClaims, rounds
from engine.runtime.parallel import data_mesh, is_process_zero
from engine.runtime.runs import RunSummary, check_choice, process_zero_first, progress_bar, writer_lease
from engine.stores.kv import open_kvstore
from engine.stores.reader import StoreReader, open_store
from engine.stores.schema import is_done
from engine.stores.similarity import (
    MEASURES,
    PAIR_SEPARATOR,
    SimilarityError,
    SimilarityStore,
    check_measure,
    check_name,
    done_marker,
    new_manifest,
)
from kernels.dtw import dtw_similarity_matrix
from kernels.ot import OtConfig
from kernels.ot_matrix import ot_similarity_matrix
from kernels.pooling import center_frame_cosine_matrix, duration_similarity_matrix, mean_pooled_cosine_matrix
from kernels.seqsim import seqsim_matrix, seqsim_matrix_sharded

DEFAULT_MEASURES = ("seqsim", "mean", "centre", "duration")
COMPUTE_DTYPES = ("float32", "bfloat16")
PAIR_MODES = ("unordered", "ordered")
SEQSIM_MEASURES = ("seqsim", "seqsim_a2b", "seqsim_b2a")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimilarityConfig:
    store: str  # layer store URL (written by the encode job)
    out: str  # similarity store URL
    langs: tuple[str, ...] | None = None  # None = every language of the layer store
    layers: tuple[int, ...] | None = None  # babelgrid layer indices; None = every stored layer
    pairs: str = "unordered"  # see resolve_pairs
    measures: tuple[str, ...] = DEFAULT_MEASURES
    dtype: str = "float32"  # compute dtype of the states fed to the kernels (scores are always float32)
    allow_partial: bool = False  # score a layer store whose encoding is not finished (the missing rows stay NaN)
    break_lease: bool = False  # take over another run's unexpired writer lease (its holder is known to be dead)
    progress: bool | None = True  # None: only when stderr is a terminal
    ot: OtConfig = OtConfig()  # Sinkhorn options of the ``ot`` measure (epsilon in units of 1 - cos)
    claim_ttl: float = DEFAULT_CLAIM_TTL  # seconds until a dead process's (layer, pair) claims may be taken over

    def __post_init__(self):
        check_choice("dtype", self.dtype, COMPUTE_DTYPES)
        if self.claim_ttl <= 0:
            raise ValueError(f"claim_ttl must be positive seconds, got {self.claim_ttl}")
        if not self.measures:
            raise ValueError(f"measures must name at least one of {MEASURES}")
        for m in self.measures:
            check_measure(m)


@dataclasses.dataclass
class SimilaritySummary(RunSummary):
    pair_layers: int = 0  # (pair, layer) computed in this run
    already_done: int = 0  # (pair, layer) whose every measure was complete and skipped
    matrices: int = 0  # (measure, pair, layer) matrices written
    seqsim_flops: float = 0.0  # 2 * sum(len_a) * sum(len_b) * embed per pair-layer
    seqsim_seconds: float = 0.0  # kernel time, device synchronised, compilation included
    ot_pairs: int = 0  # utterance pairs scored by the ot measure
    ot_nonconverged: int = 0  # of those, pairs whose Sinkhorn did not converge (NaN in the store)
    ot_fallback: int = 0  # of those, pairs finished in the log domain after kernel mode left float32 range
    taken_over: int = 0  # (pair, layer) units whose claim had expired (a dead process's)
    busy_seconds: float = 0.0  # from the start of the work to the end of this process's last unit

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


def resolve_pairs(spec: str, langs, available=None) -> list[tuple[str, str]]:
    """Language pairs (a, b), a != b, from ``spec``:

    - ``unordered``: every {a, b} once, as (a, b) with a < b;
    - ``ordered``: (a, b) and (b, a);
    - a comma list of ``a:b`` items, where either side may be ``*`` (every other language of ``langs``):
      ``en:*``, ``en:de,es:fr``.

    ``langs`` are the languages the run covers; named languages must be in ``available`` (default ``langs``).
    """
    langs = sorted(langs)
    available = set(langs if available is None else available)
    spec = spec.strip()
    if spec == "unordered":
        return [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    if spec == "ordered":
        return [(a, b) for a in langs for b in langs if a != b]
    pairs: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.count(":") != 1:
            raise SimilarityError(
                f"pairs item {item!r} is not 'a:b': give {' or '.join(PAIR_MODES)}, or a list like en:de,es:* "
                "('*' = every other language)"
            )
        left, right = (s.strip() for s in item.split(":"))
        for side in (left, right):
            if side != "*":
                check_name("language", side)
                if side not in available:
                    raise SimilarityError(f"pairs item {item!r}: language {side!r} is not in {sorted(available)}")
        for a in langs if left == "*" else [left]:
            for b in langs if right == "*" else [right]:
                if a != b:
                    pairs.append((a, b))
                elif left != "*" and right != "*":
                    raise SimilarityError(f"pairs item {item!r} pairs a language with itself; name two languages")
    if not pairs:
        raise SimilarityError(f"pairs {spec!r} gives no pair of two different languages among {langs}")
    return list(dict.fromkeys(pairs))


@dataclasses.dataclass(frozen=True)
class _Language:
    """One language at one layer, done utterances only: states f[done, frames, embed] on the device."""

    index: np.ndarray  # i64[done]: utterance indices in the layer store
    lengths: np.ndarray  # i32[done]
    states: jax.Array | None  # None when only lengths are needed (duration)


def run_similarity(config: SimilarityConfig, *, reader: StoreReader | None = None) -> SimilaritySummary:
    """Computes ``config.measures`` for every pair and layer into ``config.out``; returns the summary. The run holds
    the similarity store's writer lease (``engine.runtime.lease``)."""
    reader = reader or open_store(config.store)
    _check_request(config, reader)  # before the lease: a wrong request creates nothing
    with writer_lease(config.out, "seqsim", config.break_lease) as lease:
        return _similarity(config, reader, lease)


def _check_request(config: SimilarityConfig, reader: StoreReader) -> None:
    """Languages, layers and pairs the store has, and a complete store unless allow_partial."""
    available = reader.languages()
    langs = available if config.langs is None else list(dict.fromkeys(config.langs))
    for lang in langs:
        check_name("language", lang)
        if lang not in available:
            raise SimilarityError(f"language {lang!r} is not in layer store {reader.url!r}; it has {available}")
    for layer in reader.info.layers if config.layers is None else config.layers:
        reader.layer_position(layer)  # StoreError listing the stored layers
    in_play = sorted({lang for pair in resolve_pairs(config.pairs, langs, available) for lang in pair})
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in in_play}
    _check_complete(
        reader.url, lengths, {lang: np.flatnonzero(is_done(n)) for lang, n in lengths.items()}, config.allow_partial
    )


def _similarity(config: SimilarityConfig, reader: StoreReader, lease) -> SimilaritySummary:
    t0 = time.perf_counter()
    info = reader.info
    available = reader.languages()
    langs = available if config.langs is None else list(dict.fromkeys(config.langs))
    layers = info.layers if config.layers is None else tuple(config.layers)
    pairs = resolve_pairs(config.pairs, langs, available)
    measures = tuple(dict.fromkeys(config.measures))
    in_play = sorted({lang for pair in pairs for lang in pair})
    tables = {lang: reader.utterances_table(lang) for lang in in_play}
    # A snapshot of which utterances are done: the rows computed now, recorded in each done marker, and what a
    # done marker is checked against on resume.
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in in_play}
    done_index = {lang: np.flatnonzero(is_done(lengths[lang])) for lang in in_play}
    manifest = new_manifest(
        layer_store=config.store,
        model_name=info.model_name,
        checkpoint_sha256=info.checkpoint_sha256,
        layers=info.layers,  # every stored layer gets a position, so later runs can add layers
    )

    # Multi-host (jax.distributed): process 0 creates the store and the pair arrays, the others open them after.
    claims = WorkClaims(open_kvstore(config.out)[1], config.out, "seqsim", ttl=config.claim_ttl)

    def create() -> SimilarityStore:
        store = SimilarityStore.create_or_open(config.out, manifest)
        if is_process_zero():
            claims.clear()  # under the writer lease, before any process claims
        for a, b in pairs if is_process_zero() and jax.process_count() > 1 else ():
            for m in measures:
                store.create_pair(m, a, b, _pair_ids(tables, a, b))
        return store

    out = process_zero_first("babelgrid-similarity-created", create)

    arrays, todo, wanted = {}, {}, {}
    for a, b in pairs:
        ids = _pair_ids(tables, a, b)
        expect = done_marker(done_index[a], done_index[b])
        for m in measures:
            arrays[m, a, b] = out.create_pair(m, a, b, ids)
            markers = out.done_markers(m, a, b)
            # Other Sinkhorn options make another measure: an ot matrix is recomputed when they change.
            wanted[m, a, b] = {**expect, "ot": dataclasses.asdict(config.ot)} if m == "ot" else expect
            for layer in layers:
                if not _marker_matches(markers.get(layer), wanted[m, a, b]):
                    todo.setdefault((layer, a, b), []).append(m)

    summary = SimilaritySummary(already_done=len(layers) * len(pairs) - len(todo))
    # Work units are (layer, pair) matrices, claimed by the processes (engine.runtime.claims): layer by layer (one
    # layer of the languages in memory), the largest pairs of a layer first, so the last units are the smallest.
    cost = {lang: float(lengths[lang][done_index[lang]].sum()) for lang in in_play}
    order = sorted(todo, key=lambda k: (layers.index(k[0]), -cost[k[1]] * cost[k[2]], k))
    names = {f"{layer}/{a}{PAIR_SEPARATOR}{b}": (layer, a, b) for layer, a, b in order}

    def unit_done(name: str) -> bool:
        layer, a, b = names[name]
        return all(_marker_matches(out.done_markers(m, a, b).get(layer), wanted[m, a, b]) for m in todo[layer, a, b])

    mesh = data_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None
    progress = progress_bar(len(todo), "similarity", "pair-layer", config.progress)
    work_t0 = time.perf_counter()
    try:
        with claims:
            for claimed in rounds(claims, list(names), unit_done):
                cache: dict[str, _Language] = {}  # the languages of one layer at a time
                cache_layer = None
                for claim in claimed:
                    layer, a, b = names[claim.unit]
                    if layer != cache_layer:
                        cache, cache_layer = {}, layer
                    lease.check()
                    unit = (layer, a, b)
                    _pair_layer(
                        config, reader, out, arrays, cache, unit, todo[unit], done_index, lengths, mesh, summary
                    )
                    claims.release(claim)
                    summary.pair_layers += 1
                    summary.matrices += len(todo[layer, a, b])
                    summary.busy_seconds = time.perf_counter() - work_t0
                    progress.update(1)
    finally:
        progress.close()
    summary.taken_over = claims.taken_over
    summary.seconds = time.perf_counter() - t0
    return summary


def _marker_matches(marker: dict | None, want: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in want.items())


_FAULT_KILL_AFTER_MATRICES = int(os.environ.get("BABELGRID_FAULT_KILL_AFTER_MATRICES", "0") or 0)
_fault_matrices = 0


def _pair_layer(config, reader, out, arrays, cache, unit, measures, done_index, lengths, mesh, summary):
    """Computes and writes ``measures`` of one ``unit`` (layer, a, b); ``cache`` holds the languages loaded at its
    layer."""
    global _fault_matrices
    layer, a, b = unit
    need_states = any(m != "duration" for m in measures)
    for lang in (a, b):
        if lang not in cache or (need_states and cache[lang].states is None):
            index = done_index[lang]
            cache[lang] = _load(reader, lang, layer, index, lengths[lang][index], need_states, config.dtype)
    scores, extra = _compute(cache[a], cache[b], measures, mesh, summary, config.ot)
    marker = {**done_marker(cache[a].index, cache[b].index), "dtype": config.dtype}
    for m in measures:
        full = np.full((len(lengths[a]), len(lengths[b])), np.nan, np.float32)
        full[np.ix_(cache[a].index, cache[b].index)] = scores[m]
        out.write_layer(arrays[m, a, b], m, a, b, layer, full, {**marker, **extra.get(m, {})})
        # Test-only fault injection (tests/jobs/test_scaleout.py): SIGKILL right after the N-th matrix this process
        # wrote, while it still holds that unit's claim. Never set it otherwise.
        _fault_matrices += 1
        if _FAULT_KILL_AFTER_MATRICES and _fault_matrices >= _FAULT_KILL_AFTER_MATRICES:
            os.kill(os.getpid(), signal.SIGKILL)


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
) -> _Language:
    """The done utterances ``index`` of one language at one layer; ``lengths``: their frames (the run's snapshot)."""
    lengths = lengths.astype(np.int32)
    if not need_states or not len(index):
        return _Language(index, lengths, None)
    # Only the frames some done utterance uses, in the compute dtype, in one read; the kernels mask past each length.
    states, _ = reader.language_layer(
        lang, layer, utterances=index, dtype=DTYPES[dtype], frames=int(lengths.max()), zero_padding=False
    )
    return _Language(index, lengths, jnp.asarray(states))


def _compute(
    A: _Language, B: _Language, measures, mesh, summary: SimilaritySummary, ot_config: OtConfig
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(f32[done_a, done_b] per measure, extra done-marker fields per measure)."""
    extra: dict[str, dict] = {}
    if not len(A.index) or not len(B.index):
        if "ot" in measures:
            extra["ot"] = ot_marker(ot_config, np.zeros((len(A.index), len(B.index)), bool), A.index, B.index)
        return {m: np.zeros((len(A.index), len(B.index)), np.float32) for m in measures}, extra
    out = {}
    if any(m in SEQSIM_MEASURES for m in measures):
        directional = any(m in ("seqsim_a2b", "seqsim_b2a") for m in measures)
        t = time.perf_counter()
        if mesh is None:
            result = seqsim_matrix(A.states, A.lengths, B.states, B.lengths, directional=directional)
        else:
            result = seqsim_matrix_sharded(A.states, A.lengths, B.states, B.lengths, mesh, directional=directional)
        result = jax.block_until_ready(result)
        summary.seqsim_seconds += time.perf_counter() - t
        summary.seqsim_flops += 2.0 * float(A.lengths.sum()) * float(B.lengths.sum()) * A.states.shape[-1]
        if directional:
            out["seqsim"], out["seqsim_a2b"], out["seqsim_b2a"] = (np.asarray(x) for x in result)
        else:
            out["seqsim"] = np.asarray(result)
    if "mean" in measures:
        out["mean"] = np.asarray(mean_pooled_cosine_matrix(A.states, A.lengths, B.states, B.lengths))
    if "centre" in measures:
        out["centre"] = np.asarray(center_frame_cosine_matrix(A.states, A.lengths, B.states, B.lengths))
    if "duration" in measures:
        out["duration"] = np.asarray(duration_similarity_matrix(A.lengths, B.lengths))
    if "dtw" in measures:
        out["dtw"] = np.asarray(dtw_similarity_matrix(A.states, A.lengths, B.states, B.lengths))
    if "ot" in measures:
        result = ot_similarity_matrix(A.states, A.lengths, B.states, B.lengths, ot_config)
        failed = ~np.asarray(result.converged)
        # A non-converged score is not an approximation of the measure: NaN, so retrieval cannot use it silently.
        out["ot"] = np.where(failed, np.nan, np.asarray(result.score)).astype(np.float32)
        fallback = 0 if result.fallback is None else int(np.asarray(result.fallback).sum())
        extra["ot"] = ot_marker(ot_config, failed, A.index, B.index, fallback)
        summary.ot_pairs += failed.size
        summary.ot_nonconverged += int(failed.sum())
        summary.ot_fallback += fallback
        if failed.any():
            log.warning("ot: %d of %d pairs did not converge (written as NaN)", int(failed.sum()), failed.size)
    return {m: out[m] for m in measures}, extra


def ot_marker(config: OtConfig, failed: np.ndarray, rows: np.ndarray, cols: np.ndarray, fallback: int = 0) -> dict:
    """Done-marker fields of an ``ot`` matrix: its Sinkhorn options, ``nonconverged``, the [row, col] layer-store
    utterance indices of the pairs that did not converge (NaN in the matrix), and ``fallback``, how many pairs left
    float32 range in kernel mode and were finished in the log domain (``OtResult.fallback``; valid scores).
    failed: bool[done_a, done_b]."""
    i, j = np.nonzero(failed)
    return {
        "ot": dataclasses.asdict(config),
        "nonconverged": [[int(rows[a]), int(cols[b])] for a, b in zip(i, j, strict=True)],
        "fallback": int(fallback),
    }
