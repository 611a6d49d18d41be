"""FLOPs each SeqSim path computes over the valid ones, on FLEURS-shaped lengths (all pairs of 102 languages).

    python bench/seqsim_padding.py [--langs 102]

No states: lengths only (``bench.scale.grid``, as ``bench/plan_fleurs.py``). The paths, per side of a pair:
``blocks`` pads every utterance to the language's longest (today's accelerator path before issue 80); ``sorted
blocks of G`` sorts a language by length and pads each block of G utterances to its longest, rounded up to 16 frames
(``FRAME_QUANTUM``), one compiled shape per pair of block lengths; ``packed`` is ``kernels.seqsim_packed.pack_side``
with the CPU's and the accelerators' bins; ``pallas`` rounds each utterance up to the H200's frame tile, or walks
its last partial tile in smaller tail tiles (A's rows x B's columns; ``kernels.seqsim_pallas``). The ratios
are what ``--plan`` prints as "as computed" over "on valid frames"; the compiled shapes column counts the distinct
shapes one layer of the whole grid compiles (sorted blocks: an upper bound, every pair of block lengths).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import grid  # noqa: E402
from engine.pipelines.seqsim.computed import SideRows, pallas_blocks  # noqa: E402
from kernels.seqsim_inputs import FRAME_QUANTUM  # noqa: E402
from kernels.seqsim_packed import ACCELERATOR_BIN_FRAMES, CPU_BIN_FRAMES, pack_side  # noqa: E402


def sorted_blocks(lengths: np.ndarray, size: int) -> list[int]:
    """Each block's padded length: the language sorted longest first, blocks of ``size``."""
    s = np.sort(lengths)[::-1]
    return [-(-int(s[i]) // FRAME_QUANTUM) * FRAME_QUANTUM for i in range(0, len(s), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", type=int, default=102)
    args = parser.parse_args()
    frames = {lang: n.astype(np.int64) for lang, n in grid(args.langs, None, 1.0, 1.0).items()}
    langs = list(frames)
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    total = {lang: float(n.sum()) for lang, n in frames.items()}
    valid = sum(total[a] * total[b] for a, b in pairs)
    rows: dict[str, tuple[dict[str, float], int]] = {}
    sides = {lang: SideRows(n) for lang, n in frames.items()}
    # blocks and pallas jit one shape per pair of (utterances, frames cropped to 16) sides.
    cropped = {lang: (len(n), -(-int(n.max()) // FRAME_QUANTUM) * FRAME_QUANTUM) for lang, n in frames.items()}
    per_pair = len({(cropped[a], cropped[b]) for a, b in pairs})
    rows["blocks (padded to the longest)"] = ({k: s.rows("blocks", 0, 0) for k, s in sides.items()}, per_pair)
    for size in (8, 32):
        blocks = {lang: sorted_blocks(n, size) for lang, n in frames.items()}
        lengths = sorted({length for b in blocks.values() for length in b})
        area = {lang: float(sum(size * length for length in b)) for lang, b in blocks.items()}
        rows[f"sorted blocks of {size}"] = (area, len(lengths) ** 2)
    for bins in (CPU_BIN_FRAMES, ACCELERATOR_BIN_FRAMES):
        packings = {lang: pack_side(n, int(n.max()), bins) for lang, n in frames.items()}
        side = {lang: {(p.frame.shape[1], *p.chunks.shape[1:])} for lang, p in packings.items()}
        shapes = len({(sa, sb) for a, b in pairs for sa in side[a] for sb in side[b]})
        rows[f"packed, bins of <= {bins}"] = ({k: float(p.frame.size) for k, p in packings.items()}, shapes)
    tile = pallas_blocks("NVIDIA H200").frames_a
    for tail_a, tail_b in ((tile, tile), (64, tile), (32, tile), (16, tile), (64, 64), (32, 32)):
        name = f"pallas, tiles of {tile}" + (f", tails of {tail_a} x {tail_b}" if tail_a < tile else "")
        area = {k: (s.rows("pallas", 0, tile, tail_a), s.rows("pallas", 0, tile, tail_b)) for k, s in sides.items()}
        rows[name] = (area, per_pair)
    print(f"{len(langs)} languages, {len(pairs)} pairs, {sum(map(len, frames.values()))} utterances, "
          f"{int(sum(total.values()))} frames (FLEURS-shaped lengths)")  # fmt: skip
    print("| path | computed / valid FLOPs | compiled shapes |\n| --- | ---: | ---: |")
    for name, (area, shapes) in rows.items():  # an area is one number a side, or (as side A, as side B)
        a_side = {k: v[0] if isinstance(v, tuple) else v for k, v in area.items()}
        b_side = {k: v[1] if isinstance(v, tuple) else v for k, v in area.items()}
        ratio = sum(a_side[a] * b_side[b] for a, b in pairs) / valid
        print(f"| {name} | {ratio:.3f}x | {shapes} |")


if __name__ == "__main__":
    main()
