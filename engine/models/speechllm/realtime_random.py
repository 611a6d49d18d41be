"""Random-weight Voxtral Realtime folders in transformers' layout (``babelgrid random-model --kind voxtral-realtime``),
written with NumPy (``engine.models.common.random_weights``).

The folder is what ``VoxtralRealtimeForConditionalGeneration.save_pretrained`` writes, less the language model:
``config.json`` (``model_type`` ``voxtral_realtime``, the encoder's settings under ``audio_config``, the text model
named only by its width) with ``model.safetensors`` holding ``audio_tower.*`` and ``multi_modal_projector.*``, and the
feature extractor's ``preprocessor_config.json`` (transformers' defaults). The encoder keeps the released structure
(128 mels, the 750-frame sliding window, RoPE theta 10000, SwiGLU of 4 x the width, 4 frames to a projector frame);
a head is ``--width / --heads`` wide (64 released, with 32 heads of a 1280 width: the attention is wider than the
blocks there) and the text model 2 x ``--width``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint
from engine.models.speechllm.realtime_checkpoints import RANDOM_KIND, state_shapes
from engine.models.speechllm.realtime_config import FULL_TYPE, HUB_IDS, TOWER_TYPE, from_hf

PREPROCESSOR = {"feature_extractor_type": "VoxtralRealtimeFeatureExtractor", "feature_size": 128,
                "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "win_length": 400, "padding_value": 0.0,
                "global_log_mel_max": 1.5, "return_attention_mask": False}  # fmt: skip


def config(sizes: Sizes) -> dict:
    """The full model's ``config.json`` of an encoder of ``sizes``."""
    w = sizes.width
    audio = dict(model_type=TOWER_TYPE, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=sizes.layers,
                 num_attention_heads=sizes.heads, head_dim=w // sizes.heads, activation_function="gelu",
                 hidden_act="silu", num_mel_bins=128, max_position_embeddings=1500, rms_norm_eps=1e-5,
                 rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, sliding_window=750)  # fmt: skip
    text = {"model_type": "voxtral_realtime_text", "hidden_size": 2 * w}
    return {"model_type": FULL_TYPE, "architectures": ["VoxtralRealtimeForConditionalGeneration"],
            "audio_config": audio, "text_config": text, "projector_hidden_act": "gelu", "downsample_factor": 4,
            "audio_length_per_tok": 8}  # fmt: skip


def _write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    raw = config(sizes)
    tensors = random_tensors(state_shapes(from_hf(raw)), rng)
    write_checkpoint(folder, tensors, raw, {"preprocessor_config.json": PREPROCESSOR})


NOTE = "the audio tower and projector only (no language model); the projector's output 2 x --width wide"
KINDS = (RandomKind(RANDOM_KIND, HUB_IDS[0], Sizes(2, 64, 4), _write, note=NOTE),)
