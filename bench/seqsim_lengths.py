"""Benchmark: the seqsim job on grids of short, sentence-long and long utterances, against the machine's matmul.

    python bench/seqsim_lengths.py                       # 25-50, 100-200 and 400-500-frame grids, 5 rounds
    python bench/seqsim_lengths.py --store out/demo/store --rounds 3   # an encoded layer store (the demo's) instead

For each grid (a synthetic layer store of random states written through ``LayerStore`` as ``bench/grid.py`` writes
one; or ``--store``), in rounds that interleave every contender (a slow spell of the shared machine hits all alike):

- job: ``engine.pipelines.seqsim.run.run_similarity`` with ``--measure seqsim`` (or ``--measure``) into a fresh
  similarity store: store reads, writes, markers, claims and the lease included. Its rate is SeqSim's FLOPs on
  valid frames (``2 * sum(len_a) * sum(len_b) * d`` per pair and layer, as the job's summary counts them) over the
  seconds of its seqsim kernel calls (what the demo's "seqsim ... GFLOP/s" line reports) and over its wall time;
- packed and blocks: ``kernels.seqsim.seqsim_matrix`` with ``packed=True`` (the CPU default) and ``packed=False``
  (the block kernel, every utterance padded to the longest) on the same states, held in memory;
- matmul: 2048 x 2048 x 2048 float32 products (``jnp.dot``), the size this CPU multiplies fastest.

Ratios are each contender's median rate over the matmul's median rate of the same rounds. Each contender runs once
before the rounds (compilation); the job's warm-up is a whole run, so its rounds compile nothing either.
"""

from __future__ import annotations

import argparse
import datetime
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

from bench.common import machine  # noqa: E402

# name: (utterances per language, shortest, longest frames): ~6000 valid frames per language in each grid.
GRIDS = {"words": (160, 25, 50), "sentences": (40, 100, 200), "long": (13, 400, 500)}
MATMUL_SIDE = 2048


def grid_lengths(langs: int, utterances: int, low: int, high: int) -> dict[str, np.ndarray]:
    """i32[utterance] valid frames per language, uniform in [low, high], the first one ``high``."""
    rng = np.random.default_rng(0)
    out = {}
    for i in range(langs):
        n = rng.integers(low, high + 1, utterances).astype(np.int32)
        n[0] = high
        out[f"g{i:02d}"] = n
    return out


def write_store(url: str, lengths: dict[str, np.ndarray], d: int, n_layers: int) -> None:
    """A layer store of random float32 states with these lengths, written as the encode job writes one."""
    from bench.grid import write_random_store

    write_random_store(url, lengths, d, n_layers)


def contenders(store: str, measures: tuple[str, ...], scratch: pathlib.Path) -> tuple[dict, float]:
    """{name: fn() -> (seconds, seconds of SeqSim kernel)} for one layer store, and its SeqSim FLOPs per run."""
    import jax
    import jax.numpy as jnp

    from engine.dtypes import DTYPES
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure
    from engine.stores.pairs import resolve_pairs
    from engine.stores.reader import open_store
    from kernels.seqsim import seqsim_matrix

    reader = open_store(store)
    pairs = resolve_pairs("unordered", reader.languages())
    lengths = {lang: np.asarray(reader.lengths(lang)).astype(np.int32) for lang in reader.languages()}
    states = {}
    for layer in reader.info.layers:
        for lang, n in lengths.items():
            x, _ = reader.language_layer(lang, layer, utterances=np.arange(len(n)), dtype=DTYPES["float32"],
                                         frames=int(n.max()), zero_padding=False)  # fmt: skip
            states[layer, lang] = jnp.asarray(x)
    d = next(iter(states.values())).shape[-1]
    flops = len(reader.info.layers) * sum(2.0 * lengths[a].sum() * lengths[b].sum() * d for a, b in pairs)

    def job():
        out = scratch / "similarity"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        summary = run_similarity(configure(SimilarityConfig, store=store, out=str(out), measures=measures,
                                           progress=False))  # fmt: skip
        seconds = time.perf_counter() - t
        assert abs(summary.seqsim_flops - flops) <= 1e-6 * flops, (summary.seqsim_flops, flops)
        return seconds, summary.seqsim_seconds

    def kernel(packed: bool):
        def run():
            t = time.perf_counter()
            for layer in reader.info.layers:
                for a, b in pairs:
                    la, lb = lengths[a], lengths[b]
                    jax.block_until_ready(seqsim_matrix(states[layer, a], la, states[layer, b], lb, packed=packed))
            seconds = time.perf_counter() - t
            return seconds, seconds

        return run

    return {"job": job, "packed": kernel(True), "blocks": kernel(False)}, flops


def matmul_rate(repeats: int = 5) -> float:
    """FLOP/s of the median of ``repeats`` 2048^3 float32 products."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (MATMUL_SIDE, MATMUL_SIDE), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(x, x).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dot(x, x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * MATMUL_SIDE**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default=",".join(GRIDS), help=f"comma list of {', '.join(GRIDS)}")
    parser.add_argument("--store", default="", help="an encoded layer store to run instead of the synthetic grids")
    parser.add_argument("--langs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--measure", default="seqsim", help="the job's measures")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    args = parser.parse_args()
    load0, started = os.getloadavg(), datetime.datetime.now(datetime.UTC)
    root = pathlib.Path(tempfile.mkdtemp(prefix="seqsim-lengths-", dir=args.scratch))
    rows, loads = [], []
    try:
        grids = {"store": args.store} if args.store else {}
        for name in [] if args.store else args.grids.split(","):
            count, low, high = GRIDS[name]
            grids[f"{name} ({low}-{high} frames)"] = f"file://{root / name}"
            write_store(grids[f"{name} ({low}-{high} frames)"], grid_lengths(args.langs, count, low, high), args.d,
                        args.layers)  # fmt: skip
        for grid, store in grids.items():
            fns, flops = contenders(store, tuple(args.measure.split(",")), root)
            for fn in fns.values():
                fn()  # compilation
            times = {name: [] for name in (*fns, "matmul")}
            for r in range(args.rounds):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # job first in even rounds, last in odd ones
                times["matmul"].append(matmul_rate())
                for name in order:
                    times[name].append(fns[name]())
                loads.append(os.getloadavg()[0])
            mm = statistics.median(times["matmul"])
            rates = {name: flops / statistics.median(t[1] for t in times[name]) for name in fns}
            wall = flops / statistics.median(t[0] for t in times["job"])
            rows.append((grid, flops, mm, rates, wall))
            print(f"{grid}: {flops / 1e9:.0f} GFLOP, matmul {mm / 1e9:.0f} GFLOP/s; " + ", ".join(
                f"{k} {v / 1e9:.0f} GFLOP/s ({v / mm:.2f}x)" for k, v in rates.items()), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"\nMachine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 min) "
          f"{load0[0]:.1f}, {load0[1]:.1f}, {load0[2]:.1f} before, {load1[0]:.1f}, {load1[1]:.1f}, {load1[2]:.1f} "
          f"after; 1-min load after each round: {', '.join(f'{x:.1f}' for x in loads)}.")  # fmt: skip
    print(
        f"Command: `python bench/seqsim_lengths.py {' '.join(sys.argv[1:])}`: "
        + (
            "the store's languages and layers"
            if args.store
            else f"{args.langs} languages x {args.layers} layers, d={args.d}"
        )  # fmt: skip
        + f", float32, job measures {args.measure}; medians of {args.rounds} "
        "interleaved rounds. Rates on SeqSim's valid-frame FLOPs; ratios to the same rounds' 2048^3 matmul.\n"
    )
    print(
        "| grid | SeqSim GFLOP | 2048^3 matmul GFLOP/s | job (kernel calls) | job (wall) | packed kernel | "
        "block kernel | packed / blocks |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for grid, flops, mm, rates, wall in rows:
        cells = [f"{x / 1e9:.0f} GFLOP/s ({x / mm:.2f}x)" for x in (rates["job"], wall, rates["packed"],
                                                                     rates["blocks"])]  # fmt: skip
        print(f"| {grid} | {flops / 1e9:.0f} | {mm / 1e9:.0f} | {' | '.join(cells)} | "
              f"{rates['packed'] / rates['blocks']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
