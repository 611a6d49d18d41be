"""OWSM's mel filters, written out in NumPy (``engine.models.owsm.features.mel_filters``), against librosa's, the call
ESPnet's LogMel makes: OWSM runs without librosa (the make-demo environment has none), and its filters stay librosa's.
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from engine.models.owsm.config import SAMPLE_RATE, FrontendConfig
from engine.models.owsm.features import mel_filters


@pytest.mark.parametrize(
    ("n_fft", "n_mels", "fmin", "fmax", "htk"),
    [(512, 80, 0.0, 8000.0, False), (512, 128, 0.0, 8000.0, False), (400, 80, 20.0, 7600.0, True),
     (1024, 64, 50.0, 4000.0, False)],
)  # fmt: skip
def test_mel_filters_equal_librosa(n_fft, n_mels, fmin, fmax, htk):
    config = FrontendConfig(n_fft, n_fft, 160, n_mels, fmin, fmax, htk, 30.0)
    want = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk).T
    # librosa computes in float64 and returns float32: equal to float32 rounding of the largest weight
    np.testing.assert_allclose(mel_filters(config), want, rtol=0, atol=2e-7 * np.abs(want).max())
