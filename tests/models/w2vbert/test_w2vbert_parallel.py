"""The w2v-BERT encoder sharded over 4 fake CPU devices equals it on one device, on ragged batches of 3 and 5
utterances (padded to the device count with empty utterances, which must stay finite and be dropped).

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

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "w2vbert_sharded.py"
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
    # Per-device batch sizes pick different GEMM blockings, so sums round differently: 1e-5 on activations of
    # order 1 is float32 rounding; a misplaced row or a leaked mask is O(1).
    for batch, result in report.items():
        assert result["finite"], batch
        assert result["err"] < 1e-5, (batch, result["err"])
