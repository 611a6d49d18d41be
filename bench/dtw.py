"""Benchmark: batched DTW (path included) against a Python loop over openai-whisper's numba ``dtw_cpu``, in one run.

Usage:  python bench/dtw.py [--repeats 7] [--record bench/RESULTS.md]

Two workloads: 256 cost matrices of 50 x 550 (a batch of short utterances) and 16 of 448 x 1500 (whisper's largest
token x frame matrix). Contenders, each timed in its own block in the same process:

- babelgrid ``kernels.dtw.dtw_batch`` (wavefront, int8 trace, on-device backtrace, results fetched to host): as it
  runs by default, the batch split into one piece per core, each a jitted call from a thread pool, with the
  default ``float64`` accumulator (dtw_cpu's paths) and with ``float32``; and ``workers=1``, one call on one core;
- whisper ``dtw_cpu`` item by item, as ``find_alignment`` calls it, after a numba warm-up compile: with numba's
  default thread count, and with one numba thread (dtw_cpu is ``parallel=True`` but has no ``prange``; on a small
  machine one thread is its fastest setting).

All get float32 matrices already in memory (babelgrid's on its device). Times are medians over ``--repeats`` runs
after ``WARMUP_RUNS`` warm-up runs (a batch job calls its DTW thousands of times: the first call compiles, and the
next one or two ran 2-5x slower in babelgrid's new CPU worker threads, probably their first large buffers being
mapped; not investigated further); paths are checked equal to dtw_cpu's.

Needs openai-whisper and numba: ``pip install --no-deps openai-whisper && pip install numba tiktoken``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

import numpy as np

# numba starts its OpenMP workers when asked for its thread count; left at the default ACTIVE policy they spin on
# both cores between parallel regions (dtw_cpu has none) and slowed the XLA contender by 1.3-1.5x in this process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from bench.common import machine, record  # noqa: E402
from kernels.dtw import dtw_batch  # noqa: E402

WORKLOADS = [(256, 50, 550), (16, 448, 1500)]  # (batch, tokens, frames)
WARMUP_RUNS = 3  # per contender and round, untimed
PAUSE_S = 0.5  # between timing blocks, for the previous contender's idle threads to stop spinning
NOTES = (
    "What bounds it on CPU: XLA runs a lax.scan on one core, so the batch is split into one piece per core, each "
    "its own jitted call from a thread pool, reading its matrices in place from the batch's buffer (slicing the "
    "pieces, inside or outside the jit, cost ~2 ms a call). On one core a wavefront step updates a whole diagonal "
    "of every matrix at ~0.9 ns a cell (dtw_cpu: ~5 ns, one branchy cell at a time): ~0.5 ns for the bare "
    "dynamic-programming step, the rest the int8 trace (XLA recomputes the comparisons in the fusion that writes "
    "it) and the chunked gather of the cost diagonals; the backtrace, a scalar loop per matrix at ~13 ns a step, "
    "adds ~1 ms per 128 matrices of 50 x 550. float64 accumulation (needed for dtw_cpu's ties) costs 1.05-1.3x over "
    "float32 (the float32 rows). 512-bit vectors (an XLA:CPU compiler option, AVX-512 here) gained 10-15% in a "
    "one-off measurement. Two pieces run 1.3-1.7x (the workers=1 rows) "
    "faster than one call, not 2x, though two processes pinned one per core each run at full speed (where the rest "
    "goes was not found). Tried and dropped in "
    "one-off experiments (not kept in the repository): processing two diagonals per scan step to avoid carry copies"
    " (XLA recomputed the first diagonal inside the second: 2-3x slower), an optimisation barrier or codes computed"
    " first, the trace stored diagonal-major, batch-minor diagonals (no consistent gain), reading each diagonal by "
    "a strided slice of the flat matrix (the step's fusion no longer vectorises: 1.2-1.8x slower), lax.scan unroll "
    "of the backtrace, jax_num_cpu_devices=2 with shard_map (a similar gain to the thread pool, but a process-wide "
    "setting). Run-to-run spread on this shared VM is large: single rounds of the default kernel varied by up to "
    "1.5x."
)


def contenders(cost: np.ndarray, default_threads: int):
    """name -> zero-argument function running the whole batch, babelgrid's default first."""
    import numba
    from whisper.timing import dtw_cpu

    batch, tokens, frames = cost.shape
    n_tokens = np.full(batch, tokens, np.int32)
    n_frames = np.full(batch, frames, np.int32)
    on_device = jax.device_put(cost)

    def babelgrid(accumulator, workers=None):
        return lambda: jax.device_get(
            dtw_batch(on_device, n_tokens, n_frames, accumulator=accumulator, workers=workers)
        )

    def whisper(threads):
        def run():
            numba.set_num_threads(threads)
            return [dtw_cpu(cost[b]) for b in range(batch)]

        return run

    return {
        "babelgrid dtw_batch (float64, default)": babelgrid("float64"),
        'babelgrid dtw_batch (accumulator="float32")': babelgrid("float32"),
        "babelgrid dtw_batch (float64, workers=1: one core)": babelgrid("float64", workers=1),
        f"whisper dtw_cpu loop (numba, {default_threads} threads)": whisper(default_threads),
        "whisper dtw_cpu loop (numba, 1 thread)": whisper(1),
    }


def check_paths(got, want: list[np.ndarray]) -> None:
    for b, expected in enumerate(want):
        n = got.length[b]
        if not np.array_equal(np.stack([got.token_idx[b, :n], got.frame_idx[b, :n]]), expected):
            raise SystemExit(f"path of item {b} differs from dtw_cpu's")


def time_workload(cost: np.ndarray, repeats: int, default_threads: int) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds per contender, each timed in its own block after warm-up runs; then
    checks the paths. CPU time counts every thread of this process and none of the machine's other load.

    Blocks, not turns: numba's OpenMP workers spin for a while after a parallel region and would slow down
    whatever runs next on a small machine, so each block starts after a pause.
    """
    runs = contenders(cost, default_threads)
    medians, first = {}, {}
    for name, run in runs.items():
        first[name] = run()  # warm-up: compilation, allocator
        for _ in range(WARMUP_RUNS - 1):
            run()
        time.sleep(PAUSE_S)
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        medians[name] = statistics.median(wall), statistics.median(cpu)
    names = list(runs)
    check_paths(first[names[0]], first[next(n for n in names if n.startswith("whisper"))])
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="times every block runs; medians and ranges over them")
    parser.add_argument("--record", type=pathlib.Path, default=None, help="markdown file to write a ## dtw section to")
    args = parser.parse_args()

    import numba

    default_threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    rows, ratios = [], []
    for batch, tokens, frames in WORKLOADS:
        cost = rng.random((batch, tokens, frames), dtype=np.float32)
        rounds = [time_workload(cost, args.repeats, default_threads) for _ in range(args.rounds)]
        names = list(rounds[0])
        medians = {n: tuple(statistics.median(r[n][k] for r in rounds) for k in (0, 1)) for n in names}
        # Speed-up within each round (the contenders of one round share its machine state), then median and range.
        per_round = {n: [r[n][0] / r[names[0]][0] for r in rounds] for n in names}
        ours, ours_cpu = medians[names[0]]
        ratios.append([statistics.median(per_round[n]) for n in names if n.startswith("whisper")])
        for name, (seconds, cpu) in medians.items():
            cells = batch * tokens * frames
            lo, hi = min(per_round[name]), max(per_round[name])
            rows.append(
                f"| {batch} x {tokens} x {frames} | {name} | {seconds * 1e3:.1f} | {cells / seconds / 1e6:.0f} "
                f"| {statistics.median(per_round[name]):.1f}x ({lo:.1f}-{hi:.1f}) | {cpu * 1e3:.1f} "
                f"| {cpu / ours_cpu:.1f}x |"
            )
    load_after = os.getloadavg()[0]

    command = f"python bench/dtw.py --repeats {args.repeats} --rounds {args.rounds}" + (
        f" --record {args.record}" if args.record else ""
    )
    lines = [
        f"Machine: {machine()}",
        f"Date: {datetime.date.today().isoformat()}; 1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after (the machine may be shared)",
        f"Command: `{command}`",
        "",
        "| batch x tokens x frames | implementation | median ms | Mcells/s | babelgrid default faster by "
        "| median CPU ms | by CPU time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"{args.rounds} rounds; in each, every contender runs {args.repeats} times after {WARMUP_RUNS} warm-up runs in"
        " a block of its own. ms: median over rounds of each round's median; faster by: median (and range) over"
        " rounds of the ratio within a round. Paths checked equal to dtw_cpu's."
        " babelgrid: on CPU the batch is split into one piece per core, each one jitted call (forward wavefront,"
        " int8 trace, on-device backtrace) from a thread pool, results fetched to host; workers=1 is one call on one"
        " core. whisper: a Python loop over numba `dtw_cpu`, warm. Cells = batch x tokens x frames. CPU ms:"
        " process time, all threads of the benchmark and none of the machine's other load.",
        "",
        f"Goal >= 5x: against dtw_cpu as whisper runs it (numba's default threads) "
        f"{' / '.join(f'{r[0]:.1f}x' for r in ratios)}; against dtw_cpu on one numba thread, its fastest setting "
        f"here, {' / '.join(f'{r[1]:.1f}x' for r in ratios)} (the two workloads).",
        "",
        NOTES,
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "dtw", text)


if __name__ == "__main__":
    main()
