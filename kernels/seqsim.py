"""SeqSim: frame-level similarity of two utterances at one encoder layer.

For utterances ``a`` (valid frames a_1..a_m) and ``b`` (valid frames b_1..b_n), with ``c_ij = cos(a_i, b_j)``::

    a_to_b = mean_i max_j c_ij        (every frame of a finds its best match in b)
    b_to_a = mean_j max_i c_ij        (every frame of b finds its best match in a)
    score  = (a_to_b + b_to_a) / 2

Glossary (axis names as in ``engine.axes``): ``frame`` is an encoder frame, ``embed`` the model width,
``utterance`` one utterance of one language; ``N``/``M`` count the utterances of the two languages and
``m``/``n`` their padded frame counts.

Conventions: those of ``kernels.frames`` (padding may hold anything, NaN and inf included; lengths ``>= 1``;
cosines divide by ``max(|x|, COS_EPS)``), checked where data enters. bfloat16 inputs are normalised in float32,
rounded back to bfloat16 for the matmul and accumulated in float32 (``preferred_element_type``).

Measurements: ``bench/RESULTS.md``, sections "seqsim" (rates against the machine's matmul and a NumPy loop) and
"seqsim block sizes (one-off sweep)".
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from engine import axes
from engine.errors import ShapeError
from kernels.frames import (
    COS_EPS,
    check_lengths,
    even_split,
    frame_mask,
    leading,
    matmul_f32,
    normalize_frames,
    traced,
)
from kernels.seqsim_inputs import SeqSim, entering, host_result
from kernels.seqsim_packed import (
    ACCELERATOR_BIN_FRAMES,
    CPU_BIN_FRAMES,
    PAD_SIMILARITY,
    PackedSide,
    Packing,
    pack_side,
    seqsim_matrix_packed,
    seqsim_packed_sides,
)
from kernels.seqsim_pallas import seqsim_matrix_pallas

CPU_BLOCK_BUDGET_BYTES = 256 * 2**20  # per-block working set on CPU: leaves room for the inputs in a few GiB
ACCELERATOR_BUDGET_FRACTION = 0.25  # share of free accelerator memory one block may use
# Similarities per block (see choose_blocks), from a sweep: bench/RESULTS.md, "seqsim block sizes (one-off sweep)".
CPU_TARGET_BLOCK_ELEMENTS = 2**20
ACCELERATOR_TARGET_BLOCK_ELEMENTS = 2**28  # 1 GiB of f32: few loop steps (not measured on a GPU yet)


# ----------------------------------------------------------------------------------------------------------------
# One pair.


def seqsim(a: jax.Array, b: jax.Array, len_a, len_b) -> SeqSim:
    """SeqSim of one pair of padded utterances.

    a: f32|bf16[frames_a, embed]; b: f32|bf16[frames_b, embed] (same dtype); len_a, len_b: i32[] valid frames, >= 1.
    Returns SeqSim of f32[] scalars. Padding frames may hold anything (see module docstring).
    """
    mask_a = frame_mask(a.shape[0], len_a)
    mask_b = frame_mask(b.shape[0], len_b)
    c = matmul_f32(normalize_frames(a, len_a), normalize_frames(b, len_b))  # f32[frames_a, frames_b]
    c = jnp.where(mask_a[:, None] & mask_b[None, :], c, -jnp.inf)
    a_to_b = jnp.sum(jnp.where(mask_a, jnp.max(c, axis=1), 0.0)) / len_a
    b_to_a = jnp.sum(jnp.where(mask_b, jnp.max(c, axis=0), 0.0)) / len_b
    return SeqSim(0.5 * (a_to_b + b_to_a), a_to_b, b_to_a)


# SeqSim of aligned pairs: a: [pair, frames_a, embed], b: [pair, frames_b, embed], lengths i32[pair].
seqsim_pairs = jax.jit(jax.vmap(seqsim))


# ----------------------------------------------------------------------------------------------------------------
# All pairs, by blocks.


def _augment(x: jax.Array, length: jax.Array, pad_a: bool) -> jax.Array:
    """Append two columns to normalised frames so that the block matmul itself masks the padding.

    x: [utterance, frame, embed] unit frames with zero padding; length: i32[utterance]. Frames of A get
    ``[1, p]`` and frames of B get ``[p, 1]`` with ``p = 0`` on valid frames and ``PAD_SIMILARITY`` on padding, so
    a valid-valid product is the cosine exactly (plus two exact zeros) and any product touching padding is at
    most ``PAD_SIMILARITY < -1``, below every cosine: plain max reductions then ignore padding.
    """
    penalty = jnp.where(frame_mask(x.shape[1], length[:, None]), 0.0, PAD_SIMILARITY).astype(x.dtype)[..., None]
    ones = jnp.ones_like(penalty)
    return jnp.concatenate([x, ones, penalty] if pad_a else [x, penalty, ones], axis=-1)


def _block_seqsim(a: jax.Array, len_a: jax.Array, b: jax.Array, len_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Directional SeqSim terms for a block of normalised, augmented utterances.

    a: f32|bf16[Ba, m, embed + 2], b: [Bb, n, embed + 2] from ``_augment``; len_a: i32[Ba], len_b: i32[Bb].
    Returns (a_to_b, b_to_a), each f32[Ba, Bb].

    This is ``vmap(vmap(seqsim))`` written as one (Ba*m) x embed @ embed x (Bb*n) matmul: the nested vmap would
    become Ba*Bb small matmuls. Masking padding with ``where`` on the [Ba, m, Bb, n] similarities would add selects
    over all of them (on XLA's CPU backend, in the one-off version tried, not fused into its reductions), so the
    padding is masked inside the matmul by ``_augment`` and only the small reduced arrays see a ``where``.
    """
    ba, m, k = a.shape
    bb, n, _ = b.shape
    c = matmul_f32(a.reshape(ba * m, k), b.reshape(bb * n, k)).reshape(ba, m, bb, n)
    best_in_b = jnp.max(c, axis=3)  # f32[Ba, m, Bb]; garbage on padding frames of a, dropped by the masked mean
    best_in_a = jnp.max(c, axis=1)  # f32[Ba, Bb, n]
    mask_a = frame_mask(m, len_a[:, None])  # bool[Ba, m]
    mask_b = frame_mask(n, len_b[:, None])  # bool[Bb, n]
    a_to_b = jnp.sum(jnp.where(mask_a[:, :, None], best_in_b, 0.0), axis=1) / len_a[:, None]
    b_to_a = jnp.sum(jnp.where(mask_b[None], best_in_a, 0.0), axis=2) / len_b[None, :]
    return a_to_b, b_to_a


def _pad_rows(x: jax.Array | np.ndarray, rows: int, fill=0) -> jax.Array | np.ndarray:
    """Pad axis 0 of x up to ``rows`` with ``fill``: host lengths on the host (until their ``device_put``), device
    states on the device, by a compiled pad whose fill is a constant of the program (an eager one copies it there)."""
    if rows == x.shape[0]:
        return x
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.full((rows - x.shape[0], *x.shape[1:]), fill, x.dtype)])
    return _pad_rows_jit(x, rows=rows, fill=fill)


@functools.partial(jax.jit, static_argnames=("rows", "fill"))
def _pad_rows_jit(x: jax.Array, *, rows: int, fill) -> jax.Array:
    return jnp.concatenate([x, jnp.full((rows - x.shape[0], *x.shape[1:]), fill, x.dtype)])


def _seqsim_blocks(A, len_A, B, len_B, block_a: int, block_b: int) -> tuple[jax.Array, jax.Array]:
    """(a_to_b, b_to_a), each f32[N, M], for every pair, iterating sequentially over blocks (traced code)."""
    n_a, m, _ = A.shape
    n_b, n, _ = B.shape
    A = _augment(jax.vmap(normalize_frames)(A, len_A), len_A, pad_a=True)
    B = _augment(jax.vmap(normalize_frames)(B, len_B), len_B, pad_a=False)
    rows_a = -(-n_a // block_a) * block_a
    rows_b = -(-n_b // block_b) * block_b
    # Padding utterances get length 1 (not 0) so that their scores, dropped below, are finite.
    A = _pad_rows(A, rows_a).reshape(rows_a // block_a, block_a, m, A.shape[-1])
    B = _pad_rows(B, rows_b).reshape(rows_b // block_b, block_b, n, B.shape[-1])
    len_A = _pad_rows(len_A, rows_a, 1).reshape(-1, block_a)
    len_B = _pad_rows(len_B, rows_b, 1).reshape(-1, block_b)

    def row_of_blocks(a_block):
        a, la = a_block
        return jax.lax.map(lambda b_block: _block_seqsim(a, la, *b_block), (B, len_B))

    # lax.map runs its body sequentially: only one block's similarity matrix is alive at a time.
    a_to_b, b_to_a = jax.lax.map(row_of_blocks, (A, len_A))  # each f32[A blocks, B blocks, Ba, Bb]

    def unblock(x):
        return x.transpose(0, 2, 1, 3).reshape(rows_a, rows_b)[:n_a, :n_b]

    return unblock(a_to_b), unblock(b_to_a)


@functools.partial(jax.jit, static_argnames=("block_a", "block_b", "directional"))
def _seqsim_matrix_jit(A, len_A, B, len_B, *, block_a: int, block_b: int, directional: bool):
    a_to_b, b_to_a = _seqsim_blocks(A, len_A, B, len_B, block_a, block_b)
    score = 0.5 * (a_to_b + b_to_a)
    return SeqSim(score, a_to_b, b_to_a) if directional else score


def default_memory_budget(device: jax.Device | None = None) -> int:
    """Bytes one block's working set may use on ``device`` (default: the first JAX device).

    Accelerators report free memory through ``memory_stats()``; a quarter of it is used. CPUs report nothing, and
    host memory is shared with everything else, so a fixed conservative budget is used there.
    """
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        stats = None
    if device.platform == "cpu" or not stats or "bytes_limit" not in stats:
        return CPU_BLOCK_BUDGET_BYTES
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return max(int(free * ACCELERATOR_BUDGET_FRACTION), 16 * 2**20)


def choose_blocks(
    n_a: int, n_b: int, m: int, n: int, d: int, dtype, memory_bytes: int, *, platform: str = "cpu"
) -> tuple[int, int]:
    """Block sizes (block_a, block_b) of utterances for ``seqsim_matrix``.

    n_a, n_b: utterances of A and B; m, n: their padded frames; d: embed; dtype: input dtype; memory_bytes: the budget
    for one block's working set, which is the f32 similarity block ``[Ba*m, Bb*n]`` counted twice (room for an XLA
    temporary of the same size) plus the block's inputs. Within the budget, blocks aim at
    ``CPU_TARGET_BLOCK_ELEMENTS`` similarities on CPU, where the max reductions after the matmul are memory-bound
    and should find the block in cache, and at ``ACCELERATOR_TARGET_BLOCK_ELEMENTS`` elsewhere, where fewer, larger
    matmuls win. Blocks are square in utterances when possible and split N and M evenly, to pad as little as possible.
    """
    itemsize = np.dtype(dtype).itemsize

    def working_set(ba, bb):
        return 2 * 4 * ba * m * bb * n + itemsize * (d + 2) * (ba * m + bb * n)

    target = CPU_TARGET_BLOCK_ELEMENTS if platform == "cpu" else ACCELERATOR_TARGET_BLOCK_ELEMENTS
    target = min(target, max(memory_bytes // 8, 1))
    side = max(1, math.isqrt(max(target // (m * n), 1)))
    ba = even_split(n_a, side)
    bb = even_split(n_b, max(1, target // (m * n * ba)))
    while working_set(ba, bb) > memory_bytes and (ba > 1 or bb > 1):
        if ba >= bb:
            ba = even_split(n_a, ba - 1)
        else:
            bb = even_split(n_b, bb - 1)
    return ba, bb


def seqsim_matrix(
    A: jax.Array,
    len_A: jax.Array,
    B: jax.Array,
    len_B: jax.Array,
    *,
    block_a: int | None = None,
    block_b: int | None = None,
    directional: bool = False,
    memory_bytes: int | None = None,
    packed: bool | None = None,
    pallas: bool = False,
) -> jax.Array | SeqSim:
    """SeqSim of every utterance of A against every utterance of B.

    A: f32|bf16[N, m, embed], len_A: i32[N]; B: same dtype [M, n, embed], len_B: i32[M]; lengths in 1..frames.
    Returns f32[N, M] scores, or with ``directional=True`` a SeqSim of three f32[N, M] (``a_to_b[i, j]`` averages
    over the frames of A[i]). Blocks of ``block_a x block_b`` utterances are computed one at a time; unset block
    sizes come from ``choose_blocks`` with ``memory_bytes`` (default ``default_memory_budget()``). Trailing frames
    beyond the longest utterance are cropped first, so FLOPs follow the longest valid length, not the padded one.

    ``packed``: score by ``kernels.seqsim_packed`` instead (valid frames only, packed into bins: no padding to the
    longest, one compiled shape for most grids); needs concrete lengths and ignores the block arguments. Default
    (None): packed, on every platform, when no block size is given and the lengths are concrete; blocks otherwise
    (``packs_by_default``).

    ``pallas``: score by the fused Pallas kernel instead (``kernels.seqsim_pallas``: the similarity tiles never go
    to HBM); opt-in only, never a default (not measured on a device yet; interpret mode on CPU, slow); ignores the
    block arguments, and ``packed=True`` with it is an error.
    """
    A, len_A, B, len_B = entering(A, len_A, B, len_B)
    if pallas:
        if packed:
            raise ValueError("seqsim_matrix: choose packed=True or pallas=True, not both")
        return seqsim_matrix_pallas(A, len_A, B, len_B, directional=directional)
    device = jax.devices()[0]
    if packed is None:
        packed = packs_by_default(device) and block_a is None and block_b is None and not traced(len_A, len_B)
    if packed:
        if traced(len_A, len_B):
            raise ValueError("seqsim_matrix(packed=True) packs by concrete lengths: call it outside jit")
        terms = seqsim_matrix_packed(A, len_A, B, len_B, bin_frames=_bin_frames(device))
        return jax.device_put(host_result(*terms, directional))  # this function's contract: device arrays
    block_a, block_b = _resolve_blocks(A.shape, B.shape, A.dtype, block_a, block_b, memory_bytes, device)
    len_A, len_B = jax.device_put((len_A, len_B))
    return _seqsim_matrix_jit(A, len_A, B, len_B, block_a=block_a, block_b=block_b, directional=directional)


def packs_by_default(device: jax.Device | None = None) -> bool:
    """Whether ``seqsim_matrix`` scores by packed bins on ``device`` (default: the first JAX device) when asked
    nothing else: on every platform. On accelerators the blocks padded every utterance of a language to its longest
    (12.7x the valid FLOPs on FLEURS-shaped lengths); bins of ``ACCELERATOR_BIN_FRAMES`` compute 1.03x, in a few
    compiled shapes (bins are multiples of ``BIN_QUANTUM`` frames), where blocks of length-sorted utterances padded
    within themselves compute 1.07x (blocks of 8, frames to a multiple of 16) in a shape per pair of block lengths
    (``bench/RESULTS.md``, "seqsim on accelerators: packed, not padded"). The device's rate of the packed kernel is
    not measured yet."""
    del device  # every platform packs; kept so that callers ask about the device they run on
    return True


def pack_states(x: jax.Array, lengths, packing: Packing | None = None) -> PackedSide:
    """One side, f32|bf16[N, frames, embed] with concrete lengths i32[N] in 1..frames, packed once for
    ``seqsim_matrix_of_packed`` (a job that scores each side against many packs it once, not once per pair);
    ``packing``: bins of a larger side's ``side_packing``, taken by ``kernels.seqsim_packed.restrict``."""
    x, lengths = jnp.asarray(x), np.asarray(lengths, np.int32)
    if x.ndim != 3:
        raise ShapeError(f"states must be [utterance, frame, embed], got shape {x.shape}")
    check_lengths("lengths", lengths, x.shape[0], x.shape[1], "utterance")
    return PackedSide(x, lengths, _bin_frames(jax.devices()[0]), packing)


def side_packing(lengths, frames: int) -> Packing:
    """The bins ``pack_states`` packs a side of these lengths (i32[N]) into, frames counted ``frames`` per utterance
    (its states' frame axis): from the lengths alone, before any state is read."""
    return pack_side(np.asarray(lengths, np.int32), frames, _bin_frames(jax.devices()[0]))


def seqsim_matrix_of_packed(A: PackedSide, B: PackedSide, *, directional: bool = False) -> np.ndarray | SeqSim:
    """``seqsim_matrix(..., packed=True)`` of two sides from ``pack_states``: the same results, on the host (where
    the packed path computes them: the seqsim job writes them from there, with no copy to the device and back)."""
    return host_result(*seqsim_packed_sides(A, B), directional)


def _bin_frames(device: jax.Device) -> int:
    return CPU_BIN_FRAMES if device.platform == "cpu" else ACCELERATOR_BIN_FRAMES


def _resolve_blocks(shape_a, shape_b, dtype, block_a, block_b, memory_bytes, device) -> tuple[int, int]:
    if block_a is None or block_b is None:
        memory_bytes = default_memory_budget(device) if memory_bytes is None else memory_bytes
        auto_a, auto_b = choose_blocks(
            shape_a[0], shape_b[0], shape_a[1], shape_b[1], shape_a[2], dtype, memory_bytes, platform=device.platform
        )
        block_a = auto_a if block_a is None else block_a
        block_b = auto_b if block_b is None else block_b
    if block_a < 1 or block_b < 1:
        raise ValueError(f"block sizes must be >= 1, got block_a={block_a}, block_b={block_b}")
    return min(block_a, max(shape_a[0], 1)), min(block_b, max(shape_b[0], 1))


# ----------------------------------------------------------------------------------------------------------------
# All pairs, rows of A spread over the devices of a 1-D mesh.


@functools.lru_cache(maxsize=32)
def _sharded_fn(mesh: Mesh, block_a: int, block_b: int, directional: bool):
    rows = PartitionSpec(axes.DATA)

    def local(A, len_A, B, len_B):
        a_to_b, b_to_a = _seqsim_blocks(A, len_A, B, len_B, block_a, block_b)
        return SeqSim(0.5 * (a_to_b + b_to_a), a_to_b, b_to_a) if directional else 0.5 * (a_to_b + b_to_a)

    # Each device scores its rows of A against all of B: no communication beyond placing the inputs.
    out_spec = SeqSim(rows, rows, rows) if directional else rows
    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(rows, rows, PartitionSpec(), PartitionSpec()), out_specs=out_spec
    )
    return jax.jit(sharded)


def seqsim_matrix_sharded(
    A: jax.Array,
    len_A: jax.Array,
    B: jax.Array,
    len_B: jax.Array,
    mesh: Mesh,
    *,
    block_a: int | None = None,
    block_b: int | None = None,
    directional: bool = False,
    memory_bytes: int | None = None,
) -> jax.Array | SeqSim:
    """``seqsim_matrix`` with the rows of A split over the ``engine.axes.DATA`` axis of a 1-D ``mesh``.

    Same arguments and result as ``seqsim_matrix``; B is replicated. N is padded to a multiple of the device count
    (padding utterances are zeros of length 1) and the padding rows are dropped from the result. Each device scores
    its rows against all of B without communicating; the result comes back sharded by rows when N is a multiple of
    the device count and replicated otherwise. Block sizes are chosen for one device's share of the rows.
    """
    if mesh.axis_names != (axes.DATA,):
        raise ValueError(f"mesh must be 1-D with axis {axes.DATA!r}, got axes {mesh.axis_names}")
    A, len_A, B, len_B = entering(A, len_A, B, len_B)
    n_dev = mesh.devices.size
    n_a = A.shape[0]
    rows = -(-n_a // n_dev) * n_dev
    A, len_A = _pad_rows(A, rows), _pad_rows(len_A, rows, 1)
    local_shape = (rows // n_dev, *A.shape[1:])
    block_a, block_b = _resolve_blocks(
        local_shape, B.shape, A.dtype, block_a, block_b, memory_bytes, mesh.devices.flat[0]
    )
    row_sharding = NamedSharding(mesh, PartitionSpec(axes.DATA))
    replicated = NamedSharding(mesh, PartitionSpec())
    A, len_A = jax.device_put(A, row_sharding), jax.device_put(len_A, row_sharding)
    B, len_B = jax.device_put(B, replicated), jax.device_put(len_B, replicated)
    out = _sharded_fn(mesh, block_a, block_b, directional)(A, len_A, B, len_B)
    if rows == n_a:
        return out

    # N rows cannot be split evenly over the devices, so the result without its padding rows is replicated: a
    # gather of f32[N, M], small next to the [N, frames, embed] inputs that were already placed.
    def drop_padding(x):  # replicated first: an explicit mesh axis cannot slice rows it does not divide evenly
        return leading(jax.device_put(x, replicated), (n_a,))

    return SeqSim(*map(drop_padding, out)) if directional else drop_padding(out)


# ----------------------------------------------------------------------------------------------------------------
# References: slow, obvious, float64.


def _reference_unit(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.sum(x * x))
    return x / max(norm, COS_EPS)


def reference_seqsim(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(score, a_to_b, b_to_a) for a: [m, embed], b: [n, embed] holding only valid frames; float64 loops."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    unit_a = [_reference_unit(frame) for frame in a]
    unit_b = [_reference_unit(frame) for frame in b]
    c = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            c[i, j] = np.dot(unit_a[i], unit_b[j])
    a_to_b = np.mean([max(c[i, :]) for i in range(len(a))])
    b_to_a = np.mean([max(c[:, j]) for j in range(len(b))])
    return 0.5 * (a_to_b + b_to_a), a_to_b, b_to_a


def reference_seqsim_matrix(A, len_A, B, len_B) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, a_to_b, b_to_a), each float64[N, M], by ``reference_seqsim`` on every cropped pair."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    out = np.zeros((3, len(A), len(B)))
    for i in range(len(A)):
        for j in range(len(B)):
            out[:, i, j] = reference_seqsim(A[i, : len_A[i]], B[j, : len_B[j]])
    return out[0], out[1], out[2]
