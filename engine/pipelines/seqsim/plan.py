"""The plan of a seqsim run (``--plan``): the pairs, layers and frames from the layer store's lengths, each
measure's FLOPs and time.

SeqSim, per language pair and layer: ``2*N*M*m*n*d`` FLOPs for N x M utterances cropped to m and n frames
(``kernels.seqsim`` crops to the longest utterance). DTW and OT cost ``N*M*m*n`` cells per pair and layer as well,
but their time is set by the wavefront and by the Sinkhorn iterations, which depend on the states: both are timed
here on a sample of the store's own utterances (``calibrate_pair_measure``) and scaled by cells; their FLOPs count
the cosine cost matrix only (``2*d`` a cell). ``--remove_language`` adds its fit (one more read of every language
per layer; ``2 F d^2`` FLOPs of scatter for lda over F frames) and its application to every read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.pipelines.seqsim.computed import SideRows, bin_frames, computed_flops
from engine.pipelines.seqsim.config import parse_kind
from engine.pipelines.seqsim.measures import (
    COSTS,
    MEASURES,
    SEQSIM,
    SEQSIM_MEASURES,
    MeasureContext,
    Side,
    seqsim_path,
)
from engine.pipelines.seqsim.tiling.tiles import (
    MIN_UNIT_FLOPS,
    UNITS_PER_PROCESS,
    BudgetError,
    Language,
    Sizing,
    check_budget,
    pair_flops,
    plan_units,
    simulate,
)
from engine.pipelines.stages.seqsim_rate import calibrate_seqsim
from engine.runtime.budget import DEVICE_SHARE, Budget, resolve_budget
from engine.runtime.devices import Device
from engine.runtime.plan import EFFICIENCY, READ_RATE, Plan, Stage, duration, flops, size, timed
from engine.stores.pairs import resolve_pairs
from engine.stores.reader import open_store
from kernels.seqsim import choose_blocks, default_memory_budget
from kernels.seqsim_fp8 import FP8_DEVICE_KINDS
from kernels.seqsim_fp8 import bound as fp8_bound
from kernels.settings import OtConfig

# --seqsim_precision fp8's agreement with bf16 as measured by bench/seqsim_fp8.py (bench/RESULTS.md, "seqsim fp8
# agreement", 2026-11-27): whisper-base on the FLEURS sample (50 clips, 5 languages), 8 layers, 1,600 queries, fp8
# emulated on CPU. Per scale: (queries whose top-1 changed against bf16, queries, largest score difference).
FP8_AGREEMENT = {"tensor": (12, 1600, 0.0034), "frame": (12, 1600, 0.0034), "none": (12, 1600, 0.0035)}
FP8_BF16_TOP1 = (1, 1600)  # bf16's own top-1 changes against float32 on the same queries
FP8_WORST_R1 = 0.90  # the worst direction's R@1 against bf16 (10 queries: one top-1 lost)
# The published dense e4m3 rate of the devices kernels.seqsim_fp8.FP8_DEVICE_KINDS names over their bf16 rate (H100
# and H200: 1979 TFLOP/s against 989). fp8 SeqSim's fraction of that peak is the device's measured one
# (Device.seqsim_efficiency_of("fp8"): on an H100, 2026-11-28), else the bf16 blocks' fraction of their own.
FP8_OVER_BF16 = 2.0


def fp8_lines(d: int, scale: str, platform: str, here_kind: str, device: Device | None) -> list[str]:
    """The assumptions a plan with --seqsim_precision fp8 prints: the agreement measured, its bound at width ``d``,
    and the speed taken here (``platform``, a device of kind ``here_kind``) and on ``device``."""
    changed, queries, worst = FP8_AGREEMENT[scale]
    lines = [
        f"seqsim_precision fp8 (scale {scale}): as measured against bf16 (bench/RESULTS.md, 'seqsim fp8 agreement': "
        f"whisper-base, FLEURS sample, 8 layers, emulated on CPU) the top-1 of {changed} of {queries:,} queries "
        f"changed ({changed / queries:.2%}; bf16 against float32: {FP8_BF16_TOP1[0]} of {FP8_BF16_TOP1[1]:,}), the "
        f"worst direction's R@1 {FP8_WORST_R1:.2f}, scores within {worst} of bf16; worst case at d={d}: "
        f"{fp8_bound(d, scale):.3f} (kernels.seqsim_fp8.bound). Not measured on true translations",
    ]
    native = platform != "cpu" and here_kind.startswith(FP8_DEVICE_KINDS)
    lines.append(
        f"here ({here_kind if platform != 'cpu' else 'cpu'}): fp8 "
        + ("on its e4m3 tensor cores" if native else "EMULATED (no e4m3 tensor cores): no speed-up, timed as it runs")
    )
    if device is not None:
        if device.name.startswith(FP8_DEVICE_KINDS):
            peak = FP8_OVER_BF16 * device.flops_bf16
            efficiency, timed = device.seqsim_efficiency_of("fp8"), "fp8" in device.seqsim_paths
            lines.append(
                f"on {device.name}: fp8 at {FP8_OVER_BF16:.0f}x the bf16 peak ({peak / 1e12:.0f} TFLOP/s, published "
                f"e4m3) times {efficiency:.1%}: {peak * efficiency / 1e12:.0f} TFLOP/s"
                + (f" ({device.measured})" if timed else ", assumed: the bf16 blocks' fraction (fp8 not timed there)")
            )
        else:
            lines.append(f"on {device.name}: no e4m3 tensor cores: fp8 emulated at the --dtype rate (no speed-up)")
    return lines


CELL_MEASURES = tuple(m.name for m in MEASURES.values() if m.kernel.cost.kind == "cells")  # timed on real states
CALIBRATION_UTTERANCES = 16  # per language, spread over its utterances, for the dtw and ot calibration


def calibrate_pair_measure(measure: str, sample, ot_config=None) -> tuple[float, float]:
    """(cells per second, seconds of compilation) of ``measure`` (one of ``CELL_MEASURES``: dtw, ot) on this machine,
    through its registry kernel call, cells counted as ``N*M*m*n`` with frames cropped to the longest; on
    ``sample = (A, len_A, B, len_B)``: real states of two languages (``f[N, m, embed]``, ``i32[N]``). Sinkhorn's
    iterations depend on the states: random ones would not do."""
    if measure not in CELL_MEASURES:
        raise ValueError(f"calibrate_pair_measure times {CELL_MEASURES}, not {measure!r}")
    A, len_A, B, len_B = sample
    A, B = A[:, : int(len_A.max())], B[:, : int(len_B.max())]
    sides = [Side(np.arange(len(x)), n, jax.device_put(x)) for x, n in ((A, len_A), (B, len_B))]  # as the job's
    context = MeasureContext(str(A.dtype), ot_config or OtConfig())
    kernel = MEASURES[measure].kernel

    def fn():
        return kernel.score(*sides, context, frozenset({measure}))[measure].values

    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    seconds = timed(fn, repeats=1)
    return float(A.shape[0] * B.shape[0] * A.shape[1] * B.shape[1]) / seconds, max(first - seconds, 0.0)


def plan_seqsim(
    lengths: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    *,
    d: int,
    n_layers: int,
    storage_dtype: str,
    dtype: str,
    device: Device | None,
    store: str,
    measures: Sequence[str] = ("seqsim",),
    sample=None,
    ot_config=None,
    budget: Budget | None = None,
    hosts: Sequence[int] = (1,),
    unit_gflops: float | None = None,
    remove_language: str = "none",
    dimensions: str = "none",
    seqsim_kernel: str = "auto",
    seqsim_precision: str = "dtype",
    seqsim_fp8_scale: str = "tensor",
) -> Plan:
    """The plan of a seqsim run of ``measures`` over ``pairs`` of languages at ``n_layers`` layers; ``lengths[lang]``:
    each utterance's frames (0 = not encoded). ``sample``: real states ``(A, len_A, B, len_B)`` to time dtw and ot
    on (``calibrate_pair_measure``); needed when ``measures`` has either. ``budget``: one process's memory budget
    here (default ``resolve_budget``'s); ``hosts``: the process counts to give the time on (units balanced over
    them); ``unit_gflops``: the run's ``SimilarityConfig.unit_gflops``; ``seqsim_kernel``: its
    ``SimilarityConfig.seqsim_kernel``, whose path (``measures.seqsim_path``) sets the FLOPs as computed, here and
    on ``device`` (one device: auto packs there); ``seqsim_precision``, ``seqsim_fp8_scale``: its fp8 opt-in, which
    takes the fp8 path, is timed here by its own kernel, on ``device`` at ``FP8_OVER_BF16`` times the bf16 rate where
    it has e4m3 tensor cores, and prints the agreement measured (``fp8_lines``)."""
    fp8 = seqsim_precision == "fp8"
    done = {lang: np.asarray(v)[np.asarray(v) > 0] for lang, v in lengths.items()}
    # The job reads each language up to its longest utterance, so seqsim_matrix's crop to a FRAME_QUANTUM multiple
    # never pads further: a language's frames as computed are its longest length.
    padded = {lang: int(v.max(initial=1)) for lang, v in done.items()}
    itemsize, sbytes = jnp.dtype(dtype).itemsize, jnp.dtype(storage_dtype).itemsize
    asked = [entry for name, entry in MEASURES.items() if name in measures]  # stages in the registry's order
    kernels = {kind: list({m.kernel.name: m.kernel for m in asked if m.kernel.cost.kind == kind}.values())
               for kind in COSTS}  # fmt: skip
    matmul = SEQSIM.cost  # the seqsim kernel's counts are reported whether or not it is asked
    useful = sum(matmul.useful_flops(done[a], done[b], d) for a, b in pairs) * n_layers
    # As computed: by the path the run takes here and the one it takes on the device, padding included.
    langs = sorted({lang for pair in pairs for lang in pair})
    platform = jax.devices()[0].platform
    path_here = seqsim_path(seqsim_kernel, several_devices=jax.local_device_count() > 1, precision=seqsim_precision)
    sides = {lang: SideRows(done[lang]) for lang in langs}
    here_name = "cpu" if platform == "cpu" else jax.devices()[0].device_kind
    work_here = computed_flops(path_here, sides, pairs, d, platform=platform, device_name=here_name) * n_layers
    work = work_here  # the stage's FLOPs: the device's when planned for one
    if device is not None:
        device_platform = "tpu" if device.name.startswith("TPU") else "gpu"
        path_device = seqsim_path(seqsim_kernel, several_devices=False, precision=seqsim_precision,
                                  device=device.name)  # fmt: skip
        work = computed_flops(path_device, sides, pairs, d, platform=device_platform, device_name=device.name)
        work *= n_layers
    # Per layer, each language of a pair is read once when the budget holds them all, padded to its longest (the
    # memory plan below multiplies by the reads its tiles take).
    read = sum(len(done[lang]) * padded[lang] * d * sbytes for lang in langs) * n_layers
    written = sum(len(lengths[a]) * len(lengths[b]) * 4 for a, b in pairs) * n_layers

    t0 = time.perf_counter()
    rate = calibrate_seqsim(d, dtype, fp8_scale=seqsim_fp8_scale if fp8 else None)
    dev = None
    if device is not None:
        peak = device.flops(dtype)
        if fp8 and device.name.startswith(FP8_DEVICE_KINDS):
            peak = FP8_OVER_BF16 * device.flops_bf16
        efficiency = device.seqsim_efficiency_of(path_device)
        dev = max(work / (peak * efficiency), work / (2 * d) * 4 * 2 / device.bandwidth)

    def produced(kernel) -> list[str]:
        return [m.name for m in asked if m.kernel is kernel]

    stages = []
    for kernel in kernels["matmul"]:  # seqsim: one call writes each of its measures asked
        stages.append(Stage(kernel.name, work, float(read), float(written) * len(produced(kernel)), work_here / rate,
                            dev))  # fmt: skip
    # dtw and ot crop to each language's longest utterance too.
    cells = sum(float(len(done[a]) * len(done[b]) * padded[a] * padded[b]) for a, b in pairs) * n_layers
    cell_rates = {}
    for kernel in kernels["cells"]:
        if sample is None:
            raise ValueError(f"planning the {kernel.name} measure needs a sample of real states to time it on")
        cell_rates[kernel.name], compile_s = calibrate_pair_measure(kernel.name, sample, ot_config)
        read_here = 0.0 if stages else float(read)  # one read of a layer's states serves every measure
        # The run compiles as the calibration did (once per tile shape; counted once).
        seconds = cells / cell_rates[kernel.name] + compile_s
        flops_ = sum(kernel.cost.flops(len(done[a]), len(done[b]), padded[a], padded[b], d) for a, b in pairs)
        stages.append(Stage(kernel.name, flops_ * n_layers, read_here, float(written), seconds, None))
    pooled = [m for m in measures if MEASURES[m].kernel.cost.kind == "negligible"]
    if pooled:
        pooled_read = 0.0 if stages else float(read)
        no_time = None if device is None else 0.0
        stages.append(Stage(",".join(pooled), 0.0, pooled_read, float(written) * len(pooled), 0.0, no_time))
    calib_s = time.perf_counter() - t0

    largest = max(pairs, key=lambda p: len(done[p[0]]) * len(done[p[1]]) * padded[p[0]] * padded[p[1]])
    a, b = largest
    n_a, n_b, m, n = len(done[a]), len(done[b]), padded[a], padded[b]

    def blocks(budget: int, on: str, path: str) -> str:
        # One pair of bins at a time (fp8 packs as packed does): f32 similarities, room for a temporary and the gathers
        if path in ("packed", "fp8"):
            bins = bin_frames(on)
            working = 3 * 4 * bins * bins + 2 * itemsize * (d + 2) * bins
            return f"packed bins of at most {bins} frames ({size(working)} working set)", working
        if path == "pallas":  # tiles stay on chip: the unit frames padded to the tiles, as the inputs
            return "the fused Pallas kernel (similarity tiles on chip)", 0
        ba, bb = choose_blocks(n_a, n_b, m, n, d, jnp.dtype(dtype), budget, platform=on)
        working = 2 * 4 * ba * m * bb * n + itemsize * (d + 2) * (ba * m + bb * n)
        return f"blocks of {ba} x {bb} utterances ({size(working)} working set, budget {size(budget)})", working

    here_blocks, working = blocks(default_memory_budget(), platform, path_here)
    budget = budget or resolve_budget(None)
    seqsim_asked = any(m in SEQSIM_MEASURES for m in measures)
    packs = path_here == "packed" and seqsim_asked
    here, held, reads = memory_plan(done, pairs, measures, d, dtype, budget, packs, hosts[0], unit_gflops, n_layers)
    memory_lines = [
        f"largest pair {a}:{b}: {n_a} x {n_b} utterances of <= {m} x {n} frames",
        f"here ({platform}): {here_blocks}",
        f"here: {here}",
    ]
    peak = held + working + n_a * n_b * 4 * 3
    if device is not None:
        on = "tpu" if device.name.startswith("TPU") else "gpu"
        # kernels.seqsim's blocks use a quarter of free memory
        device_blocks, working = blocks(int(device.memory // 4), on, path_device)
        share = Budget(int(device.memory * DEVICE_SHARE), f"{DEVICE_SHARE:.0%} of its {size(device.memory)}")
        packs_there = path_device == "packed" and seqsim_asked
        on_device, held, reads = memory_plan(done, pairs, measures, d, dtype, share, packs_there, hosts[0],
                                             unit_gflops, n_layers)  # fmt: skip
        fits = held + working <= 0.9 * device.memory
        memory_lines += [f"on {device.name}: {device_blocks}", f"on {device.name}: {on_device}",
                         f"fits on {device.name}: {'yes' if fits else 'NO'} (90% usable)"]  # fmt: skip
        peak = held + working + n_a * n_b * 4 * 3
    # Each language is read as often as the tiles make it (one process walking the whole order; on --plan_device,
    # the device's budget).
    for stage in stages if reads is not None else ():
        if stage.bytes_read:
            stages[stages.index(stage)] = dataclasses.replace(stage, bytes_read=stage.bytes_read * reads)
    if remove_language != "none":  # one more read of every language per layer to fit, then applied to every read
        kind, k = parse_kind(remove_language)
        frames_ = float(sum(done[lang].sum() for lang in langs))
        fit = (2 * frames_ * d * d if kind == "lda" else frames_ * d) * n_layers
        apply = (4 * frames_ * d * k if kind == "lda" else frames_ * d) * n_layers * (reads or 1.0)
        seconds = (fit + apply) / rate + read / READ_RATE
        on_dev = None if device is None else (fit + apply) / (device.flops("float32") * EFFICIENCY)
        stages.append(Stage(f"remove_language {remove_language} (fit, apply)", fit + apply, float(read), 0.0,
                            seconds, on_dev))  # fmt: skip
    if dimensions != "none":  # likewise: one more read to fit (sums of x, |x|, x^2), then applied to every read
        frames_ = float(sum(done[lang].sum() for lang in langs))
        fit, apply = 4 * frames_ * d * n_layers, 2 * frames_ * d * n_layers * (reads or 1.0)
        on_dev = None if device is None else (fit + apply) / (device.flops("float32") * EFFICIENCY)
        stages.append(Stage(f"dimensions {dimensions} (fit, apply)", fit + apply, float(read), 0.0,
                            (fit + apply) / rate + read / READ_RATE, on_dev))  # fmt: skip
    total = sum(st.seconds_device or 0.0 for st in stages) if device is not None else None
    for count in hosts if len(hosts) > 1 or hosts[0] > 1 else ():
        when = f"{duration(sum(st.seconds_here for st in stages) / count)} per host here"
        when += "" if total is None else f", {duration(total / count)} per {device.name}"
        memory_lines.append(f"on {count} host{'s' if count > 1 else ''} (one process each, units balanced): {when}")
    computed = f"{flops(work_here)} as computed here ({path_here}, {work_here / max(useful, 1.0):.2f}x)"
    if device is not None:
        computed += f", {flops(work)} on {device.name} ({path_device}, {work / max(useful, 1.0):.2f}x)"
    counts = [
        ("store", store),
        ("languages", f"{len(langs)}, {len(pairs)} pairs, {n_layers} layers, d={d}"),
        ("utterances", str(sum(len(done[lang]) for lang in langs))),
        ("frames", str(int(sum(done[lang].sum() for lang in langs)))),
        ("measures", f"{', '.join(measures)}: {len(measures)} matrices per pair and layer"),
        ("seqsim FLOPs", f"{flops(useful)} on valid frames, {computed}"),
    ]
    if fp8:
        counts.append(("seqsim precision", f"fp8 e4m3, scale {seqsim_fp8_scale}, float32 accumulation (opt-in)"))
    calibration = (
        f"{platform} x {jax.local_device_count()}: seqsim {'fp8 ' if fp8 else ''}kernel at {rate / 1e9:.1f} GFLOP/s on "
        "8 x 8 utterances "
        f"of 256 frames"
    )
    calibration += "".join(
        f"; {m} at {r / 1e6:.1f} M cells/s on a sample of {CALIBRATION_UTTERANCES} x {CALIBRATION_UTTERANCES} "
        "utterances"
        for m, r in cell_rates.items()
    )
    calibration += f" (calibration took {calib_s:.1f} s)"
    assumptions = ["mean, centre and duration are negligible beside the others"]
    if fp8:
        assumptions += fp8_lines(d, seqsim_fp8_scale, platform, jax.devices()[0].device_kind, device)
    if device is not None and path_device in device.seqsim_paths:
        assumptions.append(
            f"on {device.name} the {path_device} path at {device.seqsim_efficiency_of(path_device):.1%} of peak per "
            f"FLOP as computed, as measured at d 1280 on FLEURS-shaped lengths ({device.measured})"
        )
    elif device is not None and path_device != "blocks":
        assumptions.append(
            f"on {device.name} the {path_device} path runs at the fraction of peak measured for the blocks, per FLOP "
            "as computed (only the blocks were timed on this device)"
        )
    if cell_rates:
        assumptions.append(
            "dtw and ot take as long per cell as on the calibration sample (ot: as many Sinkhorn iterations); their "
            "FLOPs are the cosine cost matrix only, and they are not estimated on --plan_device"
        )
    return Plan("seqsim", counts, stages, peak, memory_lines, device, calibration, assumptions)


def memory_plan(done, pairs, measures, d: int, dtype: str, budget: Budget, packs: bool, hosts: int, unit_gflops,
                n_layers: int = 1):  # fmt: skip
    """(a line, the peak bytes held, the bytes read over the languages' sizes: reads per layer) of one process
    walking one layer of the run's order under ``budget`` (``tiles``, ``held.simulate``); a budget too small for some
    pair says so and holds nothing."""
    reads_states = any(MEASURES[m].needs_states for m in measures)
    sizing = Sizing(d, jnp.dtype(dtype).itemsize, reads_states, packs)
    languages = {lang: Language(lang, n, sizing) for lang, n in done.items()}
    described = f"memory budget {size(budget.bytes)} per process ({budget.source})"
    try:
        check_budget(languages, pairs, budget.bytes, budget.source)
    except BudgetError as e:
        return f"{described}: NO: {e}", 0, None
    todo = {(0, a, b): tuple(measures) for a, b in pairs}
    target = None if unit_gflops is None else unit_gflops * 1e9
    if target is None:  # the run's units: its total over every layer, as the job sizes them
        layer = sum(pair_flops(measures, languages[a].lengths, languages[b].lengths, d) for a, b in pairs)
        target = max(layer * n_layers / (UNITS_PER_PROCESS * hosts), MIN_UNIT_FLOPS)
    schedule = plan_units(todo, [0], pairs, languages, budget.bytes, processes=hosts, target=target)
    held = simulate(budget.bytes, languages, schedule.items())
    reads = list(held.reads_per_language().values()) or [0.0]
    split = len({(i.a, i.b) for i in schedule.items() if i.split})
    line = (
        f"{described}: each language read {np.mean(reads):.2f} times per layer on average (at most "
        f"{max(reads):.2f}), {size(held.peak)} held at most; {split} pairs split into blocks; work units of "
        f"~{flops(schedule.target)}, {len(schedule.units)} per layer (for {hosts} process{'es' if hosts > 1 else ''})"
    )
    whole = sum(language.whole_bytes for language in languages.values())
    return line, held.peak, sum(held.read.values()) / whole if whole else 1.0


def plan_seqsim_run(config, device: Device | None) -> Plan:
    reader = open_store(config.store)
    info = reader.info
    langs = list(config.langs) if config.langs else reader.languages()
    pairs = resolve_pairs(config.pairs, langs, reader.languages())
    layers = config.layers if config.layers is not None else info.layers
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in langs}
    sample = None
    if any(m in CELL_MEASURES for m in config.measures):
        a, b = max(pairs, key=lambda p: int((lengths[p[0]] > 0).sum()) * int((lengths[p[1]] > 0).sum()))
        sample = _sample_states(reader, (a, b), lengths, layers[len(layers) // 2], config.dtype)
    return plan_seqsim(
        lengths,
        pairs,
        d=info.embed,
        n_layers=len(layers),
        storage_dtype=info.dtype,
        dtype=config.dtype,
        device=device,
        store=config.store,
        measures=tuple(dict.fromkeys(config.measures)),
        sample=sample,
        ot_config=config.ot,
        budget=_budget(config.run.memory_budget, device),
        hosts=(jax.process_count(),),
        unit_gflops=config.unit_gflops,
        remove_language=config.remove_language,
        dimensions=config.dimensions,
        seqsim_kernel=config.seqsim_kernel,
        seqsim_precision=config.seqsim_precision,
        seqsim_fp8_scale=config.seqsim_fp8_scale,
    )


def _budget(asked: int | None, device: Device | None) -> Budget:
    """The budget a plan sizes its units by: this machine's (checked against its memory) when it plans for here;
    for another device (``--plan_device``) the one asked, which that device's hosts are to give."""
    if device is None or asked is None:
        return resolve_budget(asked)
    return Budget(int(asked), "--memory_budget")


def _sample_states(reader, pair: tuple[str, str], lengths: Mapping[str, np.ndarray], layer: int, dtype: str):
    """``(A, len_A, B, len_B)``: ``CALIBRATION_UTTERANCES`` done utterances of each language of ``pair``, evenly
    spread, at ``layer`` (the middle one planned), read from the store as the job reads them."""
    out = []
    for lang in pair:
        done = np.flatnonzero(lengths[lang] > 0)
        index = done[np.unique(np.linspace(0, len(done) - 1, CALIBRATION_UTTERANCES).astype(int))]
        n = lengths[lang][index].astype(np.int32)
        states, _ = reader.language_layer(
            lang, layer, utterances=index, dtype=jnp.dtype(dtype), frames=int(n.max()), zero_padding=False
        )
        out += [jnp.asarray(states), jnp.asarray(n)]
    return tuple(out)
