"""Random-weight Qwen3-ASR, Qwen3-Omni and Qwen2.5-Omni folders in the released layout (``babelgrid random-model
--kind qwen3-asr``, ``qwen3-omni``, ``qwen2.5-omni``), written with NumPy (``engine.models.common.random_weights``).

Each is the released ``config.json`` (``model_type`` ``qwen3_asr``, ``qwen3_omni_moe`` or ``qwen2_5_omni``, the
tower's settings under ``thinker_config.audio_config``) with ``model.safetensors`` holding ``thinker.audio_tower.*``
only (the projection inside it, as released: Qwen3's ``proj1``/``proj2``, Qwen2.5-Omni's ``proj`` and its unread
``audio_bos_eos_token``), and the Whisper feature extractor's ``preprocessor_config.json``. The language model (and
the Omni models' talker and vocoder) is left out: babelgrid never reads it. The tower keeps the released structure
(128 mels; Qwen3: chunks of 100 mel frames, attention windows of 800; Qwen2.5-Omni: chunks of 200; GELU, feed-forward
4 x the width); Qwen3's downsampler has ``width / 2`` channels (480 released) and the projection is 2 x ``--width``
wide.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint
from engine.models.speechllm.qwen3_checkpoints import TOWER, state_shapes
from engine.models.speechllm.qwen3_config import ASR, HUB_IDS, OMNI, OMNI25, from_hf
from engine.models.speechllm.random_folder import FEATURES

TYPES = {ASR: ("qwen3_asr", "qwen3_asr_audio_encoder", "Qwen3ASRForConditionalGeneration"),
         OMNI: ("qwen3_omni_moe", "qwen3_omni_moe_audio_encoder", "Qwen3OmniMoeForConditionalGeneration"),
         OMNI25: ("qwen2_5_omni", "qwen2_5_omni_audio_encoder", "Qwen2_5OmniForConditionalGeneration")}  # fmt: skip


def config(kind: str, sizes: Sizes) -> dict:
    """The released ``config.json`` of a tower of ``sizes`` (the text model named only by its width)."""
    w = sizes.width
    full, tower, architecture = TYPES[kind]
    audio = dict(model_type=tower, num_mel_bins=128, d_model=w, encoder_attention_heads=sizes.heads,
                 encoder_ffn_dim=4 * w, encoder_layers=sizes.layers, downsample_hidden_size=max(2, w // 2),
                 n_window=50, n_window_infer=800, output_dim=2 * w, activation_function="gelu",
                 max_source_positions=1500, conv_chunksize=500)  # fmt: skip
    if kind == OMNI25:  # Whisper's stem, attention within each 2 s chunk
        for key in ("downsample_hidden_size", "n_window_infer", "conv_chunksize"):
            del audio[key]
        audio["n_window"] = 100
    thinker = {"audio_config": audio, "text_config": {"model_type": "qwen3", "hidden_size": 2 * w}}
    return {"model_type": full, "architectures": [architecture], "thinker_config": thinker}


def _writer(kind: str):
    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        raw = config(kind, sizes)
        tensors = random_tensors(state_shapes(from_hf(raw)), rng)
        if kind == OMNI25:  # the thinker's audio begin/end embeddings, held in the tower
            tensors[f"{TOWER}audio_bos_eos_token.weight"] = rng.standard_normal((2, 2 * sizes.width)).astype(np.float32)
        tower = {"thinker." + k: v for k, v in tensors.items() if k.startswith(TOWER)}
        write_checkpoint(folder, tower, raw, {"preprocessor_config.json": FEATURES})

    return write


NOTE = "the audio tower only (no language model); downsampler width / 2 channels, projection 2 x --width wide"
NOTE25 = "the audio tower only (no language model); projection 2 x --width wide"
KINDS = (
    RandomKind("qwen3-asr", HUB_IDS[ASR][0], Sizes(2, 64, 4), _writer(ASR), note=NOTE),
    RandomKind("qwen3-omni", HUB_IDS[OMNI][0], Sizes(2, 64, 4), _writer(OMNI), note=NOTE),
    RandomKind("qwen2.5-omni", HUB_IDS[OMNI25][0], Sizes(2, 64, 4), _writer(OMNI25), note=NOTE25),
)
