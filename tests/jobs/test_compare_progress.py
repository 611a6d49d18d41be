"""The compare bar's arithmetic (engine.pipelines.compare.progress): a run of many steps each under the bar's
millisecond resolution still ends at its total (a load run ended a finished compare at 90.9%)."""

from __future__ import annotations

import io

from engine.pipelines.compare.progress import Progress
from engine.runtime.runs import StatusLines


def _progress(total: float) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    progress = Progress.__new__(Progress)  # the bar alone: no plan is timed here
    progress.done, progress.total = 0.0, total
    progress.bar = StatusLines(total, "compare", "planned s", interval=1e9, stream=stream)
    return progress, stream


def test_many_steps_under_a_millisecond_end_at_the_total():
    progress, stream = _progress(0.022)
    for _ in range(40):
        progress.tick(0.0004, "step")  # each rounds to 0 ms alone
    assert abs(progress.bar.n - 0.016) < 1e-9
    progress.close()
    assert "(100.0%)" in stream.getvalue().splitlines()[-1] and "at=done" in stream.getvalue()


def test_past_the_plan_the_end_moves_on():
    progress, stream = _progress(0.01)
    progress.tick(0.02, "long step")
    assert progress.total == progress.bar.total == 0.022 and abs(progress.bar.n - 0.02) < 1e-9
    progress.close()
    assert "(100.0%)" in stream.getvalue().splitlines()[-1]
