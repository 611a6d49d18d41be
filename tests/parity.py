"""What the parity tests share: the error measure their tolerances are stated in."""

import numpy as np


def rel_err(ours, ref) -> float:
    """The largest absolute difference over the reference's largest magnitude, in float64: the tolerances of the
    parity tests (1e-5 in float32) are fractions of an array's peak."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
