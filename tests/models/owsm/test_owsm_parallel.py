"""The OWSM encoder sharded over 4 fake CPU devices through the family adapter (``engine.models.owsm.encoder``)
equals it on one device, on batches of 3 and 5 windows (padded to the device count with zero windows, which must
stay finite and be dropped), cut to a subset of layers as the encode job asks.

The device count needs its own process: XLA reads --xla_force_host_platform_device_count once, when JAX first
starts, and other test modules have started it already.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.waits import patient

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "owsm_sharded.py"
REPO = pathlib.Path(__file__).resolve().parents[3]
N_DEVICES = 4


@pytest.mark.slow
def test_sharded_encoder_equals_single_device():
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEVICES}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(N_DEVICES)], env=env, capture_output=True, text=True, timeout=patient(600)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report) == ["3", "5"]
    # Per-device batch sizes pick different GEMM blockings, so sums round differently: 1e-5 of the peak is float32
    # rounding (the parity tests' bound); a misplaced row or layer is O(1) of it.
    for batch, result in report.items():
        assert result["finite"], batch
        assert result["err"] < 1e-5, (batch, result["err"])
