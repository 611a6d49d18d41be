"""Sliding-window filters along the frame axis, as openai-whisper's word timestamps use them.

``median_filter`` equals ``whisper.timing.median_filter`` (its CPU path): reflect-pad ``width // 2`` frames at
each edge (``F.pad(mode="reflect")``: the edge frame is not repeated), then take the median of each window. Away
from the edges this is ``scipy.signal.medfilt``. With ``n_valid`` each row is filtered as if its valid frames were
the whole signal (reflection at the valid edge), which is what cropped, ragged attention weights need.

The median is the middle output of a sorting network of compare-exchanges over the ``width`` shifted views, all
elementwise, so XLA can fuse it into one loop (``sort`` over a window axis was not timed against it).
NaN sorts last, as in ``torch.sort``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ShapeError


def _check_width(width: int) -> int:
    if not isinstance(width, (int, np.integer)) or width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd int (whisper uses 7), got {width!r}")
    return int(width)


def _compare_exchange(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(min, max) elementwise, with NaN larger than every number (torch.sort's order)."""
    swap = (a > b) | (jnp.isnan(a) & ~jnp.isnan(b))
    return jnp.where(swap, b, a), jnp.where(swap, a, b)


def _median(views: list[jax.Array]) -> jax.Array:
    """Elementwise median of an odd number of equally shaped arrays (odd-even transposition sorting network)."""
    v = list(views)
    for rnd in range(len(v)):
        for i in range(rnd % 2, len(v) - 1, 2):
            v[i], v[i + 1] = _compare_exchange(v[i], v[i + 1])
    return v[len(v) // 2]  # compare-exchanges that do not feed the middle element are dead code to XLA


@functools.partial(jax.jit, static_argnames=("width",))
def median_filter(x: jax.Array, width: int = 7, n_valid=None) -> jax.Array:
    """Median filter along the last axis, equal to ``whisper.timing.median_filter(x, width)``.

    x: f32[..., frames]; width: odd window length (ValueError otherwise); n_valid: optional i32 broadcastable to
    ``x.shape[:-1]``, valid frames of each row: frames >= n_valid are padding, may hold anything, and come back
    unchanged; the valid part of the row is filtered as if it were the whole signal.
    Returns x's dtype ``[..., frames]``. Like whisper, a row with at most ``width // 2`` frames (valid frames when
    n_valid is given) is returned unchanged: reflect padding needs more frames than the pad.
    Jitted with ``width`` static; composes under an outer jit or vmap.
    """
    width = _check_width(width)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ShapeError(f"x must be [..., frames], got a scalar of shape {x.shape}")
    half = width // 2
    frames = x.shape[-1]
    if half == 0:
        return x
    if n_valid is None:
        if frames <= half:
            return x
        padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    else:
        n = jnp.asarray(n_valid, jnp.int32)
        try:
            n = jnp.broadcast_to(n, x.shape[:-1])
        except ValueError:
            raise ShapeError(f"n_valid must broadcast to x.shape[:-1] = {x.shape[:-1]}, got shape {n.shape}") from None
        if frames <= half:
            return x
        # Mirror each row about its last valid frame: right[q] = x[q] for q < n, x[2n - 2 - q] after it.
        q = jnp.arange(frames + half)
        src = jnp.where(q < n[..., None], q, 2 * (n[..., None] - 1) - q)
        right = jnp.take_along_axis(x, jnp.clip(src, 0, frames - 1), axis=-1)
        padded = jnp.concatenate([jnp.flip(x[..., 1 : half + 1], axis=-1), right], axis=-1)
    filtered = _median([padded[..., s : s + frames] for s in range(width)])
    if n_valid is None:
        return filtered
    keep = (jnp.arange(frames) < n[..., None]) & (n[..., None] > half)
    return jnp.where(keep, filtered, x)


def reference_median_filter(x: np.ndarray, width: int = 7, n_valid=None) -> np.ndarray:
    """median_filter by plain loops: for each valid frame, sort its reflected window and take the middle."""
    width = _check_width(width)
    x = np.asarray(x)
    half = width // 2
    rows = x.reshape(-1, x.shape[-1])
    ns = np.broadcast_to(x.shape[-1] if n_valid is None else np.asarray(n_valid), x.shape[:-1]).reshape(-1)
    out = rows.copy()
    for r, (row, n) in enumerate(zip(rows, ns, strict=True)):
        if n <= half:
            continue
        for p in range(n):
            window = []
            for s in range(p - half, p + half + 1):
                s = -s if s < 0 else s
                s = 2 * (n - 1) - s if s >= n else s
                window.append(row[s])
            out[r, p] = np.sort(np.array(window, x.dtype))[half]
    return out.reshape(x.shape)
