"""What seqsim's pooled baselines (the mean and centre measures) cost on the host in float64, against the XLA float32
pooling and product they replaced because those gave other bits for a block of a pair than for the whole pair.

Contenders, on one pair of 500 x 500 utterances of 100-600 frames at d=1280 (float32 states, as seqsim holds them):
- ``xla``: ``jax.vmap(mean_pool)`` of each side and ``cosine_matrix`` of the pooled vectors, jitted (the old path);
- ``host``: ``host_pools`` of each side and ``host_cosines`` (the seqsim job pools a held piece once, for every pair);
- ``host cosines``: ``host_cosines`` alone, the part paid per pair once the pieces are pooled;
- ``einsum``: the float64 product as ``np.einsum``, which needs no fixed tiles to give the same bits in any block.
Medians of interleaved rounds, the ratios to ``xla``, the machine and its load.

Usage: python bench/pooling.py [--rounds 5] [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import interleaved, load_average, machine, record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--utterances", type=int, default=500)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()

    import jax
    import numpy as np

    from kernels import pooling

    rng = np.random.default_rng(0)
    n, frames, embed = args.utterances, 600, 1280
    lengths = [rng.integers(100, frames + 1, n).astype(np.int32) for _ in range(2)]
    states = [rng.standard_normal((n, frames, embed)).astype(np.float32) for _ in range(2)]
    pools = jax.jit(jax.vmap(pooling.mean_pool))
    product = jax.jit(pooling.cosine_matrix)
    pooled = [pooling.host_pools(x, lengths[i]) for i, x in enumerate(states)]
    contenders = {
        "xla": lambda: np.asarray(product(pools(states[0], lengths[0]), pools(states[1], lengths[1]))),
        "host": lambda: pooling.mean_pooled_cosine_matrix(states[0], lengths[0], states[1], lengths[1]),
        "host cosines": lambda: pooling.host_cosines(*pooled),
        "einsum": lambda: np.einsum("ik,jk->ij", *pooled).astype(np.float32),
    }
    median = interleaved(contenders, args.rounds)
    lines = [
        f"{machine()}, load {load_average()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"`python bench/pooling.py --rounds {args.rounds}`: one pair of {n} x {n} utterances of 100-{frames} frames, "
        f"d={embed}, float32 states; medians of {args.rounds} interleaved rounds.",
        "",
        "| contender | s | xla / it |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {seconds:.3f} | {median['xla'] / seconds:.2f}x |" for name, seconds in median.items()]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "pooled baselines on the host (bench/pooling.py)", text)


if __name__ == "__main__":
    main()
