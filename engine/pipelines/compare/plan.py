"""The compare job's --plan: FLOPs, bytes read and peak memory of the layer x layer measures, from counts alone.

``plan_compare`` is a pure function of the models' shapes and the per-language counts, so the plan of a grid that
does not exist yet (33 layers x 2 models x 102 languages) is one call; ``plan_compare_run`` reads the stores'
headers and lengths (no states) and calls it. Multiply-adds count 2 FLOPs. Per model pair (a, b) and set of n
examples (each language, then ``all``), with La, Lb layers of width da, db:

- Grams: ``2 n^2 d`` per layer and side; CKA matrix: ``2 La Lb n^2`` per kind (biased, unbiased); beyond
  ``layers.GRAM_MAX`` examples one feature-route CKA per layer pair and kind, ``2 n (da db + da^2 + db^2)``;
- mutual k-NN: ``2 n^2 d`` per layer and side (blocked products), then ``n k^2`` compares per layer pair;
- CKNNA: the lists as mutual k-NN's, then per layer pair ``2 n k (da + db)`` for the neighbour cosines and ``4 n k^2``
  list compares;
- cycle k-NN: mutual k-NN's lists (counted once when both are asked), then ``n k^2`` compares per layer pair;
- SVCCA and PWCCA: per layer pair two thin SVDs (``~ 8 n r^2`` each, ``r = min(n, d)``), ``U^T U`` (``2 n r^2``)
  and the ``r x r`` SVD (``~ 22 r^3``); an estimate, as SVD cost depends on the LAPACK path.

- the permutation null (``--null_permutations`` P on ``--null_levels``): CKA, per permutation, a pass over the
  gathered side's Grams and the layer pairs' products (``P n^2 (min(La, Lb) + La Lb)`` cells, timed here per cell:
  gathers, not FLOPs, bound it); mutual and cycle k-NN ``P La Lb n k^2`` list compares each (timed); CCA and CKNNA
  as their raw counts per permutation less the SVDs and lists made once.

Peak memory: the held states of one model pair and set (``(La da + Lb db) n`` floats) plus its Grams
(``(La + Lb) n^2`` floats, only up to ``layers.GRAM_MAX`` examples). "here" divides FLOPs by this machine's float32
matmul rate measured in the plan (an optimistic bound: SVDs run far below it), and adds for CKA's layer x layer matrix
the time ``cka_matrix`` takes to stream the Grams (timed here per Gram cell and layer): it is bound by memory, and
FLOPs alone planned the demo's compare at 29 s for a run of 49 s (issue 50).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from engine.pipelines.compare.languages import languages_of
from engine.pipelines.compare.measures import (
    DEFAULT_FRAME_MEASURES,
    DEFAULT_MEASURES,
    in_stage,
    needs_grams,
    null_is_timed,
    stage_of,
)
from engine.pipelines.compare.states import pair_utterances
from engine.runtime.devices import Device
from engine.runtime.plan import EFFICIENCY, READ_RATE, Plan, Stage, duration, size, timed
from engine.stores.reader import open_store
from kernels import cka, null
from kernels.cca import NULL_BATCH

FLOAT = 4  # bytes per float32


@dataclasses.dataclass(frozen=True)
class ModelShape:
    layers: int  # stored layers
    width: int  # n_audio_state
    dtype_bytes: int = FLOAT  # storage bytes per value


def _set_flops(a: ModelShape, b: ModelShape, n: int, measures, k: int, gram_max: int) -> dict[str, float]:
    flops = {}
    cka_kinds = in_stage(measures, "cka")
    if cka_kinds and n <= gram_max:
        grams = 2 * n * n * (a.layers * a.width + b.layers * b.width)
        flops["cka"] = grams + cka_kinds * 2 * a.layers * b.layers * n * n
    elif cka_kinds:  # one feature-route linear_cka per layer pair and kind
        flops["cka"] = cka_kinds * a.layers * b.layers * 2 * n * (a.width * b.width + a.width**2 + b.width**2)
    if "mknn" in measures:
        flops["mknn"] = 2 * n * n * (a.layers * a.width + b.layers * b.width) + a.layers * b.layers * n * k * k
    if "cycle_knn" in measures:  # mknn's lists, made once for both
        lists = 0 if "mknn" in measures else 2 * n * n * (a.layers * a.width + b.layers * b.width)
        flops["cycle_knn"] = lists + a.layers * b.layers * n * k * k
    if "cknna" in measures:  # the lists as mknn's, then per layer pair the neighbour cosines and list compares
        per_pair = 2 * n * k * (a.width + b.width) + 4 * n * k * k
        flops["cknna"] = 2 * n * n * (a.layers * a.width + b.layers * b.width) + a.layers * b.layers * per_pair
    cca_kinds = in_stage(measures, "cca")
    if cca_kinds:
        ra, rb = min(n, a.width), min(n, b.width)
        per_pair = 8 * n * (ra * ra + rb * rb) + 2 * n * ra * rb + 22 * min(ra, rb) ** 3
        flops["cca"] = cca_kinds * a.layers * b.layers * per_pair
    return flops


def _null_work(a: ModelShape, b: ModelShape, n: int, measures, k: int, gram_max: int, p: int) -> dict[str, tuple]:
    """The permutation null of one set (``compare.null``): stage -> (unit, count). Units: ``cells`` (CKA: per
    permutation the gathered side's Gram cells and the layer pairs' products, timed), ``compares`` (mutual and cycle
    k-NN: per permutation and layer pair n k^2 list compares, timed), ``flops`` (CCA, CKNNA: at the matmul rate)."""
    work = {}
    if in_stage(measures, "cka"):
        if n <= gram_max:
            work["cka"] = ("cells", p * n * n * (min(a.layers, b.layers) + a.layers * b.layers))
        else:  # recomputed per permutation: the feature route, both kinds
            per_pair = 2 * n * (a.width * b.width + a.width**2 + b.width**2)
            work["cka"] = (
                "flops",
                p * a.layers * b.layers * per_pair * in_stage(measures, "cka"),
            )
    if "mknn" in measures:
        work["mknn"] = ("compares", p * a.layers * b.layers * n * k * k)
    if "cycle_knn" in measures:
        work["cycle_knn"] = ("compares", p * a.layers * b.layers * n * k * k)
    if "cknna" in measures:
        work["cknna"] = ("flops", p * a.layers * b.layers * (2 * n * k * (a.width + b.width) + 4 * n * k * k))
    # per permutation the cross product of the kept bases and its SVD, one SVD pair per layer pair; only where the raw
    # value was measured (``layers``: the views' kept directions must fit the n examples, else NaN and no null)
    cca_kinds = sum(_cca_measured(m, n, a.width, b.width) for m in set(measures) if stage_of(m) == "cca")
    if cca_kinds:
        ra, rb = min(n, a.width), min(n, b.width)
        work["cca"] = ("flops", cca_kinds * p * a.layers * b.layers * (2 * n * ra * rb + 22 * min(ra, rb) ** 3))
    return work


@dataclasses.dataclass(frozen=True)
class Rates:
    """This machine's rates, measured once (``measure_rates``): what turns the plan's counts into seconds, for the
    plan and for the run's progress (``compare.progress``)."""

    matmul: float  # float32 FLOP/s of a matrix product
    gram_cell: float = 0.0  # seconds per Gram cell and layer of cka_matrix (bound by memory, not FLOPs)
    null_cell: float = 0.0  # seconds per CKA null cell (``_null_work``'s cells)
    null_compare: float = 0.0  # seconds per k-NN list compare of the null


def measure_rates(*, grams: bool = True, null_timed: bool = True) -> Rates:
    """``Rates`` timed here on random inputs (about a second); ``grams``/``null_timed`` False skips a timing that
    no stage needs."""
    cell, compare = _null_seconds() if null_timed else (0.0, 0.0)
    return Rates(_matmul_rate(), _gram_cell_seconds() if grams else 0.0, cell, compare)


def set_seconds(
    a: ModelShape, b: ModelShape, n: int, measures, k: int, gram_max: int, perms: int, rates: Rates
) -> dict[str, float]:
    """Planned seconds here of one set of n examples compared between models a and b, per stage: ``cka``,
    ``mknn``, ``cknna``, ``cca`` and, with ``perms`` permutations, ``null cka`` ... (the plan's stages, less the
    level). The run's progress ticks these as each measure finishes."""
    seconds = {}
    kinds = in_stage(measures, "cka")
    for stage, flops in _set_flops(a, b, n, measures, k, gram_max).items():
        streamed = kinds * (a.layers + b.layers) * n * n * rates.gram_cell if stage == "cka" and n <= gram_max else 0
        seconds[stage] = flops / rates.matmul + streamed
    per_unit = {"flops": 1 / rates.matmul, "cells": rates.null_cell, "compares": rates.null_compare}
    for stage, (unit, count) in (_null_work(a, b, n, measures, k, gram_max, perms) if perms else {}).items():
        seconds[f"null {stage}"] = count * per_unit[unit]
    return seconds


def null_memory(
    a: ModelShape, b: ModelShape, n: int, measures, k: int, gram_max: int, chunk: int, batch: int, perms: int
) -> float:
    """Bytes the permutation null of one set holds beyond the raw measures' states and Grams: the ``perms``
    permutations (i32[P, n]) and one measure's null scores (f64[P, La, Lb], both CKA kinds at once), plus the largest
    working set of a route: CKA's gathered blocks of b's Grams (``chunk`` permutations x Lb x ``ROWS`` rows x n) or,
    past ``gram_max``, a permuted copy of b's states; mutual and cycle k-NN's hit tensor (``chunk`` x La x Lb x n x
    k^2 booleans; an upper bound, XLA fuses it into the sums); CCA's ``batch`` permuted bases (2 x n x r each);
    CKNNA's per-permutation lists (Lb x n x k)."""
    held = 0.0
    if in_stage(measures, "cka"):
        held = max(held, chunk * b.layers * null.ROWS * n * FLOAT if n <= gram_max else b.layers * b.width * n * FLOAT)
    if "mknn" in measures or "cycle_knn" in measures:
        held = max(held, chunk * a.layers * b.layers * n * k * k)
    if in_stage(measures, "cca"):
        held = max(held, batch * 2 * n * min(n, max(a.width, b.width)) * FLOAT)
    if "cknna" in measures:
        held = max(held, chunk * b.layers * n * k * FLOAT * 2)
    return held + perms * n * 4 + 2 * perms * a.layers * b.layers * 8


SVCCA_KEPT = 0.5  # share of a view's rank SVCCA keeps at 99% of the variance: an estimate (the spectra decide)


def _cca_measured(measure: str, n: int, da: int, db: int) -> bool:
    """Whether a CCA measure is measured on n examples of widths da, db (``compare.layers``: the views' kept
    directions must add up to at most n - 1, else the layer pair is NaN and gets no null). PWCCA keeps each view's
    rank, min(n - 1, d), so this is exact for it; SVCCA keeps the directions holding 99% of the variance, taken as
    ``SVCCA_KEPT`` of the rank (on the demo, 45 of 192 layer pairs of whisper-base were measured at n = 240, none
    at 30)."""
    share = 1.0 if measure == "pwcca" else SVCCA_KEPT
    return share * (min(n - 1, da) + min(n - 1, db)) <= n - 1


def plan_compare(
    models: Mapping[str, ModelShape],
    utterances: Mapping[str, int],
    frames: Mapping[str, int],
    *,
    measures=DEFAULT_MEASURES,
    frame_measures=DEFAULT_FRAME_MEASURES,
    levels=("utterance", "frame"),
    frame_sample: int = 2048,
    knn_k: int = 10,
    device: Device | None = None,
    matmul_rate: float | None = None,
    gram_max: int = 4096,
    gram_cell_seconds: float | None = None,
    null_permutations: int = 0,
    null_levels=("utterance",),
    null_seconds: tuple[float, float] | None = None,
    rates: Rates | None = None,
) -> Plan:
    """The plan for ``models`` compared pairwise (each with itself too) on languages with ``utterances[lang]``
    paired utterances and ``frames[lang]`` paired frames. ``rates``: this machine's (``measure_rates``, timed here
    by default); ``matmul_rate``, ``gram_cell_seconds`` and ``null_seconds`` (per CKA null cell and per k-NN list
    compare) override one each."""
    names = list(models)
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i, len(names))]
    asked_everywhere = set(measures) | set(frame_measures)
    grams = needs_grams(asked_everywhere)
    null_timed = bool(null_permutations) and null_is_timed(asked_everywhere)
    if rates is None:  # each rate timed here only when a stage needs it and no override gives it
        need_gram, need_null = grams and gram_cell_seconds is None, null_timed and null_seconds is None
        null_rates = _null_seconds() if need_null else (0.0, 0.0)
        rates = Rates(matmul_rate or _matmul_rate(), _gram_cell_seconds() if need_gram else 0.0, *null_rates)
    cell_s, compare_s = null_seconds or (rates.null_cell, rates.null_compare)
    gram_cell = rates.gram_cell if gram_cell_seconds is None else gram_cell_seconds
    rates = Rates(matmul_rate or rates.matmul, gram_cell, cell_s, compare_s)
    stage_flops: dict[str, float] = {}
    stage_seconds: dict[str, float] = {}
    peak = null_peak = 0.0
    read = 0.0
    for level in levels:
        sizes = utterances if level == "utterance" else {lang: min(f, frame_sample) for lang, f in frames.items()}
        sets = list(sizes.values()) + [sum(sizes.values()) if level == "utterance" else frame_sample]
        asked = measures if level == "utterance" else frame_measures
        perms = null_permutations if level in null_levels else 0
        for a, b in pairs:
            ma, mb = models[a], models[b]
            for n in sets:
                for stage, f in _set_flops(ma, mb, n, asked, knn_k, gram_max).items():
                    stage_flops[f"{level} {stage}"] = stage_flops.get(f"{level} {stage}", 0.0) + f
                work = _null_work(ma, mb, n, asked, knn_k, gram_max, perms) if perms else {}
                for stage, (unit, count) in work.items():
                    flops = count if unit == "flops" else 2 * count
                    stage_flops[f"{level} null {stage}"] = stage_flops.get(f"{level} null {stage}", 0.0) + flops
                for stage, seconds in set_seconds(ma, mb, n, asked, knn_k, gram_max, perms, rates).items():
                    stage_seconds[f"{level} {stage}"] = stage_seconds.get(f"{level} {stage}", 0.0) + seconds
                held = (ma.layers * ma.width + mb.layers * mb.width) * n * FLOAT
                grams_held = (ma.layers + mb.layers) * n * n * FLOAT if n <= gram_max else 0
                extra = null_memory(ma, mb, n, asked, knn_k, gram_max, null.CHUNK, NULL_BATCH, perms) if perms else 0.0
                peak = max(peak, held + grams_held + extra)
                null_peak = max(null_peak, extra)
        if level == "frame":  # every frame of every layer is read once per model pair (once for a model with itself)
            for a, b in pairs:
                per_frame = sum(models[m].layers * models[m].width * models[m].dtype_bytes for m in {a, b})
                read += sum(frames.values()) * per_frame
    # Pooling reads every frame of every layer of every store once.
    read += sum(m.layers * m.width * m.dtype_bytes * sum(frames.values()) for m in models.values())
    stages = [Stage("read + pool states", 0.0, read, 0.0, read / READ_RATE)]
    for name, f in stage_flops.items():
        on_device = None if device is None else f / (device.flops("float32") * EFFICIENCY)
        stages.append(Stage(name, f, 0.0, 0.0, stage_seconds.get(name, 0.0), on_device))
    null_s = sum(s for name, s in stage_seconds.items() if " null " in f" {name} ")
    counts = [
        ("models", ", ".join(f"{n} ({m.layers} layers x {m.width})" for n, m in models.items())),
        ("model pairs", f"{len(pairs)} (each with itself included)"),
        (
            "permutation null",
            f"{null_permutations} permutations per set on {', '.join(null_levels)}: adds {duration(null_s)} here "
            f"and holds {size(null_peak)} at most beyond the raw measures"
            if null_permutations
            else "none",
        ),
        ("languages", f"{len(utterances)} (+ all)"),
        (
            "utterances",
            f"{sum(utterances.values()):,}; frames {sum(frames.values()):,} "
            f"(at most {frame_sample} per language at the frame level)",
        ),
    ]
    return Plan(
        job="compare",
        counts=counts,
        stages=stages,
        peak_memory=peak,
        memory_lines=[
            f"held states of one model pair and set + their Grams (up to {gram_max} examples)"
            + (" + the null's working set" if null_permutations else "")
        ],
        device=device,
        calibration=f"float32 matmul rate measured now: {rates.matmul / 1e9:.1f} GFLOP/s (SVD stages run far below it)"
        + (f"; CKA's layer x layer matrix {rates.gram_cell * 1e9:.2f} ns a Gram cell and layer" if grams else "")
        + (
            f"; null: {rates.null_cell * 1e9:.2f} ns a CKA cell, {rates.null_compare * 1e9:.2f} ns a k-NN list compare"
            if null_timed
            else ""
        ),
        assumptions=["FLOP counts of SVDs are LAPACK-path estimates", "reads at ~200 MB/s from a local store"],
    )


def _matmul_rate() -> float:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1024, 512)), jnp.float32)
    f = jax.jit(lambda a: jnp.matmul(a.T, a, precision=jax.lax.Precision.HIGHEST))
    jax.block_until_ready(f(x))
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(f(x))
    return 5 * 2 * 1024 * 512 * 512 / (time.perf_counter() - start)


def _gram_cell_seconds(layers: int = 4, n: int = 1024) -> float:
    """Seconds per Gram cell and layer of ``cka_matrix`` (the unbiased kind, the dearer), timed on random Grams."""
    grams = jnp.asarray(np.random.default_rng(0).standard_normal((layers, n, n)), jnp.float32)
    return timed(lambda g: cka.cka_matrix(g, g, unbiased=True), grams) / (2 * layers * n * n)


def _null_seconds(n: int = 512, perms: int = 8) -> tuple[float, float]:
    """Seconds per CKA null cell (``_null_work``'s ``cells``) and per k-NN list compare, timed on random inputs."""
    rng = np.random.default_rng(0)
    order = null.permutations(n, perms, 0)
    grams = jnp.asarray(rng.standard_normal((4, n, n)), jnp.float32)
    per_cell = timed(lambda g: null.cka_null(g, g, order), grams) / (perms * n * n * (4 + 16))
    lists = jnp.asarray(rng.integers(0, n, (4, n, 10)), jnp.int32)
    per_compare = timed(lambda x: null.knn_null(x, x, order), lists) / (perms * 16 * n * 100)
    return per_cell, per_compare


def plan_compare_run(config, device: Device | None, rates: Rates | None = None) -> Plan:
    """``plan_compare`` for a CompareConfig: store headers and lengths only."""
    readers = [open_store(url) for url in config.stores]
    names = config.names or tuple(r.info.model_name for r in readers)
    utterances, frames = {}, {}
    for lang in languages_of(config, readers):  # each store's own code for it (compare.languages)
        first, last = lang.codes[0], lang.codes[-1]
        pairing = pair_utterances(readers[0], readers[-1], (first, last), config.allow_mismatch)
        utterances[lang.name] = len(pairing.keys)
        frames[lang.name] = int(
            np.minimum(readers[0].lengths(first)[pairing.index_a], readers[-1].lengths(last)[pairing.index_b]).sum()
        )
    models = {name: model_shape(r) for name, r in zip(names, readers, strict=True)}
    return plan_compare(
        models,
        utterances,
        frames,
        measures=config.measures,
        frame_measures=config.frame_measures,
        levels=config.levels,
        frame_sample=config.frame_sample,
        knn_k=config.knn_k,
        device=device,
        null_permutations=config.null_permutations,
        null_levels=config.null_levels,
        rates=rates,
    )


def model_shape(reader) -> ModelShape:
    """A layer store's ``ModelShape``, from its header."""
    info = reader.info
    return ModelShape(len(info.layers), info.embed, np.dtype(info.dtype).itemsize if info.dtype != "bfloat16" else 2)
