"""Random-weight w2v-BERT 2.0 and SeamlessM4T v2 folders in the hub's layout (``engine.models.common.random_weights``;
``babelgrid random-model --kind w2v-bert``), written with NumPy.

- ``w2v-bert`` (``facebook/w2v-bert-2.0``): ``config.json`` of a ``Wav2Vec2BertModel``, its tensors by their own
  names in ``model.safetensors``;
- ``seamless`` (``facebook/seamless-m4t-v2-large``): ``config.json`` of a ``SeamlessM4Tv2Model`` (the
  ``speech_encoder_*`` fields), the speech encoder's tensors under ``speech_encoder.``. The text and speech-unit
  models of the hub's checkpoint are left out: babelgrid reads only the speech encoder.

Both carry ``preprocessor_config.json`` (``SeamlessM4TFeatureExtractor``: 80 Kaldi mel bins, two frames stacked) and
the real models' numerics: Shaw's relative-key positions clipped to [-64, 8], swish, a causal depthwise convolution
of 31 taps; widths from ``--width`` (feed-forward 4 x). The adapter and the layers after the conformer are not
written: the family never stores them.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint
from engine.models.w2vbert.config import SEAMLESS_M4T_V2, W2V_BERT, config_from_hf
from engine.models.w2vbert.model import state_shapes

_SHARED = dict(
    feature_projection_input_dim=160, layer_norm_eps=1e-5, position_embeddings_type="relative_key",
    left_max_position_embeddings=64, right_max_position_embeddings=8, conv_depthwise_kernel_size=31,
)  # fmt: skip
FEATURES = {
    "feature_extractor_type": "SeamlessM4TFeatureExtractor", "feature_size": 80, "num_mel_bins": 80,
    "padding_side": "right", "padding_value": 1, "return_attention_mask": True, "sampling_rate": 16000, "stride": 2,
}  # fmt: skip


def _write(folder: pathlib.Path, config: dict, prefix: str, rng: np.random.Generator) -> None:
    shapes = state_shapes(config_from_hf(config))
    tensors = {prefix + k: v for k, v in random_tensors(shapes, rng).items()}
    write_checkpoint(folder, tensors, config, {"preprocessor_config.json": FEATURES})


def _write_w2v_bert(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    config = {"model_type": W2V_BERT, "architectures": ["Wav2Vec2BertModel"], "hidden_size": sizes.width,
              "num_hidden_layers": sizes.layers, "num_attention_heads": sizes.heads,
              "intermediate_size": 4 * sizes.width, "hidden_act": "swish", **_SHARED}  # fmt: skip
    _write(folder, config, "", rng)


def _write_seamless(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    config = {"model_type": SEAMLESS_M4T_V2, "architectures": ["SeamlessM4Tv2Model"], "hidden_size": sizes.width,
              "speech_encoder_layers": sizes.layers, "speech_encoder_attention_heads": sizes.heads,
              "speech_encoder_intermediate_size": 4 * sizes.width, "speech_encoder_hidden_act": "swish",
              "speech_encoder_chunk_size": 20000, "speech_encoder_left_chunk_num": 128, **_SHARED}  # fmt: skip
    _write(folder, config, "speech_encoder.", rng)


KINDS = (
    RandomKind("w2v-bert", "facebook/w2v-bert-2.0", Sizes(2, 64, 4), _write_w2v_bert),
    RandomKind("seamless", "facebook/seamless-m4t-v2-large", Sizes(2, 64, 4), _write_seamless,
               note="the speech encoder only, as babelgrid reads it"),
)  # fmt: skip
