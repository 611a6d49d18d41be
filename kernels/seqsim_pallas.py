"""All-pairs SeqSim as one fused Pallas kernel: the frame-similarity tiles never leave the chip.

Same definition, conventions and result as ``kernels.seqsim.seqsim_matrix`` (its module docstring): for every pair
of an utterance of A and one of B, ``a_to_b`` is the mean over A's valid frames of their best cosine in B,
``b_to_a`` the converse, ``score`` their mean. The XLA block path multiplies ``[Ba*m, d] @ [d, Bb*n]``, writes
those similarities to HBM and reads them back for the max reductions; here each grid program owns one pair and:

1. walks A's valid frames in tiles of ``frames_a`` (a loop bounded by ``len_a // frames_a``), then the rest in
   tail tiles of ``tail_a`` (``cdiv`` of what is left; ``tail_a == frames_a``: one padded tile) and, inside, B's
   valid frames likewise in ``frames_b`` and ``tail_b``: tiles wholly in padding are never computed, and a tail
   pads an utterance to a multiple of ``tail_a`` frames rather than of ``frames_a``;
2. multiplies one ``[frames_a, embed] @ [embed, frames_b]`` tile (or a tail's) on-chip, ``embed`` columns at a
   time (bf16 or f32 in, f32 accumulation; f32 at HIGHEST precision, as ``kernels.frames.matmul_f32``);
3. masks the tile where it may reach past the valid frames (padding rows and columns to -inf, from the lengths:
   each last tile, or with tails only the tail tiles, as whole tiles then lie inside both utterances), then folds it
   into both reductions in the same pass: each row's running max over B's tiles, and each column's running max over
   A's tiles (carried as ``f32[T, frames_b]``, T = B's tiles rounded up to a power of two, and
   ``f32[frames_b / tail_b, tail_b]`` for the tail tiles, updated by a select on the tile index because Triton has no
   dynamic update of a slice);
4. leaves only two f32 numbers per pair: the sum over A's valid frames of their row maxima and the sum over B's
   valid frames of their column maxima. The division by the lengths happens outside, as in the XLA path.

Before the kernel (XLA, O(N*m*d), once per call): frames are unit-normalised in float32 and rounded back to the input
dtype exactly as ``kernels.frames.normalize_frames`` does for the XLA path, padding is zeroed, frame axes are
padded to a multiple of the tiles and ``embed`` with zero columns to a multiple of the ``embed`` step (zeros change
no dot product: d = 384, 1280 work with a 128 or 256 step).

Block sizes come from one table, ``BLOCKS``, keyed by ``jax.Device.device_kind``. The H100's entry is the best of
``bench/seqsim_pallas.py --sweep`` on a lent H100 (``bench/RESULTS.md``, "GPU: NVIDIA H100 and H200, 2026-11-28":
0.40 of that run's 8192-cube bf16 rate on valid frames, 18.7x the padded XLA blocks, 3.0x the packed bins, within
1.5e-8 of the blocks); the H200 takes it unswept, the TPU entry is an untuned default. On CPU the kernel runs in
Pallas interpret mode (automatically): correct, and slow; it is for tests, never the CPU default (``kernels.seqsim``
keeps the packed and block paths).

Lowering: the body uses only what both Pallas GPU (Triton) and TPU (Mosaic) lower in principle (loads of
power-of-two tiles, ``fori_loop`` with dynamic bounds, 2-D dots, elementwise selects and reductions). Triton
compiled it on an H100 (its tests pass there: ``make test-gpu``); a tile's two f32 panels must fit the SM's shared
memory (227 KiB on Hopper: 128 x 16 x 512 did not). TPU's Mosaic lays out VMEM blocks in (8, 128) tiles and may
refuse the squeezed 0-d output blocks used here; nobody has compiled it for a TPU yet.

Glossary: ``tile`` a ``frames_a x frames_b`` block of one pair's frame similarities; ``step`` the ``embed``
columns one dot of the K loop takes; other axes as in ``kernels.seqsim``. The NumPy twin is
``kernels.seqsim.reference_seqsim_matrix``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.frames import normalize_frames
from kernels.seqsim_inputs import SeqSim, entering  # the XLA path's input checks and crop

MIN_TILE = 16  # smallest frame tile: Triton's dot needs M, N, K >= 16


@dataclasses.dataclass(frozen=True)
class PallasBlocks:
    """Tile sizes of one device kind: ``frames_a`` x ``frames_b`` frames per similarity tile, ``embed`` columns per
    K step (powers of two, >= 16); ``num_warps`` and ``num_stages`` are Triton's (GPU only, None elsewhere).
    ``tail_a`` / ``tail_b``: the smaller tiles an utterance's last, partial ``frames_a`` / ``frames_b`` frames are
    walked in (powers of two, >= 16, at most the tile; None: the tile itself, so the last tile is padded whole).
    Under 128-frame tiles, tails of 64 on both sides compute 1.10x the valid FLOPs on FLEURS-shaped lengths instead
    of 1.23x, 16-row tails alone 1.12x (``bench/seqsim_padding.py``, by ``engine.pipelines.seqsim.computed``)."""

    frames_a: int
    frames_b: int
    embed: int
    num_warps: int | None = None
    num_stages: int | None = None
    tail_a: int | None = None
    tail_b: int | None = None

    def __post_init__(self):
        for name in ("frames_a", "frames_b", "embed", "tail_a", "tail_b"):
            v = getattr(self, name)
            if v is not None and (v < MIN_TILE or v & (v - 1)):
                raise ValueError(f"PallasBlocks.{name} must be a power of two >= {MIN_TILE}, got {v}")
        for tail, tile in (("tail_a", "frames_a"), ("tail_b", "frames_b")):
            if getattr(self, tail) is not None and getattr(self, tail) > getattr(self, tile):
                raise ValueError(f"PallasBlocks.{tail} must be at most {tile} ({getattr(self, tile)}), got "
                                 f"{getattr(self, tail)}")  # fmt: skip

    @property
    def rows_tail(self) -> int:
        """A's tail tile: ``tail_a``, else ``frames_a``."""
        return self.tail_a or self.frames_a

    @property
    def cols_tail(self) -> int:
        """B's tail tile: ``tail_b``, else ``frames_b``."""
        return self.tail_b or self.frames_b


# The one table of block sizes, keyed by ``jax.Device.device_kind`` (a key also matches kinds it is a prefix of:
# "NVIDIA H100" matches "NVIDIA H100 80GB HBM3"). bench/seqsim_pallas.py --sweep chooses them on a lent device.
# The H100's entry is the best of its sweep (bench/RESULTS.md, "GPU: NVIDIA H100 and H200, 2026-11-28": 10 tilings
# at d 1280, 160 x 160 FLEURS-shaped utterances; 64 x 128 x 64 w4 s3 within 2%); the H200 has the same SM and
# shared memory and takes it unswept. The TPU entry is an UNTUNED DEFAULT.
BLOCKS: dict[str, PallasBlocks] = {
    # Interpret mode on CPU: small tiles and tails, so that the tests' short utterances cross both cheaply.
    "cpu-interpret": PallasBlocks(frames_a=32, frames_b=32, embed=128, tail_a=16, tail_b=16),
    # Swept: a 128 x 128 f32 accumulator over 8 warps, 64 bf16 columns a step, 3 pipelined stages.
    "NVIDIA H100": PallasBlocks(frames_a=128, frames_b=128, embed=64, num_warps=8, num_stages=3),
    "NVIDIA H200": PallasBlocks(frames_a=128, frames_b=128, embed=64, num_warps=8, num_stages=3),
    # Untuned, and the TPU lowering is unchecked (module docstring). device_kind of a v5e is "TPU v5 lite".
    "TPU v5 lite": PallasBlocks(frames_a=256, frames_b=256, embed=256),
}
DEFAULT_BLOCKS = PallasBlocks(frames_a=64, frames_b=64, embed=64, num_warps=4, num_stages=2)  # other kinds: untuned


# The device kinds the fused kernel was timed on, where it beat the XLA paths (H100, 2026-11-28: 18.7x the padded
# blocks and 3.0x the packed bins at d 1280 on FLEURS-shaped lengths, within 1.5e-8 of the blocks), and the H200, the
# same GH100 chip, whose run of that table did not finish in its lease step (so it is inferred there, not timed): the
# seqsim job's ``--seqsim_kernel auto`` takes it on both (``engine.pipelines.seqsim.measures.seqsim_path``).
FASTEST_ON = ("NVIDIA H100", "NVIDIA H200")


def fastest_on(device_kind: str) -> bool:
    """Whether a device of ``device_kind`` (``jax.Device.device_kind``, or a plan's device name) is one of
    ``FASTEST_ON``: measured fastest there (H100), or on the same chip (H200)."""
    return device_kind.startswith(FASTEST_ON)


def device_key(device: jax.Device | None = None) -> str:
    """The ``BLOCKS`` key of ``device`` (default: the first JAX device): ``"cpu-interpret"`` on CPU, else its
    ``device_kind``."""
    device = device or jax.devices()[0]
    return "cpu-interpret" if device.platform == "cpu" else device.device_kind


def blocks_for(device: jax.Device | None = None) -> PallasBlocks:
    """The table's block sizes for ``device``: its exact kind, else the longest key its kind starts with, else
    ``DEFAULT_BLOCKS``."""
    key = device_key(device)
    if key in BLOCKS:
        return BLOCKS[key]
    prefixes = [k for k in BLOCKS if key.startswith(k)]
    return BLOCKS[max(prefixes, key=len)] if prefixes else DEFAULT_BLOCKS


def _pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def _pair_kernel(len_a_ref, len_b_ref, a_ref, b_ref, a_sum_ref, b_sum_ref, *, tm: int, tn: int, ta: int, tb: int,
                 tk: int, col_tiles: int, tail_tiles: int, steps: int):  # fmt: skip
    """One pair: a_ref f32|bf16[m_pad, d_pad], b_ref [n_pad, d_pad] unit frames (zero padding); len_*_ref i32[];
    writes a_sum_ref f32[] (sum over A's valid frames of their best cosine in B) and b_sum_ref f32[] (converse).

    A's frames are walked in whole tiles of ``tm`` rows, then the rest in tail tiles of ``ta`` rows (``ta`` divides
    ``tm``); B's likewise in ``tn`` and ``tb`` columns, and each column panel (whole tiles, tail tiles) carries its own
    running column maxima. Without tails (``ta == tm``, ``tb == tn``) there is one loop and one panel, each last tile
    padded: the tiles, loops and reductions the H100 sweep timed."""
    len_a, len_b = len_a_ref[...], len_b_ref[...]
    precision = jax.lax.Precision.HIGHEST if a_ref.dtype == jnp.float32 else None

    def spans(length, whole: int, tail: int) -> tuple:
        """(frames per tile, first frame, tiles, whether a tile may reach past the valid frames) of each loop over
        one side's valid frames. With tails, the whole tiles lie inside the valid frames: their products need no
        mask, only the tail tiles' do."""
        if tail == whole:
            return ((whole, 0, pl.cdiv(length, whole), True),)
        full = length // whole
        return (whole, 0, full, False), (tail, full * whole, pl.cdiv(length - full * whole, tail), True)

    row_spans, panels = spans(len_a, tm, ta), spans(len_b, tn, tb)

    def tile(r0, rows: int, c0, cols: int):
        """f32[rows, cols] similarities of A's frames r0.. against B's frames c0.., accumulated over K steps."""

        def step(k, acc):
            k0 = pl.multiple_of(k * tk, tk)
            a = a_ref[pl.ds(r0, rows), pl.ds(k0, tk)]
            b = b_ref[pl.ds(c0, cols), pl.ds(k0, tk)]
            return acc + jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                                             preferred_element_type=jnp.float32)  # fmt: skip

        return jax.lax.fori_loop(0, steps, step, jnp.zeros((rows, cols), jnp.float32))

    def row_tile(r0, rows: int, rows_partial: bool, col_max: tuple):
        """A's rows r0.. against all of B: (the sum of their row maxima, both panels' column maxima updated)."""
        row_ok = r0 + jax.lax.broadcasted_iota(jnp.int32, (rows,), 0) < len_a
        row_max, updated = jnp.full((rows,), -jnp.inf, jnp.float32), []
        for (cols, first, count, cols_partial), panel_max in zip(panels, col_max, strict=True):
            slot = jax.lax.broadcasted_iota(jnp.int32, panel_max.shape, 0)

            def col_tile(j, inner, cols=cols, first=first, slot=slot, masked=rows_partial or cols_partial):
                row_max, panel_max = inner
                c0 = pl.multiple_of(first + j * cols, cols)
                # Both directions' maxima from the one masked tile; -inf never wins against a valid cosine. A whole
                # tile against a whole tile lies inside both utterances: nothing to mask.
                s = tile(r0, rows, c0, cols)
                if masked:
                    col_ok = c0 + jax.lax.broadcasted_iota(jnp.int32, (cols,), 0) < len_b
                    s = jnp.where(row_ok[:, None] & col_ok[None, :], s, -jnp.inf)
                row_max = jnp.maximum(row_max, jnp.max(s, axis=1))
                panel_max = jnp.where(slot == j, jnp.maximum(panel_max, jnp.max(s, axis=0)[None, :]), panel_max)
                return row_max, panel_max

            row_max, panel_max = jax.lax.fori_loop(0, count, col_tile, (row_max, panel_max))
            updated.append(panel_max)
        return jnp.sum(jnp.where(row_ok, row_max, 0.0)), tuple(updated)

    slots = (col_tiles, tail_tiles)[: len(panels)]
    col_max = tuple(jnp.full((n, span[0]), -jnp.inf, jnp.float32) for n, span in zip(slots, panels, strict=True))
    carry = (jnp.float32(0.0), col_max)
    for rows, first, count, rows_partial in row_spans:

        def row_loop(i, carry, rows=rows, first=first, rows_partial=rows_partial):
            total, col_max = carry
            got, col_max = row_tile(pl.multiple_of(first + i * rows, rows), rows, rows_partial, col_max)
            return total + got, col_max

        carry = jax.lax.fori_loop(0, count, row_loop, carry)
    a_total, col_max = carry
    b_total = jnp.float32(0.0)
    for (cols, first, count, _), panel_max in zip(panels, col_max, strict=True):
        slot = jax.lax.broadcasted_iota(jnp.int32, panel_max.shape, 0)
        column = first + slot * cols + jax.lax.broadcasted_iota(jnp.int32, panel_max.shape, 1)
        b_total += jnp.sum(jnp.where((slot < count) & (column < len_b), panel_max, 0.0))
    a_sum_ref[...] = a_total
    b_sum_ref[...] = b_total


def _tiles(frames: int, most: int) -> int:
    """Frame tile for an axis of ``frames``: the table's, or less for short axes (less padding), a power of two."""
    return max(MIN_TILE, min(most, _pow2(frames)))


def _prepare(x: jax.Array, lengths: jax.Array, frames: int, embed: int) -> jax.Array:
    """Unit frames with zero padding, padded to ``[utterance, frames, embed]`` with zeros (x's dtype)."""
    unit = jax.vmap(normalize_frames)(x, lengths)
    return jnp.pad(unit, ((0, 0), (0, frames - x.shape[1]), (0, embed - x.shape[2])))


@functools.partial(jax.jit, static_argnames=("blocks", "interpret", "platform", "directional"))
def _seqsim_pallas_jit(A, len_A, B, len_B, *, blocks: PallasBlocks, interpret: bool, platform: str, directional: bool):
    (n_a, m, d), (n_b, n, _) = A.shape, B.shape
    tm, tn = _tiles(m, blocks.frames_a), _tiles(n, blocks.frames_b)
    ta, tb = min(blocks.rows_tail, tm), min(blocks.cols_tail, tn)
    tk = min(blocks.embed, _pow2(max(d, MIN_TILE)))
    m_pad, n_pad, d_pad = pl.cdiv(m, tm) * tm, pl.cdiv(n, tn) * tn, pl.cdiv(d, tk) * tk  # tail tiles stay inside
    a, b = _prepare(A, len_A, m_pad, d_pad), _prepare(B, len_B, n_pad, d_pad)
    kernel = functools.partial(_pair_kernel, tm=tm, tn=tn, ta=ta, tb=tb, tk=tk, col_tiles=_pow2(n_pad // tn),
                               tail_tiles=_pow2(tn // tb), steps=d_pad // tk)  # fmt: skip
    params = None
    if not interpret and platform == "gpu":
        # Triton, named: without its params JAX 0.10 lowers a GPU pallas_call with Mosaic GPU, which would stage
        # whole utterances in shared memory (checked on CPU by lowering for "cuda": 5 MB asked, 227 KiB there).
        from jax.experimental.pallas import triton as pltriton

        params = pltriton.CompilerParams(num_warps=blocks.num_warps or 4, num_stages=blocks.num_stages or 2)
    sq = pl.squeezed
    pair = jax.ShapeDtypeStruct((n_a, n_b), jnp.float32)
    a_sum, b_sum = pl.pallas_call(
        kernel,
        grid=(n_a, n_b),
        in_specs=[
            pl.BlockSpec((sq,), lambda i, j: (i,)),
            pl.BlockSpec((sq,), lambda i, j: (j,)),
            pl.BlockSpec((sq, m_pad, d_pad), lambda i, j: (i, 0, 0)),
            pl.BlockSpec((sq, n_pad, d_pad), lambda i, j: (j, 0, 0)),
        ],
        out_specs=[pl.BlockSpec((sq, sq), lambda i, j: (i, j))] * 2,
        out_shape=[pair, pair],
        interpret=interpret,
        compiler_params=params,
        name="seqsim_pallas",
    )(len_A, len_B, a, b)
    a_to_b = a_sum / len_A[:, None].astype(jnp.float32)
    b_to_a = b_sum / len_B[None, :].astype(jnp.float32)
    score = 0.5 * (a_to_b + b_to_a)
    return SeqSim(score, a_to_b, b_to_a) if directional else score


def seqsim_matrix_pallas(
    A: jax.Array,
    len_A: jax.Array,
    B: jax.Array,
    len_B: jax.Array,
    *,
    directional: bool = False,
    blocks: PallasBlocks | None = None,
    interpret: bool | None = None,
) -> jax.Array | SeqSim:
    """SeqSim of every utterance of A against every utterance of B by the fused Pallas kernel.

    A: f32|bf16[N, m, embed], len_A: i32[N]; B: same dtype [M, n, embed], len_B: i32[M]; lengths in 1..frames.
    Returns f32[N, M] scores, or with ``directional=True`` a SeqSim of three f32[N, M]: the result of
    ``kernels.seqsim.seqsim_matrix`` (the XLA path), up to the order of float32 sums. Padding frames may hold
    anything, NaN and inf included. ``blocks``: tile sizes (default: ``blocks_for()``, the ``BLOCKS`` table);
    ``interpret``: Pallas interpret mode (default: on CPU only). Trailing frames beyond the longest utterance are
    cropped first when the lengths are concrete, as in the XLA path.
    """
    A, len_A, B, len_B = entering(A, len_A, B, len_B)
    device = jax.devices()[0]
    blocks = blocks_for(device) if blocks is None else blocks
    interpret = device.platform == "cpu" if interpret is None else interpret
    len_A, len_B = jax.device_put((len_A, len_B))
    return _seqsim_pallas_jit(
        A, len_A, B, len_B, blocks=blocks, interpret=interpret, platform=device.platform, directional=directional
    )
