"""Profile: where one ``ot_similarity_matrix`` call's time goes, on bench/ot.py's inputs, in one run.

Usage:  python bench/ot_profile.py [--store /tmp/demo/store --layer 7] [--calls 21]

Phases, each a median over ``--calls`` calls after two warm-ups (a short pause before each call, as after POT's
process in bench/ot.py's rounds): the packed product of valid frames (``_packed_cosines``: gather, unit rows, one
GEMM; waited for, so it is charged here and not to the rounds), the Sinkhorn rounds on every core (``on_cores``,
summed over rounds), and the host's share (the call less both). Also the jitted Sinkhorn calls and rounds per call,
and the load before and after. Not a comparison with a peer: bench/ot.py is that.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.ot import input_arguments, inputs  # noqa: E402 - also keeps POT's ``ot`` name free of this folder
from kernels import ot_matrix  # noqa: E402
from kernels.settings import OtConfig  # noqa: E402


def main() -> None:
    parser = input_arguments(argparse.ArgumentParser())
    parser.add_argument("--calls", type=int, default=21)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    (A, len_A, B, len_B), what = inputs(args)
    A, B = jax.device_put(A), jax.device_put(B)
    spent: dict[str, list[float]] = {}

    def timed(name, fn, wait):
        def run(*a, **k):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*a, **k)) if wait else fn(*a, **k)
            spent.setdefault(name, []).append(time.perf_counter() - start)
            return out

        return run

    # Instrumented through the module's globals; _round counts calls (its time is inside on_cores).
    ot_matrix._packed_cosines = timed("product", ot_matrix._packed_cosines, True)
    ot_matrix.on_cores = timed("rounds", ot_matrix.on_cores, True)  # on one worker too
    ot_matrix._round = timed("calls", ot_matrix._round, False)
    per_call = []
    for k in range(args.calls + 2):
        spent.clear()
        time.sleep(0.1)
        start = time.perf_counter()
        np.asarray(ot_matrix.ot_similarity_matrix(A, len_A, B, len_B, OtConfig()).score)
        total = time.perf_counter() - start
        if k >= 2:  # warm-ups: compilation
            product, rounds = sum(spent.get("product", [0.0])), sum(spent["rounds"])
            per_call.append(
                (total, product, rounds, total - product - rounds, len(spent["calls"]), len(spent["rounds"]))
            )
    med = [statistics.median(column) for column in zip(*per_call, strict=True)]
    print(f"inputs: {what}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"median of {args.calls} calls, each after a 0.1 s pause\n")
    print("| phase | ms |\n| --- | ---: |")
    print(f"| packed product (gather, unit rows, GEMM), waited for | {1e3 * med[1]:.1f} |")
    print(f"| Sinkhorn rounds on every core ({med[5]:.0f} rounds, {med[4]:.0f} jitted calls), waited for | "
          f"{1e3 * med[2]:.1f} |")  # fmt: skip
    print(f"| host (the rest: checks, packing indices, dispatch, results) | {1e3 * med[3]:.1f} |")
    print(f"| **call** | **{1e3 * med[0]:.1f}** |")


if __name__ == "__main__":
    main()
