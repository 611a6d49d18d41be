"""The settings kernels take, importable without JAX: a job's flags list them before any kernel is loaded.

Each kernel module imports its settings from here (``kernels.ot``, ``kernels.wordalign``, ``kernels.metrics``).
"""

from __future__ import annotations

import dataclasses

# --- retrieval metrics (kernels.metrics) ----------------------------------------------------------------------------

DEFAULT_KS = (1, 5, 10)
TIE_RULES = ("optimistic", "pessimistic")

# --- word alignment (kernels.wordalign) -----------------------------------------------------------------------------

POOLINGS = ("centre", "mean", "max")
WORD_WEIGHTS = ("uniform", "duration")
# Default lowest share of a link (plan_links): a quarter of the smaller word's mass. A word split evenly between two
# partners gives each link 1/2; a half kept in that case leaves room for a third partner and for the blur of
# entropic OT (epsilon), while a spread of noise over 10-20 words (1/10-1/20 each) stays below it.
OT_MASS = 0.25

# --- optimal transport (kernels.ot) ---------------------------------------------------------------------------------

OT_EPSILON = 0.05  # entropic blur, in cost units (1 - cos, range [0, 2]); see the module docstring
# Default stopping threshold on the L1 row-marginal error. float32 sums of a plan of up to 1500 x 1500 entries
# carry rounding of ~1e-7 relative (~1e-6 in L1 at worst), so 1e-5 is reachable in float32 and keeps every
# marginal within 1e-5 of its weights; the similarity then moves by at most 2 * 1e-5 (costs are <= 2).
OT_THRESHOLD = 1e-5
OT_MAX_ITERATIONS = 2000  # well above the demo store's slowest pair at OT_EPSILON (bench/RESULTS.md, OT notes)
INNER_ITERATIONS = 10  # Sinkhorn iterations between two convergence checks (ott's default)


@dataclasses.dataclass(frozen=True)
class OtConfig:
    """Sinkhorn options: ``epsilon`` (absolute, cost units), the debiased divergence, the stopping rule."""

    epsilon: float = OT_EPSILON
    debiased: bool = False
    max_iterations: int = OT_MAX_ITERATIONS
    threshold: float = OT_THRESHOLD

    def __post_init__(self):
        if not self.epsilon > 0:
            raise ValueError(f"OT epsilon must be > 0 (in units of the cost 1 - cos), got {self.epsilon}")
        if not self.threshold > 0:
            raise ValueError(f"OT threshold must be > 0 (L1 marginal error), got {self.threshold}")
        if self.max_iterations < INNER_ITERATIONS:
            raise ValueError(
                f"OT max_iterations must be >= {INNER_ITERATIONS} (convergence is checked every "
                f"{INNER_ITERATIONS}), got {self.max_iterations}"
            )


DEFAULT_OT = OtConfig()  # the defaults above, for argument defaults in other modules
