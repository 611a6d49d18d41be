"""The wav2vec2 family's input: the raw 16 kHz waveform, normalised per utterance, batched by right padding.

Equal to transformers' ``Wav2Vec2FeatureExtractor`` (NumPy, float32, the same operations in the same order, so equal
to the bit): with ``do_normalize`` each utterance becomes ``(x - mean) / sqrt(var + 1e-7)`` over its own samples,
then the batch is right-padded with ``padding_value`` to a common length; ``lengths`` (and the attention mask
``arange(samples) < lengths``) mark the valid samples.

Padding convention. No fixed window: unlike Whisper's 30 s log-mel windows, an utterance of any length is one row of
``n`` samples (at least ``Wav2Vec2Dims.receptive_field``, 400 = 25 ms) and gives ``Wav2Vec2Dims.frames(n)`` encoder
frames, one per 320 samples (20 ms). Padding is never part of an utterance: the statistics are taken over its own
samples, and the model (``model.py``) masks the padding out, so an utterance's features and frames do not depend on its
batch mates or on how far the batch is padded. transformers does the same when the extractor returns an attention
mask (``return_attention_mask``, set for "layer" models); for base models (group norm, no attention mask) its padded
batch normalises over the padding too, which is the one place this module differs from a padded transformers call.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Sequence

import numpy as np

from engine.errors import CheckpointError, ShapeError
from engine.models.common.io import read_json
from engine.models.wav2vec2.config import SAMPLE_RATE

log = logging.getLogger(__name__)

NORM_EPS = 1e-7  # added to the variance by Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """What ``preprocessor_config.json`` says; the defaults are ``Wav2Vec2FeatureExtractor``'s."""

    do_normalize: bool = True
    padding_value: float = 0.0
    return_attention_mask: bool = False  # informational: the model here masks padding for every config

    @classmethod
    def from_folder(cls, folder: pathlib.Path) -> FeatureOptions:
        """The options of ``folder/preprocessor_config.json``; transformers' defaults when it is absent, with a
        warning: a checkpoint trained on unnormalised audio (``do_normalize`` false) that lost the file would be fed
        normalised audio, and its states differ with nothing else to say so (a probe measured up to 4.0 apart)."""
        path = folder / PREPROCESSOR_FILE
        if not path.is_file():
            defaults = cls()
            log.warning(
                "'%s' has no %s: using Wav2Vec2FeatureExtractor's defaults (do_normalize=%s, padding_value=%s). A "
                "checkpoint trained on unnormalised audio needs the file (its do_normalize false): copy it from where "
                "the checkpoint came from", folder, PREPROCESSOR_FILE, defaults.do_normalize, defaults.padding_value,
            )  # fmt: skip
            return defaults
        config = read_json(path)
        rate = config.get("sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE or config.get("feature_size", 1) != 1:
            raise CheckpointError(
                f"'{path}' asks for sampling_rate={rate} and feature_size={config.get('feature_size')}; the wav2vec2 "
                f"family here takes raw mono audio at {SAMPLE_RATE} Hz (feature_size 1)"
            )
        return cls(
            do_normalize=bool(config.get("do_normalize", True)),
            padding_value=float(config.get("padding_value", 0.0)),
            return_attention_mask=bool(config.get("return_attention_mask", False)),
        )


def normalize(waveform: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: ``f32[samples]`` -> ``f32[samples]``, as ``zero_mean_unit_var_norm`` computes it."""
    x = np.asarray(waveform, np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)


def batch_waveforms(
    waveforms: Sequence[np.ndarray],
    options: FeatureOptions = FeatureOptions(),
    *,
    min_samples: int = 400,
    pad_multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Utterances ``f32[samples_i]`` at 16 kHz -> ``(input_values f32[batch, samples], lengths i32[batch])``.

    ``samples`` is the longest utterance rounded up to a multiple of ``pad_multiple`` (a bucket size bounds the number
    of compiled shapes). Each row holds its utterance, normalised when ``options.do_normalize``, then
    ``options.padding_value``. ``min_samples``: the model's ``receptive_field``; a shorter utterance has no frame and
    is refused, naming it.
    """
    if not len(waveforms):
        raise ShapeError("batch_waveforms needs at least one utterance")
    rows = []
    for i, w in enumerate(waveforms):
        w = np.asarray(w)
        if w.ndim != 1:
            raise ShapeError(f"utterance {i} must be mono f32[samples] at 16 kHz, got shape {w.shape}")
        if len(w) < min_samples:
            raise ShapeError(
                f"utterance {i} has {len(w)} samples; the model needs at least {min_samples} "
                f"({min_samples / SAMPLE_RATE * 1000:.0f} ms) for one frame"
            )
        rows.append(normalize(w) if options.do_normalize else w.astype(np.float32))
    lengths = np.array([len(r) for r in rows], np.int32)
    n = int(lengths.max())
    n += -n % max(int(pad_multiple), 1)
    out = np.full((len(rows), n), options.padding_value, np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
