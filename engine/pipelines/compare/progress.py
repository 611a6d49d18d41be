"""The compare job's progress: one bar over the run's planned seconds, ticked as each stage of each set finishes.

The plan (``compare.plan``) prices every stage of every set (model pair x language or ``all`` x level): the reads,
each measure and each measure's permutation null. The run times this machine's rates once (``plan.measure_rates``,
about a second), takes the plan's total as the bar's length, and after each read, measure and null (and after each
layer pair of CCA's null, the longest step) advances the bar by that step's planned seconds. So the bar moves at
"planned seconds per second": 1.0 when the plan is right, less when the machine is slower than planned (a loaded
machine), and its ETA is the plan's rest scaled by the rate seen so far. In a batch log (stderr not a terminal) it
prints one status line every 30 s (``engine.runtime.runs.StatusLines``), naming the step it is at::

    compare: 18.4/37.2 planned s (49.5%), 0.912 planned s/s, elapsed 20 s, ETA 21 s, at=whisper-base x q2b, all, ...
"""

from __future__ import annotations

from engine.pipelines.compare.layers import GRAM_MAX
from engine.pipelines.compare.measures import in_stage, needs_grams, null_is_timed, stage_of
from engine.pipelines.compare.plan import Rates, measure_rates, model_shape, plan_compare_run, set_seconds
from engine.runtime.plan import READ_RATE
from engine.runtime.runs import progress_bar


class Progress:
    """The bar of the module docstring over a run of ``config`` on ``readers``; ``rates`` for tests (timed here by
    default)."""

    def __init__(self, config, readers, rates: Rates | None = None):
        self.config = config
        self.done = 0.0
        self.enabled = config.run.progress is not False
        if not self.enabled:  # --progress=false: nothing to show, so nothing timed or planned
            self.rates, self.total, self.bar = Rates(1.0), 0.0, None
            return
        asked = set(config.measures) | set(config.frame_measures)
        null = bool(config.null_permutations) and null_is_timed(asked)
        self.rates = rates or measure_rates(grams=needs_grams(asked), null_timed=null)
        self.total = max(round(plan_compare_run(config, None, self.rates).seconds_here, 3), 0.001)
        self.bar = progress_bar(self.total, "compare", "planned s", config.run.progress)

    def tick(self, seconds: float, at: str | None = None) -> None:
        """Advances the bar by ``seconds`` planned, and names the step ``at`` in the status line. Past the plan's
        total (the plan priced less than the steps tick) the bar's end moves on, 10% beyond what is done."""
        if self.bar is None:
            return
        if at is not None:
            self.bar.set_postfix(at=at)
        shown = round(self.done, 3)
        self.done += max(seconds, 0.0)
        if self.done > self.total:
            self.total = self.bar.total = round(1.1 * self.done, 3)
        # The bar shows the sum done rounded to ms, not a sum of rounded steps: a run of many steps under a
        # millisecond each (a small set on a loaded machine) would otherwise never reach its total.
        self.bar.update(round(self.done, 3) - shown)

    def read(self, reader, frames: int, at: str) -> None:
        """One layer's ``frames`` frames read from ``reader``."""
        if self.bar is None:
            return
        shape = model_shape(reader)
        self.tick(frames * shape.width * shape.dtype_bytes / READ_RATE, at)

    def set_costs(self, a, b, n: int, level: str) -> dict[str, float]:
        """Planned seconds of each measure and null (``null cka``, ...) of one set of ``n`` examples of readers a, b:
        the plan's stages split evenly over the measures that share one (CKA's two kinds, CCA's two)."""
        config = self.config
        asked = config.measures if level == "utterance" else config.frame_measures
        perms = config.null_permutations if level in config.null_levels else 0
        stages = set_seconds(model_shape(a), model_shape(b), n, asked, config.knn_k, GRAM_MAX, perms, self.rates)
        costs = {}
        for measure in asked:
            stage = stage_of(measure)
            share = in_stage(asked, stage)
            costs[measure] = stages.get(stage, 0.0) / share
            costs[f"null {measure}"] = stages.get(f"null {stage}", 0.0) / share
        return costs

    def for_set(self, a, b, n: int, level: str, at: str) -> SetTicks:
        """The ticks of one set's measures and nulls (``layers.similarity_rows``'s ``done``)."""
        return SetTicks(self, self.set_costs(a, b, n, level) if self.enabled else {}, at)

    def close(self, finished: bool = True) -> None:
        """Ends the bar; ``finished``: what the plan priced and no step ticked (its estimate of reads, say) is done
        too, so a finished run ends at 100%."""
        if self.bar is None:
            return
        if finished:
            self.tick(self.total - self.done, "done")
        self.bar.close()


class SetTicks:
    """Ticks one set's steps: ``ticks(step)`` when a step is done (what was not ticked of it yet),
    ``ticks.share(step)(fraction)`` for a share of a step done (CCA's null, a layer pair at a time)."""

    def __init__(self, progress: Progress, costs: dict[str, float], at: str):
        self.progress, self.costs, self.at = progress, costs, at
        self.spent: dict[str, float] = {}

    def __call__(self, step: str, fraction: float | None = None) -> None:
        cost, spent = self.costs.get(step, 0.0), self.spent.get(step, 0.0)
        seconds = cost - spent if fraction is None else min(cost * fraction, cost - spent)
        self.spent[step] = spent + seconds
        self.progress.tick(seconds, f"{self.at}, {step}")

    def share(self, step: str):
        return lambda fraction: self(step, fraction)
