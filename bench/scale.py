"""Benchmark: the seqsim job on a FLEURS-shaped synthetic grid: how its time grows, how evenly processes share it,
and what memory it holds against its budget (issue 42).

    python bench/scale.py --quick        # a small version, to check the program (a few minutes on 2 cores)
    python bench/scale.py                # the full version, for a quiet machine (BUILD.md says how long)
    python bench/scale.py --sweeps processes --rounds 5 --record bench/RESULTS.md
    python bench/scale.py --sweeps processes --jax_cache /tmp/c --no-warmup   # kernels compiled by an earlier run
    python bench/scale.py --sweeps workers --langs 26 --scale 0.0333 --record bench/RESULTS.md   # --worker runs

The grid. Random states written through ``LayerStore`` (``bench.grid.write_random_store``, as the encode job writes
a store). Utterance lengths follow FLEURS test: durations drawn (with replacement) from the real FLEURS clips in
``../shared/data/fleurs-sample`` (``$BABELGRID_FLEURS_SAMPLE``; 50 clips, 4.3-43 s), 50 encoder frames a second,
times ``--frame_scale``. Utterances per language: FLEURS test's 350-650 per language (drawn uniformly in that range,
seeded: the published per-language table was not at hand offline) times ``--scale``. Width ``--d`` and ``--layers``
small enough for a 2-core machine.

The runs (``bench/scale_runs.py``). ``python -m jobs.seqsim --langs all`` with the job's default measures, as 1, 2
and 4 ``jax.distributed`` processes on 127.0.0.1, each a "host" of one core: ``os.sched_setaffinity`` pins process i
to core i mod cores, and XLA's CPU client and ``kernels._cpu`` size their thread pools from that affinity (XLA's flags
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` left its pool as it was here: 17 threads
with or without them, 13 when pinned to one core). Compiled kernels come from a persistent JAX compilation cache
that an unmeasured warm-up run fills, so no measured run pays for XLA's compilation; each process still traces and
loads the kernels of every shape it meets, and the packed SeqSim kernel compiles one per pair of side shapes (bins,
slots, chunks), which grow in number with the languages (158 at 40 languages here against 52 at 13, ~5 MiB of
resident memory each): that is in each process's work time and RSS. Each process reports its busy
seconds (the start of its work to the end of its last unit), its units, the states it held at its peak and its
reads per language (the job's summary), and its peak resident memory (``ru_maxrss``, read at exit). Rounds are
interleaved (every configuration once per round) and the tables give medians.

What it prints: per process count, the work time (the longest busy time), the wall time, the speed-up over one
process, each process's idle share of the work time and peak RSS against the budget, and the time per pair-layer;
then (``--sweeps shapes``, counted in a second, nothing timed) how many pair shapes, so executables, the packed
kernel needs for the main grid, for 26 languages at 1/30 and for FLEURS itself (one: every side packs into full
bins of the same slots and chunks), which is why the processes table is also run at ``--langs 26 --scale 0.0333``;
then (``--sweeps workers``, ``bench/scale_workers.py``) the same grid as independent ``--worker`` processes: one
against two started 20 s apart, and two of which one is killed halfway and a third started later; then the sweeps,
each with the exponent fitted to log(time) against log(size): languages at fixed utterances (time
against pairs), utterances per language (against utterances), frames (against the frame scale). The goals (issue
42): exponents 1.0 +- 0.1 (pairs), 2.0 +- 0.15 (utterances); peak RSS within the budget plus a constant (the RSS of
the same job on a 2-language grid of 2 utterances, measured here, plus ``ALLOWANCE`` for kernel working sets), at
every language count; 2 processes at least 1.8x one; no process idle more than 10% of the work time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record  # noqa: E402
from bench.scale_runs import WRAPPER, Bench, median_run, net, parse_size, summary, work  # noqa: E402
from bench.scale_workers import workers_table  # noqa: E402

SAMPLE = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))
FRAMES_PER_SECOND = 50  # encoder frames
TEST_COUNTS = (350, 650)  # utterances per language in FLEURS test (the range)
ALLOWANCE = 256 * 2**20  # kernel working sets and XLA temporaries beyond the measured baseline
SECTION = "seqsim at scale on a FLEURS-shaped grid (bench/scale.py)"
WORKERS_SECTION = "independent workers on a FLEURS-shaped grid (bench/scale.py --sweeps workers)"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One version of the benchmark (``FULL``, ``QUICK``; flags override fields)."""

    langs: int  # languages of the main grid
    scale: float  # its utterances: FLEURS test's counts times this
    d: int
    layers: int
    budget: str  # --memory_budget of every process
    processes: tuple[int, ...]
    rounds: int
    lang_sweep: tuple[int, ...]
    lang_sweep_utterances: int
    utterance_sweep: tuple[int, ...]
    frame_sweep: tuple[float, ...]
    sweep_langs: int  # languages of the utterance and frame sweeps
    frame_sweep_utterances: int


FULL = Sizes(102, 1 / 150, 32, 1, "32MiB", (1, 2, 4), 3, (13, 26, 51, 102), 3, (10, 20, 40, 80), (0.25, 0.5, 1.0, 2.0),
             4, 10)  # fmt: skip
QUICK = Sizes(13, 1 / 100, 16, 1, "8MiB", (1, 2, 4), 1, (4, 6, 9, 13), 3, (3, 6, 12), (0.25, 0.5, 1.0), 3, 6)


SAMPLE_SECONDS = pathlib.Path(__file__).with_name("fleurs_sample_seconds.json")  # the same, where the clips are not


def sample_seconds() -> np.ndarray:
    """Durations of the FLEURS sample clips (seconds); on a machine without them (a lent device), the durations
    recorded from them in ``fleurs_sample_seconds.json``."""
    import soundfile as sf

    clips = sorted(SAMPLE.glob("*.ogg")) + sorted(SAMPLE.glob("*.wav"))
    if not clips and SAMPLE_SECONDS.exists():
        return np.array(json.loads(SAMPLE_SECONDS.read_text()))
    if not clips:
        sys.exit(f"no FLEURS clips in {SAMPLE}: set BABELGRID_FLEURS_SAMPLE to a folder of them")
    return np.array([sf.info(str(clip)).duration for clip in clips])


def grid(langs: int, utterances: int | None, scale: float, frame_scale: float, seed: int = 0) -> dict:
    """Language -> i32[utterance] frames: FLEURS-like durations; ``utterances`` each, or FLEURS counts x ``scale``."""
    rng = np.random.default_rng(seed)
    seconds = sample_seconds()
    out = {}
    for i in range(langs):
        n = utterances or max(2, round(rng.integers(TEST_COUNTS[0], TEST_COUNTS[1] + 1) * scale))
        frames = np.round(rng.choice(seconds, n) * FRAMES_PER_SECOND * frame_scale)
        out[f"l{i:03d}"] = np.maximum(frames, 1).astype(np.int32)
    return out


def fit(xs, ys) -> float:
    """The exponent of ys ~ xs**k, least squares in logs."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def mib(x: float) -> str:
    return f"{x / 2**20:.0f} MiB"


def processes_table(bench: Bench) -> list[str]:
    s = bench.sizes
    lengths = grid(s.langs, None, s.scale, 1.0)
    store = bench.store("main", lengths)
    pairs = s.langs * (s.langs - 1) // 2 * s.layers
    results = bench.rounds({f"{n} processes": (store, n, "all") for n in s.processes})
    one = statistics.median(work(r) for r in results[f"{s.processes[0]} processes"])
    one_net = statistics.median(net(r) for r in results[f"{s.processes[0]} processes"])
    budget = parse_size(s.budget)
    baseline = bench.run(bench.store("baseline", grid(2, 2, 1.0, 1.0, seed=9)), 1)["processes"][0]["rss"]
    counts = [len(n) for n in lengths.values()]
    lines = [
        f"Main grid: {s.langs} languages of {min(counts)}-{max(counts)} utterances (FLEURS test's 350-650 x "
        f"{s.scale:.3g}), FLEURS sample lengths, d={s.d}, {s.layers} layer(s); {pairs} pair-layers; the job's default "
        f"measures; --memory_budget {s.budget} per process. Baseline RSS (the job on 2 languages x 2 utterances): "
        f"{mib(baseline)}; the memory goal is peak RSS <= budget + baseline + {mib(ALLOWANCE)} = "
        f"{mib(budget + baseline + ALLOWANCE)}.",
        "",
        "| processes | work s (median) | wall s | speed-up | kernels traced and compiled, s per process (count) | "
        "work less kernels s | its speed-up | idle share of the work, per process | units, pair-layers per process | "
        "peak RSS per process | peak held (job's count) | reads per language (mean, max) | ms per pair-layer |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for name, runs in results.items():
        run = median_run(runs)
        w = work(run)
        procs = run["processes"]
        idle = ", ".join(f"{(w - p['busy']) / w:.0%}" for p in procs)
        rss = ", ".join(mib(p["rss"]) for p in procs)
        held = ", ".join(mib(p["peak_held"]) for p in procs)
        reads = ", ".join(f"{p['reads']:.2f}/{p['reads_max']:.0f}" for p in procs)
        units = ", ".join(f"{p['units']}/{p['pair_layers']}" for p in procs)
        kernels = ", ".join(f"{p['compile']:.1f} ({p['compiles']})" for p in procs)
        rest = statistics.median(net(r) for r in runs)
        lines.append(
            f"| {name.split()[0]} | {statistics.median(work(r) for r in runs):.1f} | "
            f"{statistics.median(r['wall'] for r in runs):.1f} | {one / statistics.median(work(r) for r in runs):.2f} "
            f"| {kernels} | {rest:.1f} | {one_net / rest:.2f} | {idle} | {units} | {rss} | {held} | {reads} | "
            f"{1e3 * w / pairs:.1f} |"
        )
    speedup = {n: one / statistics.median(work(r) for r in results[f"{n} processes"]) for n in s.processes}
    speedup_net = {n: one_net / statistics.median(net(r) for r in results[f"{n} processes"]) for n in s.processes}
    worst_idle = max((work(r) - p["busy"]) / work(r) for runs in results.values() for r in runs for p in r["processes"])
    worst_rss = max(p["rss"] for runs in results.values() for r in runs for p in r["processes"])
    lines += [
        "",
        f"- 2 processes: **{speedup.get(2, float('nan')):.2f}x** one (goal >= 1.8x: "
        f"{'met' if speedup.get(2, 0) >= 1.8 else 'not met'}); 4 processes on the 2 cores: "
        f"{speedup.get(4, float('nan')):.2f}x. Less each process's kernel tracing and compiling (paid per process, "
        f"per shape it meets): 2 processes {speedup_net.get(2, float('nan')):.2f}x, 4 processes "
        f"{speedup_net.get(4, float('nan')):.2f}x.",
        f"- Most idle process in any run: {worst_idle:.0%} of the work time (goal <= 10%: "
        f"{'met' if worst_idle <= 0.10 else 'not met'}).",
        f"- Highest peak RSS: {mib(worst_rss)} against {mib(budget + baseline + ALLOWANCE)} "
        f"({'met' if worst_rss <= budget + baseline + ALLOWANCE else 'not met'}).",
    ]
    return lines


SHAPE_GRIDS = ((102, 1 / 150), (26, 1 / 30), (102, 1.0))  # the main grid, the processes table's larger one, FLEURS


def shapes_table(sizes: Sizes) -> list[str]:
    """How many executables the packed SeqSim kernel needs per grid: its pair shapes (bins, slots and chunks of both
    sides, ``kernels.seqsim_packed.pack_side`` at the CPU's bin size), counted from the packings; nothing is timed."""
    from kernels.seqsim_packed import CPU_BIN_FRAMES, pack_side

    lines = ["", "Packed SeqSim shapes per grid (counted, not timed; one compiled executable per pair shape):", "",
             "| languages | scale | utterances per language | side shapes | pair shapes | packed frames / valid |",
             "| ---: | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for langs, scale in dict.fromkeys(((sizes.langs, sizes.scale), *SHAPE_GRIDS)):
        lengths = grid(langs, None, scale, 1.0)
        side, area = {}, 0
        for lang, n in lengths.items():
            packing = pack_side(n, int(n.max()), CPU_BIN_FRAMES)
            side[lang] = (packing.frame.shape[1], *packing.chunks.shape[1:])
            area += packing.frame.size
        names = sorted(side)
        pairs = {(side[a], side[b]) for i, a in enumerate(names) for b in names[i:]}
        counts = [len(n) for n in lengths.values()]
        valid = sum(int(n.sum()) for n in lengths.values())
        lines.append(f"| {langs} | {scale:.3g} | {min(counts)}-{max(counts)} | {len(set(side.values()))} | "
                     f"{len(pairs)} | {area / valid:.2f} |")  # fmt: skip
    return lines


def sweeps(bench: Bench, which: list[str]) -> list[str]:
    s = bench.sizes
    lines = []
    configs, x, label = {}, {}, {}
    if "languages" in which:
        store = bench.store("languages", grid(max(s.lang_sweep), s.lang_sweep_utterances, 1.0, 1.0, seed=1))
        for n in s.lang_sweep:
            # The first n languages of one store.
            configs[f"{n} languages"] = (store, 1, ",".join(f"l{i:03d}" for i in range(n)))
            x[f"{n} languages"], label[f"{n} languages"] = n * (n - 1) // 2, "languages"
    if "utterances" in which:
        for u in s.utterance_sweep:
            store = bench.store(f"utterances{u}", grid(s.sweep_langs, u, 1.0, 1.0, seed=2))
            configs[f"{u} utterances"] = (store, 1, "all")
            x[f"{u} utterances"], label[f"{u} utterances"] = u, "utterances"
    if "frames" in which:
        for f in s.frame_sweep:
            store = bench.store(f"frames{f}", grid(s.sweep_langs, s.frame_sweep_utterances, 1.0, f, seed=3))
            configs[f"frames x{f}"] = (store, 1, "all")
            x[f"frames x{f}"], label[f"frames x{f}"] = f, "frames"
    if not configs:
        return lines
    results = bench.rounds(configs)
    goals = {"languages": ("pairs", 1.0, 0.1), "utterances": ("utterances per language", 2.0, 0.15),
             "frames": ("the frame scale", None, None)}  # fmt: skip
    budget = parse_size(s.budget)
    for kind, (against, goal, tol) in goals.items():
        names = [name for name in configs if label[name] == kind]
        if not names:
            continue
        times = [statistics.median(work(r) for r in results[name]) for name in names]
        nets = [statistics.median(net(r) for r in results[name]) for name in names]
        k, k_net = fit([x[name] for name in names], times), fit([x[name] for name in names], nets)

        def verdict(k, goal=goal, tol=tol):
            return "" if goal is None else f" (goal {goal} +- {tol}: {'met' if abs(k - goal) <= tol else 'not met'})"

        lines += ["", f"Sweep over {kind}: time against {against}, fitted exponent **{k:.2f}**{verdict(k)}; less the "
                  f"kernels' tracing and compiling, **{k_net:.2f}**{verdict(k_net)}.", "",
                  "| run | size | work s (median) | kernels traced and compiled, s (count) | work less kernels s | "
                  "peak RSS | peak held | reads per language (mean, max) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
        for name, t, t_net in zip(names, times, nets, strict=True):
            p = median_run(results[name])["processes"][0]
            lines.append(f"| {name} | {x[name]} | {t:.2f} | {p['compile']:.1f} ({p['compiles']}) | {t_net:.2f} | "
                         f"{mib(p['rss'])} | {mib(p['peak_held'])} | {p['reads']:.2f}, "
                         f"{p['reads_max']:.0f} |")  # fmt: skip
        if kind == "languages":
            rss = [median_run(results[name])["processes"][0]["rss"] for name in names]
            lines.append(f"\nPeak RSS over the language counts: {mib(min(rss))}-{mib(max(rss))} with a "
                         f"{mib(budget)} budget.")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small version (checks the program)")
    parser.add_argument("--sweeps", default="processes,shapes,languages,utterances,frames", help="which parts to run")
    for field in dataclasses.fields(Sizes):
        kind = {"float": float, "int": int, "str": str}.get(field.type, str)
        parser.add_argument(f"--{field.name}", type=kind, default=None, help=f"override ({field.type})")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the stores")
    parser.add_argument("--record", default="", help="write the results section into this file")
    parser.add_argument(
        "--jax_cache",
        default="",
        help="a persistent JAX compilation cache to use and keep (default: a fresh one, removed at the end); an "
        "earlier run's, on the same sizes, holds every kernel (the stores are seeded, so their shapes repeat)",
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an unmeasured run of each configuration first (--no-warmup: only with a filled --jax_cache)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    for field in dataclasses.fields(Sizes):
        value = getattr(args, field.name)
        if value is not None:
            if field.type.startswith("tuple"):
                value = tuple(type(getattr(sizes, field.name)[0])(v) for v in str(value).split(","))
            sizes = dataclasses.replace(sizes, **{field.name: value})
    which = [w.strip() for w in args.sweeps.split(",") if w.strip()]
    root = pathlib.Path(tempfile.mkdtemp(prefix="scale-", dir=args.scratch))
    load0, started, t0 = os.getloadavg(), datetime.datetime.now(datetime.UTC), time.perf_counter()
    try:
        bench = Bench(args, sizes, root)
        lines = processes_table(bench) if "processes" in which else []
        if "workers" in which:
            lengths = grid(sizes.langs, None, sizes.scale, 1.0)
            pairs = sizes.langs * (sizes.langs - 1) // 2 * sizes.layers
            lines += workers_table(bench, bench.store("main", lengths), pairs, WRAPPER, summary)
        lines += shapes_table(sizes) if "shapes" in which else []
        lines += sweeps(bench, which)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()
    head = [
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC; the whole program took "
        f"{(time.perf_counter() - t0) / 60:.1f} min. Load average (1, 5, 15 min) {load0[0]:.1f}, {load0[1]:.1f}, "
        f"{load0[2]:.1f} before, {load1[0]:.1f}, {load1[1]:.1f}, {load1[2]:.1f} after.",
        "",
        f"Command: `{' '.join(['python', 'bench/scale.py', *sys.argv[1:]])}`"
        + f"; sizes {json.dumps(dataclasses.asdict(sizes))}; medians of {sizes.rounds} interleaved round(s) "
        + (
            "after an unmeasured warm-up run of each configuration."
            if args.warmup
            else "with no warm-up run: every kernel came from the compilation cache of an earlier run (--jax_cache)."
        ),
        "",
    ]
    text = "\n".join(head + lines)
    print(text)
    if args.record:
        record(pathlib.Path(args.record), WORKERS_SECTION if which == ["workers"] else SECTION, text)


if __name__ == "__main__":
    main()
