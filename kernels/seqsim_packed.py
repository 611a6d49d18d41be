"""All-pairs SeqSim of packed utterances: the valid frames of many short utterances in one large GEMM.

``kernels.seqsim.seqsim_matrix`` pads every utterance of a side to the side's longest, so a grid of ragged or short
utterances multiplies mostly padding, and every new longest length is a new compiled shape. Here the valid frames
of each side are packed into *bins* of ``bin_frames`` frames (whole utterances only, each starting at a chunk
boundary and padded to a multiple of ``CHUNK`` frames), and every pair of bins is one
``[bin_frames, embed + 2] @ [embed + 2, bin_frames]`` GEMM. The max and mean reductions then run by segments:

1. max over chunks of ``CHUNK`` frames (a fixed reshape; a chunk never straddles two utterances);
2. max over the chunks of each utterance (a gather of chunk indices, ``[slot, chunk]``, padded with a sentinel
   chunk that holds -inf), which gives each frame's best match in each utterance of the other bin;
3. mean over the frames of each utterance: the same in sums (chunk sums, then a gather whose sentinel holds 0).

Padding is masked inside the GEMM as in ``kernels.seqsim._augment`` (every product touching padding is at most
``PAD_SIMILARITY + 1 < -1``), so plain max reductions ignore it. A NaN in a valid frame stays in its utterance's row
or column, as in ``seqsim_matrix``: no reduction mixes two utterances (which a segment sum by matmul would).

Glossary: ``bin`` a fixed number of packed frames, ``slot`` an utterance's place in its bin (``U`` per bin),
``chunk`` ``CHUNK`` consecutive frames of one slot (``K`` at most per slot); other axes as in ``kernels.seqsim``.
Conventions: those of ``kernels.frames``. The NumPy twin is ``kernels.seqsim.reference_seqsim_matrix``.
Measurements: ``bench/RESULTS.md``, section "seqsim on short utterances".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.frames import matmul_f32, unit_rows

CHUNK = 8  # frames per chunk: utterances are padded to a multiple of this in a bin (a 25-frame word wastes 7)
CPU_BIN_FRAMES = 1024  # frames per bin on CPU: a [1024, 1024] f32 block (4 MiB) stays in the 32 MiB L3
# Bin sizes are multiples of this: a side of 4,100 frames takes 5 bins of 896 (fill 0.92), not 5 of 1024 (0.80), and
# the sides of a grid share a few compiled shapes.
BIN_QUANTUM = 128
ACCELERATOR_BIN_FRAMES = 8192  # larger GEMMs where memory is not the limit (not measured on a GPU yet)
PAD_SIMILARITY = -4.0  # as in kernels.seqsim: below every cosine, exact in bf16


class Packing(NamedTuple):
    """Where the valid frames of one side go in its bins (host arrays, from concrete lengths).

    frame: i32[bins, bin_frames] index into the side's frames flattened to [utterance * frame] (0 on padding);
    valid: bool[bins, bin_frames]; chunks: i32[bins, U, K] chunk indices of each slot in its bin, the sentinel
    ``bin_frames // CHUNK`` past its last chunk and for empty slots; lengths: f32[bins, U] valid frames (1 for empty
    slots); utterance: i32[bins, U] the utterance in each slot, -1 for empty slots.
    """

    frame: np.ndarray
    valid: np.ndarray
    chunks: np.ndarray
    lengths: np.ndarray
    utterance: np.ndarray


def _pow2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def pack_side(lengths: np.ndarray, frames: int, most: int) -> Packing:
    """The packing of one side into bins of at most ``most`` frames (a multiple of ``BIN_QUANTUM``) with the least
    total area (bins x frames), so that the last bin is not mostly padding: among the fewest bins that hold the side
    and one or two more, each as small as it can be; one bin of a power of two frames when the whole side fits in
    one (small grids, tests); bins never smaller than the longest utterance (CHUNK-padded).
    """
    padded = -(-np.asarray(lengths, np.int64) // CHUNK) * CHUNK
    total, longest = int(padded.sum()), int(padded.max())
    if total <= most:
        return pack(lengths, frames, max(longest, _pow2(max(total, CHUNK))))
    fewest, best = -(-total // most), None
    for bins in range(fewest, fewest + 3):
        size = max(longest, min(most, -(-total // (bins * BIN_QUANTUM)) * BIN_QUANTUM))
        while True:  # whole utterances may not fill the bins exactly: grow them until as many bins hold the side
            packing = pack(lengths, frames, size)
            if len(packing.frame) <= bins or size >= most:
                break
            size = min(most, size + BIN_QUANTUM)
        if best is None or packing.frame.size < best.frame.size:
            best = packing
    return best


def pack(lengths: np.ndarray, frames: int, bin_frames: int) -> Packing:
    """Packs utterances of ``lengths`` (i32[N], each <= frames, the padded frame axis) into bins of ``bin_frames``.

    First-fit decreasing: longest first, each into the first bin with room, so bins are full but for the last few.
    ``U`` and ``K`` are rounded up to powers of two, so that sides of similar lengths share compiled shapes.
    """
    lengths = np.asarray(lengths, np.int64)
    need = -(-lengths // CHUNK) * CHUNK
    if need.max(initial=0) > bin_frames:
        raise ValueError(f"bin_frames={bin_frames} is below the longest utterance ({int(need.max())} frames padded)")
    free: list[int] = []
    members: list[list[int]] = []
    for u in np.argsort(-need, kind="stable"):
        b = next((b for b, room in enumerate(free) if room >= need[u]), len(free))
        if b == len(free):
            free.append(bin_frames)
            members.append([])
        free[b] -= int(need[u])
        members[b].append(int(u))
    n_bins, n_chunks = len(members), bin_frames // CHUNK
    slots = _pow2(max(len(m) for m in members))
    most_chunks = _pow2(int(need.max()) // CHUNK)
    frame = np.zeros((n_bins, bin_frames), np.int32)
    valid = np.zeros((n_bins, bin_frames), bool)
    chunks = np.full((n_bins, slots, most_chunks), n_chunks, np.int32)
    slot_lengths = np.ones((n_bins, slots), np.float32)
    utterance = np.full((n_bins, slots), -1, np.int32)
    for b, utts in enumerate(members):
        start = 0
        for s, u in enumerate(utts):
            n = int(lengths[u])
            frame[b, start : start + n] = u * frames + np.arange(n)
            valid[b, start : start + n] = True
            first = start // CHUNK
            chunks[b, s, : need[u] // CHUNK] = np.arange(first, first + need[u] // CHUNK)
            slot_lengths[b, s] = n
            utterance[b, s] = u
            start += int(need[u])
    return Packing(frame, valid, chunks, slot_lengths, utterance)


def restrict(packing: Packing, bins, frames_from: int, frames: int) -> tuple[Packing, np.ndarray]:
    """The bins ``bins`` of ``packing`` (a side's packing, frame indices counting ``frames_from`` frames per
    utterance) as the packing of the side made of their utterances alone, read with ``frames`` frames per utterance:
    ``(packing, utterances)``, its indices counting in that subset and the subset's utterances (sorted) in the side.

    Each bin keeps its frames, slots and shapes (``U``, ``K``), so a pair of restricted sides makes the same
    ``_bin_pair`` calls as the whole sides do for those bins: a block of bins scores bit for bit as in the whole
    pair (the seqsim job splits a pair that way: ``engine.pipelines.seqsim.tiling.tiles``).
    """
    bins = np.asarray(bins, np.int64)
    slot = packing.utterance[bins]
    utterances = np.sort(slot[slot >= 0])
    position = np.full(int(packing.utterance.max(initial=0)) + 1, -1, np.int64)
    position[utterances] = np.arange(len(utterances))
    frame = packing.frame[bins].astype(np.int64)
    u, t = frame // frames_from, frame % frames_from
    frame = np.where(packing.valid[bins], position[u] * frames + t, 0).astype(np.int32)
    utterance = np.where(slot >= 0, position[np.maximum(slot, 0)], -1).astype(np.int32)
    sub = Packing(frame, packing.valid[bins], packing.chunks[bins], packing.lengths[bins], utterance)
    return sub, utterances


def _unit_augmented(x: jax.Array, valid: jax.Array, pad_first: bool) -> jax.Array:
    """x: [bin_frames, embed] packed frames, valid: bool[bin_frames] -> unit frames with two mask columns
    (``[1, p]`` for the first operand, ``[p, 1]`` for the second, p = PAD_SIMILARITY on padding), x's dtype."""
    unit = unit_rows(jnp.where(valid[:, None], x.astype(jnp.float32), 0.0)).astype(x.dtype)
    penalty = jnp.where(valid, 0.0, PAD_SIMILARITY).astype(x.dtype)[:, None]
    ones = jnp.ones_like(penalty)
    return jnp.concatenate([unit, ones, penalty] if pad_first else [unit, penalty, ones], axis=-1)


def _by_slot(x: jax.Array, chunks: jax.Array, fill: float, reduce) -> jax.Array:
    """x: f32[chunk, ...] per-chunk values -> f32[U, ...]: ``reduce`` over each slot's chunks (``chunks``: i32[U, K],
    sentinel = len(x), which reads ``fill``)."""
    x = jnp.concatenate([x, jnp.full((1, *x.shape[1:]), fill, x.dtype)])
    return reduce(x[chunks], axis=1)


def _bin_pair(a, a_valid, a_chunks, a_len, b, b_valid, b_chunks, b_len) -> tuple[jax.Array, jax.Array]:
    """Directional SeqSim terms of the slots of one bin of A against those of one bin of B.

    a: f32|bf16[r_a, embed + 2] packed unit frames from ``_unit_augmented`` (pad_first), a_valid: bool[r_a],
    a_chunks: i32[U_a, K_a], a_len: f32[U_a] (a ``Packing``'s rows for one bin); b likewise (not pad_first).
    Returns (a_to_b, b_to_a), each f32[U_a, U_b].
    """
    r_a, r_b = a.shape[0], b.shape[0]
    c = matmul_f32(a, b)  # f32[r_a, r_b]
    # a_to_b: each frame of A's best match in each slot of B, then the mean over the frames of each slot of A.
    best_in_b = _by_slot(jnp.max(c.reshape(r_a, r_b // CHUNK, CHUNK), axis=2).T, b_chunks, -jnp.inf, jnp.max)
    best_in_b = jnp.where(a_valid[None, :], best_in_b, 0.0)  # f32[U_b, r_a]; padding frames of A add nothing
    a_sum = _by_slot(best_in_b.reshape(-1, r_a // CHUNK, CHUNK).sum(axis=2).T, a_chunks, 0.0, jnp.sum)
    # b_to_a: each frame of B's best match in each slot of A, then the mean over the frames of each slot of B.
    best_in_a = _by_slot(jnp.max(c.reshape(r_a // CHUNK, CHUNK, r_b), axis=1), a_chunks, -jnp.inf, jnp.max)
    best_in_a = jnp.where(b_valid[None, :], best_in_a, 0.0)  # f32[U_a, r_b]
    b_sum = _by_slot(best_in_a.reshape(-1, r_b // CHUNK, CHUNK).sum(axis=2).T, b_chunks, 0.0, jnp.sum)
    return a_sum / a_len[:, None], (b_sum / b_len[:, None]).T  # a_sum: [U_a, U_b], b_sum: [U_b, U_a]


_bin_pair_jit = jax.jit(_bin_pair)
# Once per bin and side, not per pair of bins: one shape, [bin_frames, embed], whatever the side's bin count.
_unit_augmented_jit = jax.jit(_unit_augmented, static_argnames=("pad_first",))


@functools.partial(jax.jit, static_argnames=("embed",))
def _gather_frames(x: jax.Array, frame: jax.Array, *, embed: int) -> jax.Array:
    """x: [N, frames, embed] -> [bins, bin_frames, embed], frames taken by ``Packing.frame``."""
    return jnp.take(x.reshape(-1, embed), frame, axis=0)


class PackedSide:
    """One side packed once, to be scored against many (the seqsim job packs each language once per layer): its
    ``Packing`` and each bin's device arguments of ``_bin_pair``, per role (A or B), built on first use.

    x: f32|bf16[N, frames, embed]; lengths: concrete i32[N] in 1..frames; most: the most frames per bin; packing:
    the side's packing when it is given (``restrict``: some bins of a larger side), else ``pack_side``'s.
    """

    def __init__(self, x: jax.Array, lengths, most: int, packing: Packing | None = None):
        self.lengths = np.asarray(lengths)
        self.packing = pack_side(self.lengths, x.shape[1], most) if packing is None else packing
        # The packing's host arrays go to the device in one deliberate put (the seqsim job scores under a transfer
        # guard that refuses implicit host-to-device copies), once per side, not once per pair.
        frame, valid, chunks, slot_lengths = jax.device_put(
            (self.packing.frame, list(self.packing.valid), list(self.packing.chunks), list(self.packing.lengths))
        )
        frames = _gather_frames(x, frame, embed=x.shape[2])
        self._per_bin = list(zip(frames, valid, chunks, slot_lengths, strict=True))
        self._roles: dict[bool, list[tuple]] = {}

    def bins(self, pad_first: bool) -> list[tuple]:
        """Per bin, (unit augmented frames, valid, chunks, slot lengths) for the A (``pad_first``) or B role."""
        if pad_first not in self._roles:
            self._roles[pad_first] = [
                (_unit_augmented_jit(frame, valid, pad_first=pad_first), valid, chunks, slot_lengths)
                for frame, valid, chunks, slot_lengths in self._per_bin
            ]
            if len(self._roles) == 2:  # both roles built: the raw frames are needed no more
                self._per_bin = []
        return self._roles[pad_first]


def seqsim_packed_sides(pa: PackedSide, pb: PackedSide) -> tuple[np.ndarray, np.ndarray]:
    """Directional SeqSim terms (a_to_b, b_to_a), each f32[N, M] on the host, of two packed sides."""
    bins_a, bins_b = pa.bins(pad_first=True), pb.bins(pad_first=False)
    # One call per pair of bins, all dispatched before any result is read: the device queue never runs dry.
    calls = [[_bin_pair_jit(*a, *b) for b in bins_b] for a in bins_a]
    a_to_b = np.empty((len(pa.lengths), len(pb.lengths)), np.float32)
    b_to_a = np.empty_like(a_to_b)
    for rows, row in zip(pa.packing.utterance, calls, strict=True):
        for cols, (ab, ba) in zip(pb.packing.utterance, row, strict=True):
            keep = np.ix_(rows >= 0, cols >= 0)
            at = np.ix_(rows[rows >= 0], cols[cols >= 0])
            a_to_b[at] = np.asarray(ab)[keep]
            b_to_a[at] = np.asarray(ba)[keep]
    return a_to_b, b_to_a


def seqsim_matrix_packed(A, len_A, B, len_B, *, bin_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Directional SeqSim terms (a_to_b, b_to_a), each f32[N, M] on the host, by packed bins (module docstring).

    A: f32|bf16[N, m, embed]; len_A: concrete i32[N] in 1..m; B: same dtype [M, n, embed], len_B: i32[M].
    bin_frames: the most frames per bin (``pack_side`` chooses fewer where they hold the side). Inputs are checked by
    the caller (``kernels.seqsim.seqsim_matrix``).
    """
    return seqsim_packed_sides(PackedSide(A, len_A, bin_frames), PackedSide(B, len_B, bin_frames))
