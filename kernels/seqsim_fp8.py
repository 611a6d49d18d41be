"""SeqSim with 8-bit frames: unit frames rounded to float8 e4m3, multiplied with float32 accumulation.

Same definition and conventions as ``kernels.seqsim`` (its module docstring); only the frame-similarity GEMM
changes. Each side's valid frames are unit-normalised in float32, multiplied by a power of two ``s`` (``SCALES``),
rounded once to ``float8_e4m3fn`` and multiplied as ``f8 @ f8 -> f32`` (``preferred_element_type``); each cosine is
then divided by ``s_a * s_b``, which is exact (powers of two). On H100/H200 XLA lowers that dot to the fp8 tensor
cores (twice the bf16 rate); on CPU XLA upcasts the operands, so the numerics are emulated bit for bit (an e4m3
value and the product of two are exact in float32) and only the accumulation order differs. An opt-in only, never a
default: its agreement with bf16 on real states is measured by ``bench/seqsim_fp8.py`` (``bench/RESULTS.md``,
section "seqsim fp8 agreement").

Why a scale, and why one per tensor. e4m3 has 3 mantissa bits (relative rounding ``u = 2**-4``) between ``2**-6``
and 448; below ``2**-6`` it is subnormal, with a fixed absolute step of ``2**-9``, and below ``2**-10`` a component
rounds to 0. Floating point has the same relative step in every binade, so a power of two only helps by lifting
components out of the subnormal range, and only hurts by pushing one past 448 (NaN). ``"tensor"`` uses the fixed
``TENSOR_SCALE = 2**8``, the largest power of two that keeps a component of 1 below 448: data-independent, so it
needs no reduction across utterances and its rescale is one constant; every component above ``2**-14`` keeps its 3
bits. ``"frame"`` lifts each frame's largest component into (224, 448], which gains at most a binade or two more.
``"none"`` keeps the unit frames as they are. How little this matters: at embed 512 a unit frame's components are
about 0.044, mostly already normal, and on Gaussian frames, with or without one large outlier component, the three
give cosine errors within 3% of each other (the largest components' relative rounding dominates); unscaled, the
components below ``2**-10`` of a frame dominated by one outlier are flushed to zero. Real states:
``bench/seqsim_fp8.py``.

Error bound against exact cosines (``bound``): a component ``x`` rounds to ``x(1 + d) + e`` with ``|d| <= u`` and
``|e| <= 2**-10 / s`` (half the subnormal step, scaled back), so with ``sum_k |x_k| <= sqrt(embed)`` for unit frames
each cosine moves by at most ``2u + u**2 + 2**-9 (1 + u) sqrt(embed) / s + embed 2**-20 / s**2``; max and mean are
1-Lipschitz in the largest entry, so the SeqSim terms move by no more. That is 0.129 for ``"tensor"`` and
``"frame"`` and 0.18 unscaled at embed 512: a worst case (every rounding aligned); real states land far inside it
(``bench/RESULTS.md``).

All pairs are scored as ``kernels.seqsim_packed`` scores them (valid frames packed into bins, one GEMM per pair of
bins, reductions by segments), except that padding is masked by a select on the similarities (the packed path's
two mask columns would have to carry ``PAD_SIMILARITY * s`` past 448). The NumPy twin is
``reference_seqsim_matrix_fp8``: ``ml_dtypes`` rounding, then float32 products, in plain loops.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from engine.errors import ShapeError
from kernels.frames import frame_mask, traced, unit_rows
from kernels.seqsim_inputs import SeqSim, entering, host_result
from kernels.seqsim_packed import ACCELERATOR_BIN_FRAMES, CHUNK, CPU_BIN_FRAMES, _by_slot, _gather_frames, pack_side

FP8 = jnp.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn; a larger value converts to NaN (e4m3fn has no inf)
FP8_UNIT_ROUNDOFF = 2.0**-4  # 3 mantissa bits, round to nearest
FP8_HALF_SUBNORMAL_STEP = 2.0**-10  # the largest rounding error below 2**-6 (subnormal step 2**-9)
TENSOR_SCALE = 2.0**8  # the largest power of two s with 1.0 * s <= FP8_MAX: unit frames' components lie in [-1, 1]
SCALES = ("none", "tensor", "frame")  # see the module docstring; "tensor" is the recommended one
DEFAULT_SCALE = "tensor"
# Device kinds (``jax.Device.device_kind`` prefixes) whose tensor cores multiply e4m3 with f32 accumulation: the only
# ones a job may offer fp8 on (declared, not probed). Elsewhere the kernel still runs, emulated: tests and --plan.
FP8_DEVICE_KINDS = ("NVIDIA H100", "NVIDIA H200")


def has_fp8(device: jax.Device) -> bool:
    """Whether ``device`` multiplies e4m3 natively (``FP8_DEVICE_KINDS``); CPUs and other GPUs emulate it."""
    return device.device_kind.startswith(FP8_DEVICE_KINDS)


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"fp8 scale must be one of {SCALES}, got {scale!r}")


def frame_scales(unit: jax.Array, scale: str) -> jax.Array:
    """f32[...]: the power of two each frame of ``unit`` (f32[..., embed], components in [-1, 1]) is multiplied by.

    ``"frame"``: the largest ``2**k`` with ``max_k |x_k| * 2**k <= FP8_MAX``, from the exponent alone (``frexp``, no
    logarithm that could round across a power of two); all-zero frames (padding) get 1.
    """
    check_scale(scale)
    if scale == "none":
        return jnp.ones(unit.shape[:-1], jnp.float32)
    if scale == "tensor":
        return jnp.full(unit.shape[:-1], TENSOR_SCALE, jnp.float32)
    top = jnp.max(jnp.abs(unit), axis=-1)
    mantissa, exponent = jnp.frexp(top)  # top = mantissa * 2**exponent, mantissa in [0.5, 1)
    # FP8_MAX = 0.875 * 2**9: a mantissa up to 0.875 may take exponent 9, a larger one 8.
    k = jnp.where(mantissa <= FP8_MAX / 512, 9, 8) - exponent
    return jnp.where(top > 0, jnp.ldexp(jnp.float32(1), k), 1.0)


def quantize_frames(x: jax.Array, length, scale: str = DEFAULT_SCALE) -> tuple[jax.Array, jax.Array]:
    """One utterance's frames as scaled e4m3 unit frames.

    x: f32|bf16[frame, embed]; length: i32[] valid frames. Returns (q: f8_e4m3fn[frame, embed], inverse: f32[frame]):
    ``q[i] ~= unit(x[i]) * s_i`` and ``inverse[i] = 1 / s_i`` (exact); padding frames are zero. bf16 frames are
    normalised in float32 and rounded once, to e4m3 (never through bf16 first: no double rounding).
    """
    return _quantize(x, frame_mask(x.shape[0], length), scale)


def _quantize(x: jax.Array, valid: jax.Array, scale: str) -> tuple[jax.Array, jax.Array]:
    unit = unit_rows(jnp.where(valid[:, None], x.astype(jnp.float32), 0.0))
    s = frame_scales(unit, scale)
    return (unit * s[:, None]).astype(FP8), 1.0 / s


def similarities_fp8(qa: jax.Array, inv_a: jax.Array, qb: jax.Array, inv_b: jax.Array) -> jax.Array:
    """f32[p, q] cosines from ``quantize_frames`` outputs qa: f8[p, embed], inv_a: f32[p] and qb: f8[q, embed],
    inv_b: f32[q]: an f8 GEMM accumulated in float32, then the exact power-of-two rescale."""
    c = jax.lax.dot_general(qa, qb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return c * inv_a[:, None] * inv_b[None, :]


# ----------------------------------------------------------------------------------------------------------------
# One pair.


@functools.partial(jax.jit, static_argnames=("scale",))
def seqsim_fp8(a: jax.Array, b: jax.Array, len_a, len_b, *, scale: str = DEFAULT_SCALE) -> SeqSim:
    """``kernels.seqsim.seqsim`` of one pair with e4m3 frames: a: f32|bf16[frames_a, embed], b: [frames_b, embed],
    len_a, len_b: i32[] valid frames >= 1. Returns SeqSim of f32[] scalars."""
    mask_a = frame_mask(a.shape[0], len_a)
    mask_b = frame_mask(b.shape[0], len_b)
    c = similarities_fp8(*quantize_frames(a, len_a, scale), *quantize_frames(b, len_b, scale))
    c = jnp.where(mask_a[:, None] & mask_b[None, :], c, -jnp.inf)
    a_to_b = jnp.sum(jnp.where(mask_a, jnp.max(c, axis=1), 0.0)) / len_a
    b_to_a = jnp.sum(jnp.where(mask_b, jnp.max(c, axis=0), 0.0)) / len_b
    return SeqSim(0.5 * (a_to_b + b_to_a), a_to_b, b_to_a)


# ----------------------------------------------------------------------------------------------------------------
# All pairs, by packed bins.


@functools.partial(jax.jit, static_argnames=("scale",))
def _quantize_bin(x: jax.Array, valid: jax.Array, *, scale: str) -> tuple[jax.Array, jax.Array]:
    """x: [bin_frames, embed] packed frames, valid: bool[bin_frames] -> ``quantize_frames`` of them."""
    return _quantize(x, valid, scale)


@jax.jit
def _bin_pair_fp8(qa, inv_a, a_valid, a_chunks, a_len, qb, inv_b, b_valid, b_chunks, b_len):
    """``kernels.seqsim_packed._bin_pair`` for e4m3 bins: (a_to_b, b_to_a), each f32[U_a, U_b].

    qa: f8[r_a, embed], inv_a: f32[r_a] from ``_quantize_bin``; a_valid: bool[r_a]; a_chunks: i32[U_a, K_a];
    a_len: f32[U_a] (a ``Packing``'s rows for one bin); b likewise.
    """
    r_a, r_b = qa.shape[0], qb.shape[0]
    c = similarities_fp8(qa, inv_a, qb, inv_b)
    c = jnp.where(a_valid[:, None] & b_valid[None, :], c, -jnp.inf)  # f32[r_a, r_b]; fused into the maxima below
    best_in_b = _by_slot(jnp.max(c.reshape(r_a, r_b // CHUNK, CHUNK), axis=2).T, b_chunks, -jnp.inf, jnp.max)
    best_in_b = jnp.where(a_valid[None, :], best_in_b, 0.0)  # f32[U_b, r_a]
    a_sum = _by_slot(best_in_b.reshape(-1, r_a // CHUNK, CHUNK).sum(axis=2).T, a_chunks, 0.0, jnp.sum)
    best_in_a = _by_slot(jnp.max(c.reshape(r_a // CHUNK, CHUNK, r_b), axis=1), a_chunks, -jnp.inf, jnp.max)
    best_in_a = jnp.where(b_valid[None, :], best_in_a, 0.0)  # f32[U_a, r_b]
    b_sum = _by_slot(best_in_a.reshape(-1, r_b // CHUNK, CHUNK).sum(axis=2).T, b_chunks, 0.0, jnp.sum)
    return a_sum / a_len[:, None], (b_sum / b_len[:, None]).T


def _packed_bins(x: jax.Array, lengths: np.ndarray, bin_frames: int, scale: str):
    packing = pack_side(lengths, x.shape[1], bin_frames)
    frame, valid, chunks, slot_lengths = jax.device_put(  # deliberate: one put of the packing (kernels.seqsim_packed)
        (packing.frame, list(packing.valid), list(packing.chunks), list(packing.lengths))
    )
    frames = _gather_frames(x, frame, embed=x.shape[2])
    bins = [
        (*_quantize_bin(f, v, scale=scale), v, c, n)
        for f, v, c, n in zip(frames, valid, chunks, slot_lengths, strict=True)
    ]
    return packing, bins


def seqsim_matrix_fp8(
    A: jax.Array,
    len_A,
    B: jax.Array,
    len_B,
    *,
    scale: str = DEFAULT_SCALE,
    directional: bool = False,
    bin_frames: int | None = None,
) -> np.ndarray | SeqSim:
    """``kernels.seqsim.seqsim_matrix`` with e4m3 frames and float32 accumulation (module docstring).

    A: f32|bf16[N, m, embed], len_A: concrete i32[N] in 1..m; B: same dtype [M, n, embed], len_B: i32[M]. Returns
    f32[N, M] scores, or with ``directional=True`` a SeqSim of three f32[N, M], as NumPy arrays on the host, where
    the bins' results are gathered (the seqsim job writes them from there: no copy to the device and back).
    ``bin_frames``: the most frames per packed bin (default: ``kernels.seqsim_packed``'s for the first device's
    platform).
    """
    check_scale(scale)
    if traced(len_A, len_B):
        raise ValueError("seqsim_matrix_fp8 packs by concrete lengths: call it outside jit")
    A, len_A, B, len_B = entering(A, len_A, B, len_B)
    if bin_frames is None:
        bin_frames = CPU_BIN_FRAMES if jax.devices()[0].platform == "cpu" else ACCELERATOR_BIN_FRAMES
    pa, bins_a = _packed_bins(A, len_A, bin_frames, scale)
    pb, bins_b = _packed_bins(B, len_B, bin_frames, scale)
    calls = [[_bin_pair_fp8(*a, *b) for b in bins_b] for a in bins_a]  # all dispatched before any is read
    a_to_b = np.empty((A.shape[0], B.shape[0]), np.float32)
    b_to_a = np.empty_like(a_to_b)
    for rows, row in zip(pa.utterance, calls, strict=True):
        for cols, (ab, ba) in zip(pb.utterance, row, strict=True):
            keep, at = np.ix_(rows >= 0, cols >= 0), np.ix_(rows[rows >= 0], cols[cols >= 0])
            a_to_b[at] = np.asarray(ab)[keep]
            b_to_a[at] = np.asarray(ba)[keep]
    return host_result(a_to_b, b_to_a, directional)


def bound(embed: int, scale: str = DEFAULT_SCALE) -> float:
    """The most a cosine, and so a SeqSim term, moves from its exact value by e4m3 rounding (module docstring),
    before the float32 accumulation's own few ulps. embed: the model width."""
    check_scale(scale)
    if embed < 1:
        raise ShapeError(f"embed must be >= 1, got {embed}")
    u, e = FP8_UNIT_ROUNDOFF, FP8_HALF_SUBNORMAL_STEP
    s = 1.0 if scale == "none" else TENSOR_SCALE  # "frame" scales by at least 2**8 (a frame's largest |x_k| <= 1)
    return 2 * u + u * u + 2 * e * (1 + u) * math.sqrt(embed) / s + embed * e * e / (s * s)


# ----------------------------------------------------------------------------------------------------------------
# The NumPy twin: ml_dtypes rounding, float32 products, plain loops.


def reference_quantize(unit: np.ndarray, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """f32[frame, embed] unit frames -> the float32 values the kernel multiplies, rescaled: each frame times its
    power of two, rounded to e4m3 by ``ml_dtypes``, back to float32, divided by the power of two (exact)."""
    check_scale(scale)
    unit = np.asarray(unit, np.float32)
    out = np.zeros_like(unit)
    for i, frame in enumerate(unit):
        s = 1.0
        if scale == "tensor":
            s = TENSOR_SCALE
        elif scale == "frame" and np.abs(frame).max() > 0:
            s = 2.0**8
            while np.abs(frame).max() * (2 * s) <= FP8_MAX:  # the largest power of two that keeps the max <= 448
                s *= 2
        scaled = (frame * np.float32(s)).astype(ml_dtypes.float8_e4m3fn)
        out[i] = scaled.astype(np.float32) / np.float32(s)
    return out


def _reference_unit_f32(frames: np.ndarray) -> np.ndarray:
    """The kernel's float32 unit frames (``unit_rows``), so that the twin rounds the same values to e4m3."""
    return np.asarray(unit_rows(jnp.asarray(frames, jnp.float32)))


def reference_seqsim_matrix_fp8(A, len_A, B, len_B, scale: str = DEFAULT_SCALE):
    """(score, a_to_b, b_to_a), each float64[N, M]: every cropped pair's frames through ``reference_quantize``,
    cosines as float32 dot products, maxima and means in loops."""
    A = np.asarray(jnp.asarray(A, jnp.float32))
    B = np.asarray(jnp.asarray(B, jnp.float32))
    qa = [reference_quantize(_reference_unit_f32(A[i, : len_A[i]]), scale) for i in range(len(A))]
    qb = [reference_quantize(_reference_unit_f32(B[j, : len_B[j]]), scale) for j in range(len(B))]
    out = np.zeros((3, len(A), len(B)))
    for i in range(len(A)):
        for j in range(len(B)):
            c = qa[i] @ qb[j].T  # float32
            a_to_b = np.mean([c[r].max() for r in range(len(c))], dtype=np.float64)
            b_to_a = np.mean([c[:, k].max() for k in range(c.shape[1])], dtype=np.float64)
            out[:, i, j] = 0.5 * (a_to_b + b_to_a), a_to_b, b_to_a
    return out[0], out[1], out[2]
