"""Benchmark: seqsim's accelerator paths (XLA blocks, sorted blocks, packed, the fused Pallas kernel, 8-bit) against
the same run's bf16 matmul rate, on FLEURS-shaped lengths (issues 80 and 86).

    python bench/seqsim_pallas.py                       # on a GPU: d 1280, FLEURS-shaped lengths, bf16
    python bench/seqsim_pallas.py --sweep               # also every block size of SWEEP (the BLOCKS table's source)
    python bench/seqsim_pallas.py --sweep --paths pallas  # the kernel's candidates alone (bench/gpu.sh's first step)
    python bench/seqsim_pallas.py --smoke --sweep       # any machine (CPU: interpret mode), tiny shapes, ~1 min

Two languages of ``--utterances`` utterances with FLEURS-shaped lengths (``bench.scale.grid``: FLEURS sample
durations, 50 frames a second), random states of width ``--embed`` in ``--dtype``. Contenders, timed in interleaved
rounds after a warm-up call each (``bench.common.interleaved_times``), every result waited for:

- ``xla blocks``: ``kernels.seqsim.seqsim_matrix(packed=False)``, every utterance padded to the longest;
- ``xla sorted blocks of K``: each side sorted by length and cut into blocks of ``--sorted_block`` utterances, each
  block padded to its own longest (rounded up to 32 frames), ``seqsim_matrix(packed=False)`` per pair of blocks and
  the scores scattered back (the alternative issue 80 weighed against packing; bench-only, not a job path);
- ``xla packed``: ``seqsim_matrix(packed=True)``, valid frames packed into bins (the default on every platform);
- ``fp8 packed``: ``kernels.seqsim_fp8.seqsim_matrix_fp8`` (e4m3 frames, f32 accumulation) where the device has
  float8 (``has_fp8``), or emulated on CPU;
- ``pallas``: ``kernels.seqsim_pallas.seqsim_matrix_pallas`` with the ``BLOCKS`` entry of this device (or each
  ``--sweep`` candidate: one row per candidate);
- ``matmul``: repeated ``--side``-cube bf16 products accumulated in f32 (8192 on a device: the issue's ceiling).

A contender that fails to compile (a Triton tile past the device's shared memory, say) is named with its error and
left out; the others still run.

Rates count FLOPs on valid frames (``2 * sum(len_a) * sum(len_b) * d``, the issue's goal: at least 0.6 of the
8192-cube rate) and, for the XLA blocks and each Pallas tiling, also as computed: padded to the longest, or each
utterance in whole tiles and then tail tiles, counted as ``--plan`` counts them (``engine.pipelines.seqsim.computed``),
so that a row's "of the matmul, as computed" is the fraction the plan's device table takes and its "computed / valid"
the ratio the plan prints (issue 80: at most 1.15x). Each kernel's largest difference from the XLA blocks is printed
beside its time: on a device this checks the compiled kernel, which CPU tests cannot. Progress (each compile, then
the medians after every round) goes to stdout as it happens, so a run cut short by a time limit keeps what it had.
Nothing is written unless ``--write FILE`` is given (``bench/RESULTS.md``, section "seqsim pallas").
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import interleaved_times, load_average, machine, record  # noqa: E402
from bench.scale import grid  # noqa: E402
from bench.seqsim import tiled_matmul  # noqa: E402
from engine.pipelines.seqsim.computed import SideRows  # noqa: E402
from kernels import seqsim, seqsim_fp8, seqsim_pallas  # noqa: E402
from kernels.seqsim_pallas import PallasBlocks  # noqa: E402

# Candidates of the sweep on a GPU: (frames_a, frames_b, embed step, warps, stages, tails), Triton matmul tiles around
# the table's entry. The best row goes into kernels.seqsim_pallas.BLOCKS for this device kind. The H100's sweep of
# 2026-11-28 (bench/RESULTS.md) ran 64 x 64, 128 x 64, 128 x 128 x 32, 128 x 256, 256 x 128 and 128 x 128 x 128
# at 0.20-0.35 of the matmul against the table's 0.40: they gave way to the tail tiles, which cut the FLOPs computed
# on padding from 1.23x the valid ones to 1.05-1.16x on FLEURS-shaped lengths (bench/seqsim_padding.py).
SWEEP = [
    PallasBlocks(64, 128, 64, 4, 3),
    PallasBlocks(128, 128, 64, 4, 3),
    PallasBlocks(128, 128, 64, 8, 3),
    PallasBlocks(128, 128, 64, 8, 4),
    PallasBlocks(128, 128, 64, 8, 3, tail_a=64),
    PallasBlocks(128, 128, 64, 8, 3, tail_a=32),
    PallasBlocks(128, 128, 64, 8, 3, tail_a=16),  # 1.12x: rows' tails alone, the fast 128-column panel kept
    PallasBlocks(128, 128, 64, 8, 3, tail_a=64, tail_b=64),
    PallasBlocks(128, 128, 64, 8, 3, tail_a=32, tail_b=32),
]
PLAN_RATIO = 1.15  # issue 80: the plan's FLOPs as computed, at most this over the valid ones
SMOKE_SWEEP = [PallasBlocks(16, 16, 64), PallasBlocks(32, 32, 128, tail_a=16)]  # interpret mode on CPU: small tiles


def inputs(utterances: int, embed: int, dtype, frame_scale: float, seed: int = 0):
    """(A, len_A, B, len_B): two languages of FLEURS-shaped lengths, random states padded to each side's longest."""
    lengths = grid(2, utterances, 1.0, frame_scale, seed=seed)
    out = []
    for i, n in enumerate(lengths.values()):
        x = jax.random.normal(jax.random.key(seed + i), (len(n), int(n.max()), embed), jnp.float32)
        out += [x.astype(dtype), jnp.asarray(n)]
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=160, help="utterances per language")
    parser.add_argument("--embed", type=int, default=1280, help="d (large-v3: 1280)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--side", type=int, default=8192, help="cube side of the bf16 matmul baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sorted_block", type=int, default=32, help="utterances a block, sorted blocks")
    parser.add_argument("--sweep", action="store_true", help="also time every block size candidate (SWEEP)")
    parser.add_argument("--paths", default="all", choices=["all", "pallas"],
                        help="pallas: only the fused kernel's candidates, the XLA blocks (the reference of the "
                        "differences) and the matmul: a lease's first, shortest step")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check that the program runs (any machine)")
    parser.add_argument("--write", default="", help="results file to record the table in (default: print only)")
    args = parser.parse_args()
    if args.smoke:
        args.utterances, args.embed, args.side, args.rounds = 3, 384, 256, 2
    frame_scale = 0.05 if args.smoke else 1.0  # smoke: ~25 frames an utterance, still a few interpret tiles
    dtype = jnp.dtype(args.dtype)
    started = datetime.datetime.now().astimezone()
    device = jax.devices()[0]

    A, len_A, B, len_B = inputs(args.utterances, args.embed, dtype, frame_scale)
    valid = 2.0 * float(np.sum(len_A)) * float(np.sum(len_B)) * args.embed
    padded = 2.0 * A.shape[0] * A.shape[1] * B.shape[0] * B.shape[1] * args.embed
    matmul_flops, matmul = tiled_matmul(valid, jnp.bfloat16, side=args.side)

    table = seqsim_pallas.blocks_for(device)
    candidates = {f"pallas {_name(table)} (table)": table}
    if args.sweep:
        for blocks in SMOKE_SWEEP if args.smoke else SWEEP:
            candidates.setdefault(f"pallas {_name(blocks)}", blocks)

    def xla():
        return jax.block_until_ready(seqsim.seqsim_matrix(A, len_A, B, len_B, packed=False))

    def pallas(blocks):
        return lambda: jax.block_until_ready(seqsim_pallas.seqsim_matrix_pallas(A, len_A, B, len_B, blocks=blocks))

    contenders = {"xla blocks": xla}
    if args.paths == "all":
        contenders[f"xla sorted blocks of {args.sorted_block}"] = lambda: sorted_blocks(
            A, len_A, B, len_B, args.sorted_block
        )
        contenders["xla packed"] = lambda: jax.block_until_ready(seqsim.seqsim_matrix(A, len_A, B, len_B, packed=True))
        if seqsim_fp8.has_fp8(device) or device.platform == "cpu":
            contenders["fp8 packed"] = lambda: jax.block_until_ready(seqsim_fp8.seqsim_matrix_fp8(A, len_A, B, len_B))
    contenders["matmul"] = lambda: jax.block_until_ready(matmul())
    contenders |= {name: pallas(blocks) for name, blocks in candidates.items()}
    computed = {name: _pallas_flops(blocks, len_A, len_B, args.embed) for name, blocks in candidates.items()}
    computed["xla blocks"] = padded
    begun = time.perf_counter()
    want = np.asarray(xla())
    print(f"compiled xla blocks ({time.perf_counter() - begun:.1f} s)", flush=True)
    diffs, failed = {}, []
    for name in list(contenders):  # each compiled once before the rounds; a failure is reported, not fatal
        begun = time.perf_counter()
        if name in ("xla blocks", "matmul"):
            contenders[name]()
            continue
        try:
            diffs[name] = float(np.max(np.abs(np.asarray(contenders[name]()) - want)))
            print(f"compiled {name} ({time.perf_counter() - begun:.1f} s), max abs diff {diffs[name]:.1e}", flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. a Triton tile too large for this device: named, left out
            failed.append(f"- {name}: failed, left out ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            print(failed[-1], flush=True)
            del contenders[name]
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):  # the medians so far after each round: a step cut short by its limit keeps them
        for name, t in interleaved_times(contenders, 1, warm_up=False).items():
            rounds[name] += t
        times = {k: statistics.median(v) for k, v in rounds.items()}
        rate = matmul_flops / times["matmul"]
        print(f"after round {r + 1} of {args.rounds}: " + "; ".join(
            f"{k} {valid / t / rate:.3f}" for k, t in times.items() if k != "matmul"
        ) + " of the matmul on valid frames", flush=True)  # fmt: skip

    lines = [
        f"Device: {device.device_kind} ({device.platform}{', interpret mode' if device.platform == 'cpu' else ''}); "
        f"machine: {machine()}; date {started:%Y-%m-%d %H:%M %Z}; load {load_average()}; "
        f"command: `python bench/seqsim_pallas.py {' '.join(sys.argv[1:])}`.",
        f"{args.utterances} x {args.utterances} utterances, FLEURS-shaped lengths (longest {A.shape[1]} and "
        f"{B.shape[1]} frames), d {args.embed}, {args.dtype}; {valid / 1e12:.3g} TFLOP on valid frames, "
        f"{padded / 1e12:.3g} as the XLA blocks compute them ({padded / valid:.2f}x); medians of {args.rounds} "
        f"interleaved rounds. bf16 {args.side}-cube matmul: {rate / 1e12:.3g} TFLOP/s.",
        "",
        "| contender | s | TFLOP/s, valid frames | of the matmul rate | computed / valid | of the matmul, as computed "
        "| max abs diff from xla blocks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in times.items():
        if name == "matmul":
            continue
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        ratio, as_computed = ("-", "-") if name not in computed else (
            f"{computed[name] / valid:.3f}x", f"{computed[name] / t / rate:.3f}")  # fmt: skip
        lines.append(f"| {name} | {t:.4g} | {valid / t / 1e12:.3g} | {valid / t / rate:.3f} | {ratio} | {as_computed} "
                     f"| {diff} |")  # fmt: skip
    lines += ["", *failed]
    pallas_times = [(t, name) for name, t in times.items() if "pallas" in name]
    if pallas_times:
        best = min(pallas_times)
        packed = f", {times['xla packed'] / best[0]:.2f}x the packed kernel's" if "xla packed" in times else ""
        lines.append(
            f"- best Pallas ({best[1]}): {valid / best[0] / rate:.2f} of the {args.side}-cube bf16 rate on valid "
            f"frames (issue 80's goal on an H100/H200: >= 0.6), computing {computed[best[1]] / valid:.3f}x the valid "
            f"FLOPs (the plan's ratio; goal <= {PLAN_RATIO}x); {times['xla blocks'] / best[0]:.2f}x the XLA blocks' "
            f"speed{packed}."
        )
        within = [(t, name) for t, name in pallas_times if computed[name] <= PLAN_RATIO * valid]
        if within:  # what the BLOCKS entry and the device table would take to meet the plan's ratio
            t, name = min(within)
            lines.append(
                f"- fastest within the plan's {PLAN_RATIO}x ({name}): {valid / t / rate:.3f} of the matmul on valid "
                f"frames ({best[0] / t:.2f}x the best's speed), {computed[name] / t / rate:.3f} per FLOP computed "
                f"(the device table's Pallas fraction is this times the matmul's share of peak), "
                f"{computed[name] / valid:.3f}x computed / valid."
            )
        else:
            lines.append(f"- no Pallas tiling within the plan's {PLAN_RATIO}x computed / valid ran.")
    if device.platform == "cpu":
        lines.append("- CPU: interpret mode, a smoke run of the program, not a measurement of the kernel.")
    text = "\n".join(lines)
    print(text)
    if args.write:
        record(pathlib.Path(args.write), "seqsim pallas", text)
        print(f"wrote ## seqsim pallas in {args.write}")


def sorted_blocks(A, len_A, B, len_B, size: int) -> np.ndarray:
    """f32[N, M] scores: both sides sorted longest first, cut into blocks of ``size`` utterances, each block padded
    to its own longest (rounded up to 32 frames, to bound the compiled shapes), scored by the XLA blocks and
    scattered back to the inputs' order. Every block pair is dispatched before any result is read."""

    def cut(X, lengths):
        n = np.asarray(lengths)
        order = np.argsort(-n, kind="stable")
        out = []
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            frames = min(X.shape[1], -(-int(n[idx].max()) // 32) * 32)
            out.append((idx, X[jnp.asarray(idx), :frames], jnp.asarray(n[idx])))
        return out

    blocks_a, blocks_b = cut(A, len_A), cut(B, len_B)
    calls = [[seqsim.seqsim_matrix(a, la, b, lb, packed=False) for _, b, lb in blocks_b] for _, a, la in blocks_a]
    out = np.empty((A.shape[0], B.shape[0]), np.float32)
    for (ia, _, _), row in zip(blocks_a, calls, strict=True):
        for (ib, _, _), score in zip(blocks_b, row, strict=True):
            out[np.ix_(ia, ib)] = np.asarray(score)
    return out


def _pallas_flops(blocks: PallasBlocks, len_A, len_B, embed: int) -> float:
    """FLOPs the fused kernel computes with ``blocks`` (every utterance in whole tiles, then tail tiles): the plan's
    count (``engine.pipelines.seqsim.computed``), so that a lease's row gives the plan's fraction per FLOP computed."""
    rows_a = SideRows(np.asarray(len_A)).rows("pallas", 0, blocks.frames_a, blocks.rows_tail)
    rows_b = SideRows(np.asarray(len_B)).rows("pallas", 0, blocks.frames_b, blocks.cols_tail)
    return 2.0 * rows_a * rows_b * embed


def _name(b: PallasBlocks) -> str:
    gpu = f" w{b.num_warps} s{b.num_stages}" if b.num_warps else ""
    tails = f" tails {b.rows_tail}x{b.cols_tail}" if (b.tail_a or b.tail_b) else ""
    return f"{b.frames_a}x{b.frames_b}x{b.embed}{gpu}{tails}"


if __name__ == "__main__":
    main()
