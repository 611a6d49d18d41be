"""``patient``: how long a test waits for a process it started, scaled by how loaded the machine is.

A job's wall time grows with the machine's load, not with what the job does: the study of
``test_a_study_notices_changed_data_and_reruns_it_on_request`` takes 29 s at load 5 and 237 s at load 10-17 on a
2-core machine, where its fixed 120 s bound failed a test that was only slow. Every subprocess wait in the tests goes
through ``patient(seconds)``, ``seconds`` being a generous bound on a quiet machine for what the test runs: the wait
grows with the load per core, so a slow run passes, and stays finite, so a hung job still fails its test.
"""

from __future__ import annotations

import os

# The load is read when the wait starts, and other tests' processes start while it lasts: the bound never goes
# below this multiple of a quiet machine's, so a test started on a calm machine still survives the load rising.
MIN_SCALE = 3.0


def load_scale() -> float:
    """How many times slower than on a quiet machine a process may run now: the load (the higher of the 1- and
    5-minute averages) per core, at least ``MIN_SCALE``."""
    try:
        load = max(os.getloadavg()[:2])
    except OSError:  # no load average on this platform
        load = 0.0
    return max(MIN_SCALE, load / (os.cpu_count() or 1))


def patient(seconds: float) -> float:
    """The timeout, in seconds, for waiting on a process that would need at most ``seconds`` on a quiet machine."""
    return seconds * load_scale()
