"""Sharded encoder equals the single-device encoder on meshes of 1, 2 and 8 fake CPU devices.

The device count needs its own process: XLA reads --xla_force_host_platform_device_count once, when JAX first
starts, and other test modules have started it already. One process of 8 devices runs the three meshes (the first 1,
the first 2, all 8: ``scripts/sharded_encode.py``); a process per device count cost two more starts of JAX and the
same programs compiled again.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from engine.models.common.parallel import pad_to_multiple
from tests.waits import patient

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "sharded_encode.py"
REPO = pathlib.Path(__file__).resolve().parents[3]
N_DEVICES = 8


def test_sharded_encoder_equals_single_device():
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={N_DEVICES}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(N_DEVICES)], env=env, capture_output=True, text=True, timeout=patient(600)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # Per mesh of n devices, both layer choices, batches 1, n and n + 3 (not all multiples of n). Different
    # per-device batch sizes pick different GEMM blockings, so sums round differently: 1e-5 on
    # activations of order 1 is float32 rounding, not a logic error (a misplaced row is O(1)).
    assert {key.split("-")[0] for key in report} == {"1", "2", str(N_DEVICES)} and len(report) == 16
    for key, err in report.items():
        assert err < 1e-5, (key, err)


def test_pad_to_multiple():
    x = np.arange(5 * 2).reshape(5, 2).astype(np.float32)
    padded, n = pad_to_multiple(x, 4)
    assert n == 5 and padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[:5], x)
    assert not padded[5:].any()
    same, n = pad_to_multiple(x, 5)
    assert n == 5 and same.shape == (5, 2)
