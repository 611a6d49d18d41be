"""Benchmark: the seqsim job end to end against its own kernel, on a synthetic grid of random states in a layer store.

    python bench/grid.py                     # the issue's grid: 20 languages x 400 utterances x 500 frames, d=512,
                                             # 8 layers (whisper-base's 0-7); ~6e16 FLOP, for accelerators
    python bench/grid.py --plan              # its counts, memory and time estimate (engine.runtime.plan); writes
    nothing
    python bench/grid.py --langs 4 --utterances 40 --rounds 3 --record bench/RESULTS.md    # what a 2-core CPU runs

The store is written through ``LayerStore`` as the encode job writes one (manifest, language index, utterance
tables, lengths markers; ``--dtype`` is the storage dtype, the encode job's default float32); valid lengths are
uniform in [0.8, 1] x ``--frames`` with the first utterance of each language exactly ``--frames``. Two worker
processes then take turns, round by round (a slow spell of the shared machine hits both alike):

- job: ``engine.pipelines.seqsim.run.run_similarity``, the seqsim job's library entry (``jobs/seqsim.py`` only
  parses flags),
  into a fresh similarity store each round: store reads, the measures (``--measure``, the job's default list),
  similarity-store writes, done markers, work claims and the writer lease included;
- kernel: ``kernels.seqsim.seqsim_matrix``, the function the job calls, with the job's arguments (so the same
  block sizes) on the same states, read from the store into memory a layer at a time before its clock starts.

Both are warmed up once on one (layer, pair) first (compilation), and both count SeqSim's work as the job's summary
does, 2 * sum(len_a) * sum(len_b) * d per pair and layer, so their ratio of rates is the inverse ratio of times.
Peak memory: each worker's resident-set high-water mark (``ru_maxrss``), and the device's ``peak_bytes_in_use``
where the backend reports one (CPUs do not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, machine, record  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "seqsim job against its kernel on a synthetic grid (bench/grid.py)"
BASE_LAYERS = 6  # whisper-base's encoder blocks: stored layers 0 (stem) .. 7 (ln_post)


def grid_dims(d: int, n_layers: int):
    """Whisper-base's dimensions at width ``d``, with enough blocks for ``n_layers`` stored layers."""
    import dataclasses

    from engine.models.whisper.dims import preset

    return dataclasses.replace(
        preset("base"),
        n_audio_state=d,
        n_audio_head=8 if d % 8 == 0 else 1,
        n_audio_layer=max(BASE_LAYERS, n_layers - 2),
    )


def grid_lengths(langs: int, utterances: int, frames: int) -> dict[str, np.ndarray]:
    """i32[utterance] valid frames per language ``g00``, ``g01``, ...: uniform in [0.8, 1] x frames, the first one
    exactly ``frames`` (so every language pads to the same length, as the issue's fixed 500 frames do)."""
    rng = np.random.default_rng(0)
    out = {}
    for i in range(langs):
        n = rng.integers(int(0.8 * frames), frames + 1, utterances).astype(np.int32)
        n[0] = frames
        out[f"g{i:02d}"] = n
    return out


def write_store(url: str, args) -> float:
    """Writes the synthetic grid through ``LayerStore``; returns its seconds."""
    t0 = time.perf_counter()
    write_random_store(url, grid_lengths(args.langs, args.utterances, args.frames), args.d, args.layers, args.dtype)
    return time.perf_counter() - t0


def write_random_store(url: str, lengths: dict, d: int, n_layers: int, dtype: str = "float32") -> None:
    """A layer store of random states with these lengths (language -> frames per utterance), stored as ``dtype``,
    written through ``LayerStore`` as the encode job writes one."""
    from engine.stores.layers import LayerStore
    from engine.stores.schema import StoreInfo
    from engine.stores.utterances import UtteranceRow

    layers = tuple(range(n_layers))
    info = StoreInfo("synthetic-base (random states)", "0" * 64, grid_dims(d, n_layers), layers, dtype)
    store = LayerStore.create_or_open(url, info)
    rng = np.random.default_rng(1)
    for lang, lens in lengths.items():
        rows = [
            UtteranceRow(id=f"{lang}-{u:04d}", lang=lang, path=f"synthetic/{lang}/{u:04d}.wav", transcription=None,
                         duration_s=float(n) / info.frame_rate, n_frames=int(n), n_windows=1)
            for u, n in enumerate(lens)
        ]  # fmt: skip
        with store.language(lang, rows) as arrays:
            for u, n in enumerate(lens):
                arrays.write_utterance(u, rng.standard_normal((n_layers, int(n), d), dtype=np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Workers (run as ``bench/grid.py --worker job|kernel``): answer "warm" and "run" on stdin with "@@<json>".


def _memory() -> dict:
    import jax

    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
        stats = None
    return {
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak": (stats or {}).get("peak_bytes_in_use"),
    }


def _job_worker(args) -> None:
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure
    from engine.stores.pairs import resolve_pairs
    from engine.stores.reader import open_store

    reader = open_store(args.store)
    first_pair = ":".join(resolve_pairs("unordered", reader.languages())[0])
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="grid-sim-", dir=args.scratch))
    measures = tuple(args.measure.split(","))
    base = dict(store=args.store, measures=measures, dtype=args.compute_dtype, progress=False)

    def run(name: str) -> dict:
        out = scratch / name
        shutil.rmtree(out, ignore_errors=True)
        extra = dict(layers=(reader.info.layers[0],), pairs=first_pair) if name == "warm" else {}
        t0 = time.perf_counter()
        summary = run_similarity(configure(SimilarityConfig, out=str(out), **base, **extra))
        seconds = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return {
            "seconds": seconds,
            "kernel_seconds": summary.seqsim_seconds,
            "flops": summary.seqsim_flops,
            "units": summary.pair_layers,
            **_memory(),
        }

    _serve(run, {"imports": _memory()})


def _kernel_worker(args) -> None:
    import jax
    import jax.numpy as jnp

    from engine.dtypes import DTYPES
    from engine.pipelines.seqsim.measures import SEQSIM_MEASURES
    from engine.stores.pairs import resolve_pairs
    from engine.stores.reader import open_store
    from kernels.seqsim import choose_blocks, default_memory_budget, seqsim_matrix

    reader = open_store(args.store)
    langs = reader.languages()
    pairs = resolve_pairs("unordered", langs)
    directional = any(m in SEQSIM_MEASURES[1:] for m in args.measure.split(","))
    lengths = {lang: np.asarray(reader.lengths(lang)).astype(np.int32) for lang in langs}

    def load(lang: str, layer: int):
        # As engine.pipelines.seqsim.run._load reads a language: done utterances, frames up to the longest,
        # compute dtype.
        n = lengths[lang]
        states, _ = reader.language_layer(
            lang,
            layer,
            utterances=np.arange(len(n)),
            dtype=DTYPES[args.compute_dtype],
            frames=int(n.max()),
            zero_padding=False,
        )
        return jnp.asarray(states), n

    blocks = {}

    def run(name: str) -> dict:
        layers = reader.info.layers[:1] if name == "warm" else reader.info.layers
        todo = pairs[:1] if name == "warm" else pairs
        seconds = flops = 0.0
        for layer in layers:
            cache = {lang: load(lang, layer) for lang in sorted({x for p in todo for x in p})}
            for a, b in todo:
                (A, len_a), (B, len_b) = cache[a], cache[b]
                t = time.perf_counter()
                jax.block_until_ready(seqsim_matrix(A, len_a, B, len_b, directional=directional))
                seconds += time.perf_counter() - t
                flops += 2.0 * float(len_a.sum()) * float(len_b.sum()) * A.shape[-1]
                device = jax.devices()[0]
                blocks[A.shape[1]] = choose_blocks(
                    A.shape[0],
                    B.shape[0],
                    A.shape[1],
                    B.shape[1],
                    A.shape[2],
                    A.dtype,
                    default_memory_budget(device),
                    platform=device.platform,
                )
            del cache
        return {"seconds": seconds, "kernel_seconds": seconds, "flops": flops, "blocks": str(blocks), **_memory()}

    _serve(run, {"imports": _memory()})


def _serve(run, ready: dict) -> None:
    print("@@ready " + json.dumps(ready), flush=True)
    for line in sys.stdin:
        print("@@" + json.dumps(run(line.strip())), flush=True)


# ----------------------------------------------------------------------------------------------------------------


def gib(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def plan_text(args) -> str:
    """``engine.pipelines.seqsim.plan.plan_seqsim`` of the grid ``args`` describes, from its lengths alone."""
    from engine.pipelines.seqsim.plan import plan_seqsim
    from engine.runtime import devices as plan_lib
    from engine.stores.pairs import resolve_pairs

    lengths = grid_lengths(args.langs, args.utterances, args.frames)
    return plan_seqsim(
        lengths,
        resolve_pairs("unordered", list(lengths)),
        d=args.d,
        n_layers=args.layers,
        storage_dtype=args.dtype,
        dtype=args.compute_dtype,
        device=plan_lib.get_device(args.plan_device),
        store=f"synthetic grid: {args.langs} languages x {args.utterances} utterances x <= {args.frames} frames",
        measures=tuple(args.measure.split(",")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", type=int, default=20)
    parser.add_argument("--utterances", type=int, default=400, help="per language")
    parser.add_argument("--frames", type=int, default=500, help="longest valid length (lengths in [0.8, 1] x this)")
    parser.add_argument("--d", type=int, default=512, help="model width")
    parser.add_argument("--layers", type=int, default=8, help="stored layers 0..N-1 (whisper-base: 8)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="storage")
    parser.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"], help="job --dtype")
    parser.add_argument("--measure", default=None, help="job measures (default: the job's default list)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the layer and similarity stores")
    parser.add_argument("--plan", action="store_true", help="print engine.runtime.plan's plan of the grid, run nothing")
    parser.add_argument("--plan_device", default=None, help="with --plan: an accelerator to estimate, e.g. h100")
    parser.add_argument("--record", default="", help="write the results section into this file")
    parser.add_argument("--worker", choices=["job", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from engine.pipelines.seqsim.config import DEFAULT_MEASURES
    from engine.stores.similarity import check_measure

    args.measure = args.measure or ",".join(DEFAULT_MEASURES)
    for m in args.measure.split(","):
        check_measure(m)
    for name in ("langs", "utterances", "frames", "d", "layers", "rounds"):
        if getattr(args, name) < (2 if name == "langs" else 1):
            parser.error(f"--{name} must be at least {2 if name == 'langs' else 1}, got {getattr(args, name)}")
    if args.worker:
        (_job_worker if args.worker == "job" else _kernel_worker)(args)
        return
    if args.plan:
        print(plan_text(args).render())
        return

    itemsize = np.dtype(args.dtype).itemsize if args.dtype != "bfloat16" else 2
    size = args.langs * args.utterances * args.frames * args.d * args.layers * itemsize
    free = shutil.disk_usage(args.scratch).free
    if size > 0.5 * free:
        sys.exit(f"the store needs ~{size / 2**30:.1f} GiB, more than half of the {free / 2**30:.1f} GiB free in "
                 f"{args.scratch}: scale down (--langs, --utterances, --layers) or pass another --scratch")  # fmt: skip
    root = pathlib.Path(tempfile.mkdtemp(prefix="grid-", dir=args.scratch))
    store = f"file://{root / 'store'}"
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    try:
        write_s = write_store(store, args)
        print(f"store: {size / 2**30:.2f} GiB written in {write_s:.1f} s ({store})", flush=True)
        from engine.pipelines.seqsim.config import SimilarityConfig
        from engine.pipelines.seqsim.plan import plan_seqsim_run
        from engine.runtime.options import configure

        plan = plan_seqsim_run(
            configure(SimilarityConfig, store=store, out=str(root / "never"), measures=tuple(args.measure.split(","))),
            None,
        )
        print(plan.render(), flush=True)
        argv = [sys.executable, __file__, "--store", store, "--scratch", str(root), "--measure", args.measure]
        argv += ["--compute_dtype", args.compute_dtype]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        workers = {name: Worker([*argv, "--worker", name], env) for name in ("job", "kernel")}
        ready = {name: json.loads(w.info) for name, w in workers.items()}
        results = {name: [] for name in workers}
        loads = []
        try:
            for name, w in workers.items():
                results[name].append(json.loads(w.ask("warm")))
            for r in range(args.rounds):
                # Job first in even rounds, kernel first in odd ones: a load that drifts during a round then favours
                # neither side in the medians.
                for name, w in list(workers.items())[:: 1 if r % 2 == 0 else -1]:
                    results[name].append(json.loads(w.ask("run")))
                    print(f"round {r + 1} {name}: {results[name][-1]}", flush=True)
                loads.append(os.getloadavg()[0])
        finally:
            for w in workers.values():
                w.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()
    text = report(args, size, write_s, plan, ready, results, loads, load0, load1, started)
    print(text)
    if args.record:
        record(pathlib.Path(args.record), SECTION, text)


def report(args, size, write_s, plan, ready, results, loads, load0, load1, started) -> str:
    warm = {name: r[0] for name, r in results.items()}
    rounds = {name: r[1:] for name, r in results.items()}
    flops = rounds["job"][0]["flops"]
    assert all(abs(x["flops"] - flops) < 1e-6 * flops for r in rounds.values() for x in r), "unequal work"
    med = {name: statistics.median(x["seconds"] for x in r) for name, r in rounds.items()}
    job_kernel = statistics.median(x["kernel_seconds"] for x in rounds["job"])
    rate = {name: flops / s / 1e9 for name, s in med.items()}
    ratio = rate["job"] / rate["kernel"]
    per_round = [k["seconds"] / j["seconds"] for j, k in zip(rounds["job"], rounds["kernel"], strict=True)]
    paired = statistics.median(per_round)
    full = argparse.Namespace(**{**vars(args), "langs": 20, "utterances": 400, "frames": 500, "d": 512, "layers": 8})
    full_lengths = grid_lengths(full.langs, full.utterances, full.frames)
    names = sorted(full_lengths)
    full_flops = (
        sum(
            2.0 * full_lengths[a].sum() * full_lengths[b].sum() * full.d
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        )
        * full.layers
    )
    pairs = args.langs * (args.langs - 1) // 2
    lines = [
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Shared with other engineers' jobs: load average "
        f"(1, 5, 15 min) {load0[0]:.1f}, {load0[1]:.1f}, {load0[2]:.1f} before, {load1[0]:.1f}, {load1[1]:.1f}, "
        f"{load1[2]:.1f} after; 1-min load after each round: {', '.join(f'{x:.1f}' for x in loads)}.",
        "",
        f"Command: `python bench/grid.py --langs {args.langs} --utterances {args.utterances} --frames {args.frames} "
        f"--d {args.d} --layers {args.layers} --dtype {args.dtype} --compute_dtype {args.compute_dtype} "
        f"--measure {args.measure} --rounds {args.rounds}`: {args.langs} languages x {args.utterances} utterances x "
        f"<= {args.frames} frames (valid lengths uniform in [{int(0.8 * args.frames)}, {args.frames}]), d={args.d}, "
        f"{args.layers} layers, stored {args.dtype} ({size / 2**30:.2f} GiB written through LayerStore in "
        f"{write_s:.0f} s), compared in {args.compute_dtype}; {pairs} pairs x {args.layers} layers = "
        f"{pairs * args.layers} (layer, pair) units, {flops / 1e12:.2f} TFLOP of SeqSim per round. Medians of "
        f"{args.rounds} interleaved rounds (job first in odd rounds, kernel first in even ones) after one warm-up "
        "(compilation) on one unit.",
        "",
        "| contender | median s | SeqSim GFLOP/s | ratio to kernel | per round (kernel s / job s) | peak RSS | device "
        "peak |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        f"| seqsim job (run_similarity, measures {args.measure}) | {med['job']:.1f} | {rate['job']:.0f} | "
        f"{ratio:.2f} | {', '.join(f'{x:.2f}' for x in per_round)} | {gib(rounds['job'][-1]['maxrss'])} | "
        f"{gib(rounds['job'][-1]['device_peak'])} |",
        f"| kernel only (seqsim_matrix, states in memory) | {med['kernel']:.1f} | {rate['kernel']:.0f} | 1.00 | | "
        f"{gib(rounds['kernel'][-1]['maxrss'])} | {gib(rounds['kernel'][-1]['device_peak'])} |",
        "",
        f"- The job reaches **{paired:.2f}x** the kernel-only rate, median over rounds of the same round's ratio "
        f"({'meets' if paired >= 0.8 else 'misses'} 0.8x); {ratio:.2f}x as the ratio of the two medians. Inside the "
        f"job, the kernel calls took {job_kernel:.1f} s of its {med['job']:.1f} s (medians; "
        f"{job_kernel / med['job']:.1%}): the other {med['job'] - job_kernel:.1f} s went to reading the store, the "
        f"other measures ({args.measure}), writing the similarity store, markers, claims and the lease. Over the "
        f"rounds the job took {min(x['seconds'] for x in rounds['job']):.0f}-"
        f"{max(x['seconds'] for x in rounds['job']):.0f} s and the kernel "
        f"{min(x['seconds'] for x in rounds['kernel']):.0f}-{max(x['seconds'] for x in rounds['kernel']):.0f} s.",
        f"- Peak resident memory of the job's process: {gib(rounds['job'][-1]['maxrss'])} (after imports: "
        f"{gib(ready['job']['imports']['maxrss'])}); the plan's estimate of the peak (one layer of every language in "
        f"memory plus a block's working set and the matrices): {gib(plan.peak_memory)}. Device peak: "
        f"{gib(rounds['job'][-1]['device_peak'])} (the CPU backend reports none).",
        f"- Kernel blocks (utterances, by padded frames): {rounds['kernel'][-1]['blocks']}. Warm-up (one unit, "
        f"compilation included): job {warm['job']['seconds']:.1f} s, kernel {warm['kernel']['seconds']:.1f} s.",
        f"- `--plan` for this grid, calibrated just before the rounds, estimated {plan.seconds_here:.0f} s for the "
        f"job; the job's median was {med['job']:.0f} s ({med['job'] / max(plan.seconds_here, 1e-9):.2f}x).",
        f"- The issue's grid (20 x 400 x <= 500 frames, d=512, 8 layers, {full_flops / 1e15:.1f} PFLOP of SeqSim on "
        f"valid frames) would take {full_flops / (rate['job'] * 1e9) / 3600:.0f} h at the job's rate measured here; "
        "`python bench/grid.py --plan` prints its plan (memory, blocks, time here and with --plan_device).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
