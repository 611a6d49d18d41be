"""compare's measures are one registry (engine/pipelines/compare/measures.py): every measure has its grid, its
permutation null, a price in the plan under its stage, and a share of the progress bar, and the defaults are named
there, not positions in a tuple."""

import pytest

from engine.pipelines.compare import layers, null
from engine.pipelines.compare.measures import DEFAULT_FRAME_MEASURES, DEFAULT_MEASURES, MEASURES, REGISTRY, stage_of
from engine.pipelines.compare.plan import ModelShape, Rates, set_seconds


def test_every_measure_has_its_grid_and_null_route():
    assert tuple(layers.GRIDS) == MEASURES and tuple(null.ROUTES) == MEASURES
    assert len({m.title for m in REGISTRY}) == len(REGISTRY)  # the figure panels stay apart


def test_defaults_are_the_outputs_of_a_default_run():
    """Outputs of a default run stay as they were before cknna and cycle_knn joined, on request."""
    assert DEFAULT_MEASURES == ("cka", "cka_unbiased", "svcca", "pwcca", "mknn")
    assert DEFAULT_FRAME_MEASURES == ("cka", "cka_unbiased", "mknn")
    assert all(m.about for m in REGISTRY if not m.default)  # --measures' help says what each on-request one is


@pytest.mark.parametrize("measure", MEASURES)
def test_the_plan_prices_each_measure_and_its_null_under_its_stage(measure):
    shape, rates = ModelShape(layers=3, width=8), Rates(1e9, 1e-9, 1e-9, 1e-9)
    seconds = set_seconds(shape, shape, 64, (measure,), 3, 4096, 5, rates)  # n > widths: CCA's layers are measured
    assert seconds.get(stage_of(measure), 0.0) > 0, f"the plan has no price for {measure} ({stage_of(measure)})"
    assert seconds.get(f"null {stage_of(measure)}", 0.0) > 0, f"the plan has no price for {measure}'s null"
