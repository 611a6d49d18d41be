"""The dtypes a run may name, for storage or compute: one table for every job and store.

jax.numpy takes these NumPy dtypes as they are; ml_dtypes gives NumPy its bfloat16.
"""

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
