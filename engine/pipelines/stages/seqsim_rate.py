"""SeqSim's FLOP rate on this machine, timed: what the seqsim and heads plans (``--plan``) price SeqSim by."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.runtime.plan import timed
from kernels.seqsim import seqsim_matrix
from kernels.seqsim_fp8 import seqsim_matrix_fp8


def calibrate_seqsim(d: int, dtype: str, n: int = 8, frames: int = 256, fp8_scale: str | None = None) -> float:
    """FLOP/s of ``kernels.seqsim.seqsim_matrix`` on this machine, on n x n random utterances of ``frames``; with
    ``fp8_scale``, of ``kernels.seqsim_fp8.seqsim_matrix_fp8`` with that scale (emulated where ``has_fp8`` is not)."""
    x = jax.random.normal(jax.random.key(0), (2, n, frames, d), jnp.dtype(dtype))
    lengths = jnp.full((n,), frames, jnp.int32)
    if fp8_scale is None:
        seconds = timed(lambda a, b: seqsim_matrix(a, lengths, b, lengths), x[0], x[1])
    else:
        seconds = timed(lambda a, b: seqsim_matrix_fp8(a, lengths, b, lengths, scale=fp8_scale), x[0], x[1])
    return 2.0 * n * n * frames * frames * d / seconds
