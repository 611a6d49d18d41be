"""Random-weight Qwen3-ASR and Qwen3-Omni folders in the released layout (``babelgrid random-model --kind qwen3-asr``,
``qwen3-omni``), written with NumPy (``engine.models.common.random_weights``).

Each is the released ``config.json`` (``model_type`` ``qwen3_asr`` or ``qwen3_omni_moe``, the tower's settings under
``thinker_config.audio_config``) with ``model.safetensors`` holding ``thinker.audio_tower.*`` only (the projection
``proj1``/``proj2`` inside it, as released), and the Whisper feature extractor's ``preprocessor_config.json``. The
language model (and Omni's talker and code2wav) is left out: babelgrid never reads it. The tower keeps the released
structure (128 mels, chunks of 100 mel frames, attention windows of 800, GELU, feed-forward 4 x the width); the
downsampler has ``width / 2`` channels (480 released) and the projection is 2 x ``--width`` wide.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import (
    WEIGHTS_FILE,
    RandomKind,
    Sizes,
    random_tensors,
    save_weights,
    write_json,
)
from engine.models.speechllm.qwen3_checkpoints import TOWER, state_shapes
from engine.models.speechllm.qwen3_config import ASR, HUB_IDS, OMNI, from_hf
from engine.models.speechllm.random_folder import FEATURES

TYPES = {ASR: ("qwen3_asr", "qwen3_asr_audio_encoder", "Qwen3ASRForConditionalGeneration"),
         OMNI: ("qwen3_omni_moe", "qwen3_omni_moe_audio_encoder", "Qwen3OmniMoeForConditionalGeneration")}  # fmt: skip


def config(kind: str, sizes: Sizes) -> dict:
    """The released ``config.json`` of a tower of ``sizes`` (the text model named only by its width)."""
    w = sizes.width
    full, tower, architecture = TYPES[kind]
    audio = dict(model_type=tower, num_mel_bins=128, d_model=w, encoder_attention_heads=sizes.heads,
                 encoder_ffn_dim=4 * w, encoder_layers=sizes.layers, downsample_hidden_size=max(2, w // 2),
                 n_window=50, n_window_infer=800, output_dim=2 * w, activation_function="gelu",
                 max_source_positions=1500, conv_chunksize=500)  # fmt: skip
    thinker = {"audio_config": audio, "text_config": {"model_type": "qwen3", "hidden_size": 2 * w}}
    return {"model_type": full, "architectures": [architecture], "thinker_config": thinker}


def _writer(kind: str):
    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        raw = config(kind, sizes)
        tensors = random_tensors(state_shapes(from_hf(raw)), rng)
        save_weights(folder / WEIGHTS_FILE, {"thinker." + k: v for k, v in tensors.items() if k.startswith(TOWER)})
        write_json(folder / "config.json", raw)
        write_json(folder / "preprocessor_config.json", FEATURES)

    return write


NOTE = "the audio tower only (no language model); downsampler width / 2 channels, projection 2 x --width wide"
KINDS = (
    RandomKind("qwen3-asr", HUB_IDS[ASR][0], Sizes(2, 64, 4), _writer(ASR), note=NOTE),
    RandomKind("qwen3-omni", HUB_IDS[OMNI][0], Sizes(2, 64, 4), _writer(OMNI), note=NOTE),
)
