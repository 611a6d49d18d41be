"""SeqSim's FLOPs as its path computes them (``--plan``'s "as computed"), from the languages' lengths alone.

Per language pair and layer, ``2 * rows_a * rows_b * d`` where ``rows`` is the frames a path multiplies for one side
(padding included); valid frames alone give ``Cost.useful_flops``:

- ``blocks``: every utterance padded to the side's longest, ``N * m`` (``kernels.seqsim``);
- ``packed``: the side's bins, ``bins * bin_frames`` (``kernels.seqsim_packed.pack_side`` with the platform's bins);
- ``fp8``: the same bins (``kernels.seqsim_fp8`` packs as ``packed`` does), each product in e4m3;
- ``pallas``: each utterance's valid frames in whole frame tiles ``t``, the rest rounded up to the tail tile ``r``
  (tiles wholly in padding are skipped): ``rows_i = floor(len_i / t) t + ceil((len_i mod t) / r) r`` per side, and
  the pair's products sum to ``(sum_i rows_i) (sum_j rows_j)`` (``kernels.seqsim_pallas``; ``r = t`` without tails).

The augmented mask columns (``d + 2``) are left out, as in ``Cost``.
"""

from __future__ import annotations

import numpy as np

from kernels.seqsim_packed import ACCELERATOR_BIN_FRAMES, CPU_BIN_FRAMES, pack_side
from kernels.seqsim_pallas import BLOCKS, DEFAULT_BLOCKS, MIN_TILE, PallasBlocks


def bin_frames(platform: str) -> int:
    """The most frames per packed bin on ``platform`` (``kernels.seqsim._bin_frames``'s choice)."""
    return CPU_BIN_FRAMES if platform == "cpu" else ACCELERATOR_BIN_FRAMES


def pallas_blocks(device_name: str) -> PallasBlocks:
    """The fused kernel's ``BLOCKS`` entry for a device named ``device_name`` (``"cpu"``: interpret mode's)."""
    if device_name == "cpu":
        return BLOCKS["cpu-interpret"]
    keys = [k for k in BLOCKS if device_name.startswith(k)]
    return BLOCKS[max(keys, key=len)] if keys else DEFAULT_BLOCKS


class SideRows:
    """The frames each path multiplies for one side of ``lengths`` (i32[N], valid frames >= 1), cached per
    argument: a plan asks for each language once per pair."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths, np.int64)
        self._rows: dict[tuple, int] = {}

    def rows(self, path: str, bins: int, tile: int, tail: int | None = None) -> int:
        """``path``'s frames: ``bins`` is the most frames per packed bin, ``tile`` the fused kernel's frame tile and
        ``tail`` its tail tile (None: ``tile``)."""
        key = (path, bins, tile, tail)
        if key not in self._rows:
            self._rows[key] = self._count(path, bins, tile, tail or tile)
        return self._rows[key]

    def _count(self, path: str, bins: int, tile: int, tail: int) -> int:
        if len(self.lengths) == 0:
            return 0
        if path == "blocks":
            return len(self.lengths) * int(self.lengths.max())
        if path in ("packed", "fp8"):
            return int(pack_side(self.lengths, int(self.lengths.max()), bins).frame.size)
        if path == "pallas":
            # kernels.seqsim_pallas._tiles: the table's tile, or the power of two above a shorter frame axis.
            t = max(MIN_TILE, min(tile, 1 << max(int(self.lengths.max()) - 1, 0).bit_length()))
            r = min(tail, t)
            whole = self.lengths // t
            return int(np.sum(whole * t + -(-(self.lengths - whole * t) // r) * r))
        raise ValueError(f"no SeqSim path {path!r}: blocks, packed, pallas or fp8")


def computed_flops(path: str, sides: dict[str, SideRows], pairs, d: int, *, platform: str, device_name: str) -> float:
    """FLOPs of one layer of ``pairs`` by ``path`` on ``platform`` (cpu | gpu | tpu) of a device named
    ``device_name`` (the fused kernel's tile table); ``sides``: each language's ``SideRows``."""
    bins, blocks = bin_frames(platform), pallas_blocks(device_name)
    a_rows, b_rows = (blocks.frames_a, blocks.rows_tail), (blocks.frames_b, blocks.cols_tail)
    return sum(2.0 * sides[a].rows(path, bins, *a_rows) * sides[b].rows(path, bins, *b_rows) * d
               for a, b in pairs)  # fmt: skip
