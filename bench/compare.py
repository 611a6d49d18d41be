"""Linear CKA kernels against their NumPy twin and against this machine's float32 matmul on the same FLOPs.

    python bench/compare.py                                  # prints the table
    python bench/compare.py --record bench/RESULTS.md        # and records it

FLOPs (multiply-add = 2): ``linear_cka`` on the feature route computes x^T y, x^T x and y^T y of centred, unit views:
``2 n (d1 d2 + d1^2 + d2^2)``; ``cka_matrix`` of L x L layers from Grams: ``2 n^2 d`` per Gram and ``2 L^2 n^2`` for the
matrix. The matmul baseline is one ``[d, n] @ [n, d]`` float32 product at HIGHEST precision (the kernels' setting),
timed in the same rounds; "rate ratio" = kernel GFLOP/s over matmul GFLOP/s (goal >= 0.7 at d >= 512). The NumPy twin
(``reference_linear_cka``, float64 Gram formulas with an explicit centring matrix, O(n^3)) runs at the smallest n only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.common import interleaved, machine, record  # noqa: E402
from kernels import cka  # noqa: E402


def views(n, d, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 16))
    x = z @ rng.standard_normal((16, d)) + rng.standard_normal((n, d))
    y = z @ rng.standard_normal((16, d)) + rng.standard_normal((n, d))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


_matmul = jax.jit(lambda a, b: jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST))


def measure(n: int, d: int, layers: int, repeats: int, twin: bool) -> list[str]:
    """Table rows of one shape: every contender timed in the same interleaved rounds."""
    x, y = views(n, d)
    contenders = {
        "matmul": lambda: jax.block_until_ready(_matmul(x, y)),
        "cka": lambda: jax.block_until_ready(cka.linear_cka(x, y)),
        "cka_unbiased": lambda: jax.block_until_ready(cka.linear_cka(x, y, unbiased=True)),
    }
    flops = {"matmul": 2 * n * d * d, "cka": 2 * n * 3 * d * d, "cka_unbiased": 2 * n * 3 * d * d}
    if n <= 2048:  # L Grams of n x n each: the job's route for sets up to GRAM_MAX

        def grams():
            return jnp.stack([cka.centred_gram(x) for _ in range(layers)])

        contenders[f"cka_matrix {layers}x{layers}"] = lambda: jax.block_until_ready(cka.cka_matrix(grams(), grams()))
        flops[f"cka_matrix {layers}x{layers}"] = 2 * (2 * layers * n * n * d) + 2 * layers**2 * n * n
    if twin:
        xn, yn = np.asarray(x), np.asarray(y)
        contenders["numpy twin"] = lambda: cka.reference_linear_cka(xn, yn)
    seconds = interleaved(contenders, repeats)
    rows = []
    for name, s in seconds.items():
        rate = f"{flops[name] / s / 1e9:.1f}" if name in flops else "-"
        ratio = f"{flops[name] / s / (flops['matmul'] / seconds['matmul']):.2f}" if name in flops else "-"
        vs = f"{seconds['numpy twin'] / s:.0f}x" if twin and name not in ("numpy twin", "matmul") else ""
        rows.append(f"| {n} x {d} | {name} | {s * 1e3:.1f} | {rate} | {ratio} | {vs} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="1024x512,4096x512,4096x1280", help="n x d (d1 = d2 = d)")
    parser.add_argument("--layers", type=int, default=8, help="L of the cka_matrix row (L x L layers)")
    parser.add_argument("--record", type=pathlib.Path)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for k, shape in enumerate(args.shapes.split(",")):
        n, d = (int(v) for v in shape.split("x"))
        rows += measure(n, d, args.layers, args.repeats, twin=k == 0)
    load_after = os.getloadavg()[0]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"Machine: {machine()}",
            f"Date: {when}; 1-minute load average {load_before:.1f} before, {load_after:.1f} after (a shared machine: "
            "other agents' jobs ran throughout, so absolute rates are low and noisy; the ratios are within a round)",
            f"Command: `python bench/compare.py --repeats {args.repeats}`",
            "",
            "| n x d | contender | median ms | GFLOP/s | rate ratio to matmul | faster than NumPy twin |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(text)
    if args.record:
        record(args.record, "compare: linear CKA kernels (bench/compare.py)", text)


if __name__ == "__main__":
    main()
