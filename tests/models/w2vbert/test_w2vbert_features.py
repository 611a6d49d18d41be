"""The w2v-BERT features (``engine.models.w2vbert.features``) against transformers' ``SeamlessM4TFeatureExtractor``
on real FLEURS clips: the Kaldi mel filters, single utterances and a ragged batch (lengths giving odd and even fbank
frame counts), features and attention mask. On these clips the two agree bit for bit; the bound asserted is 1e-6 on
unit-variance features, so that a change of NumPy's summation order in either would not fail a correct recipe.
"""

import numpy as np
import pytest

from engine.data.audio import load_audio
from engine.errors import AudioError, ShapeError
from engine.models.w2vbert import features

# Samples kept of five clips of five languages: 0.8 s to 6 s, with 1 + (n - 400) // 160 odd and even.
LENGTHS = (12_800, 16_000 * 2 + 250, 16_000 * 3, 16_000 * 4 + 170, 16_000 * 6)
CLIPS = (0, 10, 20, 30, 40)
ATOL = 1e-6


@pytest.fixture(scope="module")
def extractor():
    from transformers import SeamlessM4TFeatureExtractor

    return SeamlessM4TFeatureExtractor()


@pytest.fixture(scope="module")
def waveforms(fleurs_clips):
    out = [load_audio(fleurs_clips[c])[:n] for c, n in zip(CLIPS, LENGTHS, strict=True)]
    assert [len(w) for w in out] == list(LENGTHS), "a FLEURS clip is shorter than the test expects"
    assert len({(1 + (n - 400) // 160) % 2 for n in LENGTHS}) == 2, "want odd and even fbank frame counts"
    return out


def test_kaldi_mel_filters_equal_transformers():
    from transformers.audio_utils import mel_filter_bank

    reference = mel_filter_bank(
        num_frequency_bins=257,
        num_mel_filters=80,
        min_frequency=20,
        max_frequency=8000,
        sampling_rate=16000,
        norm=None,
        mel_scale="kaldi",
        triangularize_in_mel_space=True,
    )
    np.testing.assert_allclose(features.kaldi_mel_filters(), reference, rtol=0, atol=1e-12)


def test_single_utterances_equal_the_extractor(extractor, waveforms):
    for w in waveforms:
        ref = extractor(w, sampling_rate=16000, return_tensors="np")
        ours, valid = features.utterance_features(w)
        assert ours.shape == ref["input_features"].shape[1:]
        assert valid == ref["attention_mask"].sum() == features.frames_for_samples(len(w))
        np.testing.assert_allclose(ours, ref["input_features"][0], rtol=0, atol=ATOL)


def test_ragged_batch_equals_the_extractor(extractor, waveforms):
    ref = extractor(waveforms, sampling_rate=16000, return_tensors="np")
    ours, valid = features.batch_features(waveforms)
    assert ours.shape == ref["input_features"].shape
    np.testing.assert_array_equal(valid, ref["attention_mask"].sum(1))
    np.testing.assert_array_equal(valid, features.frames_for_samples(LENGTHS))
    np.testing.assert_allclose(ours, ref["input_features"], rtol=0, atol=ATOL)
    # 20 ms per frame: 6 s of audio is 299 frames (599 fbank frames, the odd last one in no valid frame).
    assert valid[-1] == 299 and valid[-1] * features.STRIDE * features.HOP_LENGTH / features.SAMPLE_RATE < 6.0


def test_bad_waveforms_are_refused():
    with pytest.raises(AudioError, match=r"waveforms\[1\] has 559 samples; .* at least 560"):
        features.batch_features([np.zeros(16000, np.float32), np.zeros(559, np.float32)])
    with pytest.raises(ShapeError, match="f32\\[samples\\]"):
        features.utterance_features(np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        features.utterance_features(np.full(16000, np.nan, np.float32))
