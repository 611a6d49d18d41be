"""Random-weight speech-LLM folders in the hub's layout (``engine.models.common.random_weights``; ``babelgrid
random-model --kind qwen2-audio``), written with NumPy.

Each is the full model's ``config.json`` (``qwen2_audio``, ``voxtral``, ``audioflamingo3``: ``audio_config`` and
``text_config``) with ``model.safetensors`` holding its ``audio_tower.*`` and ``multi_modal_projector.*`` tensors,
as the hub's shards name them, and the Whisper feature extractor's ``preprocessor_config.json`` (128 mel bins, 30 s).
The language model is left out: babelgrid never reads it, and its width (``text_config.hidden_size``, the
projector's output) is 4 x ``--width`` here. The tower keeps the released numerics (128 mels, 1500 positions, GELU,
feed-forward 4 x the width: Voxtral's projector then stacks 4 frames, as the released one).
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint
from engine.models.speechllm.checkpoints import state_shapes
from engine.models.speechllm.config import HUB_IDS, from_hf

FEATURES = {
    "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
    "hop_length": 160, "chunk_length": 30, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
    "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
}  # fmt: skip
TEXT_MODEL = {"qwen2_audio": "qwen2", "voxtral": "llama", "audioflamingo3": "qwen2"}
ARCHITECTURE = {"qwen2_audio": "Qwen2AudioForConditionalGeneration", "voxtral": "VoxtralForConditionalGeneration",
                "audioflamingo3": "AudioFlamingo3ForConditionalGeneration"}  # fmt: skip


def config(kind: str, sizes: Sizes) -> dict:
    """The full model's ``config.json`` of a tower of ``sizes`` (Qwen2-Audio names its audio fields as Whisper does,
    Voxtral and Audio Flamingo 3 as a Llama does)."""
    w = sizes.width
    if kind == "qwen2_audio":
        audio = dict(d_model=w, encoder_attention_heads=sizes.heads, encoder_ffn_dim=4 * w, encoder_layers=sizes.layers)
    else:
        audio = dict(hidden_size=w, num_attention_heads=sizes.heads, intermediate_size=4 * w,
                     num_hidden_layers=sizes.layers)  # fmt: skip
    audio |= dict(model_type=f"{kind}_encoder", num_mel_bins=128, max_source_positions=1500, activation_function="gelu")
    full = {"model_type": kind, "architectures": [ARCHITECTURE[kind]], "audio_config": audio,
            "text_config": {"model_type": TEXT_MODEL[kind], "hidden_size": 4 * w}}  # fmt: skip
    if kind != "qwen2_audio":
        full["projector_hidden_act"] = "gelu"
    if kind == "audioflamingo3":
        full["projector_bias"] = True
    return full


def _writer(kind: str):
    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        raw = config(kind, sizes)
        tensors = random_tensors(state_shapes(from_hf(raw)), rng)
        write_checkpoint(folder, tensors, raw, {"preprocessor_config.json": FEATURES})

    return write


NOTE = "the tower and projector only (no language model); the projector's output 4 x --width wide"
KINDS = (
    RandomKind("qwen2-audio", HUB_IDS["qwen2_audio"], Sizes(2, 64, 4), _writer("qwen2_audio"), note=NOTE),
    RandomKind("voxtral", HUB_IDS["voxtral"], Sizes(2, 64, 4), _writer("voxtral"), note=NOTE),
    RandomKind("audio-flamingo3", HUB_IDS["audioflamingo3"], Sizes(2, 64, 4), _writer("audioflamingo3"), note=NOTE),
)  # fmt: skip
