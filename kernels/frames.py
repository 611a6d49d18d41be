"""Frame helpers that every kernel shares: the padding mask, unit normalisation, and the checks where data enters.

Glossary (axis names as in ``engine.axes``): ``frame`` an encoder frame, ``embed`` the model width, ``utterance``
one utterance of one language.

Conventions every kernel follows:

- Frames at index ``>= length`` are padding and may hold anything, NaN and inf included: they are replaced by
  zeros with ``where`` before any arithmetic touches them, so nothing leaks from them.
- Lengths are ``>= 1``. ``check_lengths`` checks concrete lengths; under an outer ``jit`` a length of 0 gives NaN
  (a mean over no frames), never a silent number.
- Cosines follow ``torch.nn.functional.normalize``: a vector is divided by ``max(|x|, COS_EPS)``, so an all-zero
  valid frame has cosine 0 with everything. NaN or inf inside *valid* frames propagates to the result, on purpose.
- Norms accumulate in float32 whatever the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError

COS_EPS = 1e-12  # smallest L2 norm a vector is divided by (torch's F.normalize default)


def frame_mask(frames: int, length) -> jax.Array:
    """bool[frames]: True on valid frames (index < length); ``length`` may carry leading axes (``[..., 1]``)."""
    return jnp.arange(frames) < length


def unit_rows(x: jax.Array) -> jax.Array:
    """x: f32[..., embed] divided by ``max(|x|, COS_EPS)`` along the last axis (all-zero rows stay zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), COS_EPS * COS_EPS))


def normalize_frames(x: jax.Array, length) -> jax.Array:
    """Unit-normalise the valid frames of one utterance and zero its padding.

    x: f32|bf16[frame, embed]; length: i32[] valid frames. Returns x's dtype ``[frame, embed]``: valid frames divided
    by ``max(|x_i|, COS_EPS)`` (norm accumulated in float32), padding frames exactly zero.
    """
    valid = frame_mask(x.shape[0], length)[:, None]
    x32 = jnp.where(valid, x.astype(jnp.float32), 0.0)
    return unit_rows(x32).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="shape")
def leading(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x[:shape[0], :shape[1], ...]``: its leading block (``shape`` covers the first axes), compiled with the bounds
    as constants. An eager slice of a device array sends its start indices to the device (a copy per call, which
    the seqsim job's transfer guard refuses); this one sends nothing."""
    return x[tuple(slice(0, n) for n in shape)]


@jax.jit
def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[index]`` along axis 0, ``index`` i32[k] on the device (put there by the caller, deliberately)."""
    return jnp.take(x, index, axis=0)


def matmul_f32(x: jax.Array, y: jax.Array) -> jax.Array:
    """f32[p, q] = x[p, k] @ y[q, k].T, accumulated in float32 whatever the input dtype.

    HIGHEST precision: on NVIDIA GPUs JAX's default multiplies float32 in TF32 (10-bit mantissa), which broke the
    1e-5 parity with the float64 reference on an H100; float32 must mean float32 here. bfloat16 inputs are unaffected.
    """
    return jax.lax.dot_general(
        x, y, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
    )


def traced(*arrays) -> bool:
    """Whether any argument is a tracer (under the caller's jit or vmap): its values cannot be checked or used."""
    return any(isinstance(x, jax.core.Tracer) for x in arrays)


def check_lengths(name: str, lengths, count: int, most: int, item: str) -> None:
    """Shape check where data enters: ``lengths`` must be [count] (one per ``item``) and, when concrete (not
    traced), lie in 1..most."""
    if jnp.shape(lengths) != (count,):
        raise ShapeError(f"{name} must be i32[{count}] (one length per {item}), got shape {jnp.shape(lengths)}")
    if not traced(lengths):
        lv = np.asarray(lengths)
        if lv.size and (lv.min() < 1 or lv.max() > most):
            raise ShapeError(f"{name} must lie in 1..{most}, got {lv.min()}..{lv.max()}")


def check_grid(A, B, len_A, len_B) -> tuple[jax.Array, jax.Array, int, int]:
    """The inputs of an all-pairs kernel, checked where they enter: A: [N, m, embed] and B: [M, n, embed] with one
    embed size, lengths one per utterance in 1..frames. Returns (A, B, N, M) as JAX arrays."""
    A, B = jnp.asarray(A), jnp.asarray(B)
    if A.ndim != 3 or B.ndim != 3 or A.shape[2] != B.shape[2]:
        raise ShapeError(f"A, B must be [utterance, frame, embed] with one embed size, got {A.shape}, {B.shape}")
    check_lengths("len_A", len_A, A.shape[0], A.shape[1], "utterance")
    check_lengths("len_B", len_B, B.shape[0], B.shape[1], "utterance")
    return A, B, A.shape[0], B.shape[0]


def even_split(total: int, most: int) -> int:
    """Largest block size <= most that splits ``total`` into the fewest blocks with the least padding."""
    most = max(1, min(most, total))
    blocks = -(-total // most)
    return -(-total // blocks)


def reference_unit_rows(x: np.ndarray) -> np.ndarray:
    """NumPy twin of ``unit_rows`` (in x's dtype; references pass float64)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), COS_EPS)
