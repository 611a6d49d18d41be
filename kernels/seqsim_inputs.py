"""What every SeqSim path shares at its entry (``kernels.seqsim``'s blocks, ``seqsim_pallas``, ``seqsim_fp8``): the
result type, the input checks and the crop of trailing padding. Apart, so that the paths import it and
``kernels.seqsim`` can dispatch to them without an import cycle."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError
from kernels.frames import check_lengths, leading, traced

FRAME_QUANTUM = 16  # frame axes are cropped to a multiple of this above the longest utterance (fewer recompiles)


class SeqSim(NamedTuple):
    """SeqSim and its two directional terms; scalars for one pair, ``f32[N, M]`` for matrices."""

    score: jax.Array
    a_to_b: jax.Array
    b_to_a: jax.Array


def check_inputs(A, len_A, B, len_B) -> None:
    """Shape and dtype checks where data enters; lengths are checked when they are concrete (not traced)."""
    for name, x, lengths, lname in (("A", A, len_A, "len_A"), ("B", B, len_B, "len_B")):
        if x.ndim != 3:
            raise ShapeError(f"{name} must be [utterance, frame, embed], got shape {x.shape}")
        check_lengths(lname, lengths, x.shape[0], x.shape[1], "utterance")
    if A.shape[2] != B.shape[2]:
        raise ShapeError(f"A and B must share the embed axis, got {A.shape[2]} and {B.shape[2]}")
    if A.dtype != B.dtype or A.dtype not in (jnp.float32, jnp.bfloat16):
        raise ShapeError(f"A and B must both be float32 or both bfloat16, got {A.dtype} and {B.dtype}")


def entering(A, len_A, B, len_B) -> tuple[jax.Array, np.ndarray | jax.Array, jax.Array, np.ndarray | jax.Array]:
    """The inputs of a SeqSim path as it takes them: states as JAX arrays, checked, trailing padding cropped
    (``crop_frames``); concrete lengths as host ``i32`` NumPy arrays, so that the checks and the crop read them where
    they are and only the kernel call moves them (``jax.device_put``: the seqsim job scores under a guard that refuses
    implicit host-to-device copies); traced lengths (under the caller's jit) as they are."""
    A, B = jnp.asarray(A), jnp.asarray(B)
    len_A, len_B = (x if traced(x) else np.asarray(x, np.int32) for x in (len_A, len_B))
    check_inputs(A, len_A, B, len_B)
    return crop_frames(A, len_A), len_A, crop_frames(B, len_B), len_B


def crop_frames(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Drop trailing frames that no utterance uses (Whisper pads every utterance to 1500 frames = 30 s).

    Only when lengths are concrete; the kept frame count is rounded up to FRAME_QUANTUM. Results are unchanged:
    the dropped frames are padding of every utterance.
    """
    if traced(lengths) or lengths.size == 0:
        return x
    frames = min(x.shape[1], -(-int(np.max(lengths)) // FRAME_QUANTUM) * FRAME_QUANTUM)
    return x if frames == x.shape[1] else leading(x, (x.shape[0], frames))


def host_result(a_to_b: np.ndarray, b_to_a: np.ndarray, directional: bool) -> np.ndarray | SeqSim:
    """The scores of two directional terms computed on the host (f32[N, M] each): their mean, or with
    ``directional`` a SeqSim of the three, all NumPy."""
    score = 0.5 * (a_to_b + b_to_a)
    return SeqSim(score, a_to_b, b_to_a) if directional else score
