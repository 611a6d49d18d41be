"""Random-weight Gemma 3n and Gemma 4 folders in the released layout (``babelgrid random-model --kind gemma3n``,
``gemma4``), written with NumPy (``engine.models.common.random_weights``).

Each is the full model's ``config.json`` (``model_type`` ``gemma3n`` or ``gemma4``, the tower's settings under
``audio_config``, the text model named only by its width) with ``model.safetensors`` holding ``model.audio_tower.*``
and ``model.embed_audio.*`` only (3n's unread hard-token table included, as released), and the feature extractor's
``preprocessor_config.json`` (transformers' defaults). The language and vision models are left out: babelgrid never
reads them. The tower keeps the released structure (128 mels, chunks of 12 frames over 12 before, the light
convolution's 5 taps, feed-forward 4 x the width, 3n's reduction by 4, Gemma 4's clipped linears with the unbounded
clips transformers initialises and an output projection of 1.5 x the width); the subsampler's second convolution has
8 channels (32 released); the text model is 2 x ``--width`` wide.
"""

from __future__ import annotations

import pathlib

import numpy as np

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, write_checkpoint
from engine.models.speechllm.usm_checkpoints import CLIP_BOUNDS, EMBED, state_shapes
from engine.models.speechllm.usm_config import GEMMA3N, GEMMA4, HUB_IDS, from_hf
from engine.models.speechllm.usm_features import DEFAULTS

ARCHITECTURES = {GEMMA3N: "Gemma3nForConditionalGeneration", GEMMA4: "Gemma4ForConditionalGeneration"}
EXTRACTORS = {GEMMA3N: "Gemma3nAudioFeatureExtractor", GEMMA4: "Gemma4AudioFeatureExtractor"}


def config(kind: str, sizes: Sizes) -> dict:
    """The released ``config.json`` of a tower of ``sizes``."""
    w = sizes.width
    if kind == GEMMA3N:
        audio = dict(model_type="gemma3n_audio", input_feat_size=128, hidden_size=w,
                     conf_num_attention_heads=sizes.heads, conf_num_hidden_layers=sizes.layers,
                     sscp_conv_channel_size=[32, 8], conf_attention_chunk_size=12,
                     conf_attention_context_left=13, conf_attention_context_right=0, conf_attention_logit_cap=50.0,
                     conf_conv_kernel_size=5, conf_reduction_factor=4, conf_residual_weight=0.5,
                     sscp_conv_group_norm_eps=1e-3, sscp_conv_kernel_size=[[3, 3], [3, 3]],
                     sscp_conv_stride_size=[[2, 2], [2, 2]], rms_norm_eps=1e-6, gradient_clipping=1e10,
                     vocab_size=128, vocab_offset=262272)  # fmt: skip
        text = {"model_type": "gemma3n_text", "hidden_size": 2 * w}
    else:
        audio = dict(model_type="gemma4_audio", hidden_size=w, num_attention_heads=sizes.heads,
                     num_hidden_layers=sizes.layers, hidden_act="silu", subsampling_conv_channels=[128, 8],
                     conv_kernel_size=5, residual_weight=0.5, attention_chunk_size=12, attention_context_left=13,
                     attention_context_right=0, attention_logit_cap=50.0, attention_invalid_logits_value=-1.0e9,
                     use_clipped_linears=True, rms_norm_eps=1e-6, gradient_clipping=1e10,
                     output_proj_dims=3 * w // 2)  # fmt: skip
        text = {"model_type": "gemma4_text", "hidden_size": 2 * w}
    return {"model_type": kind, "architectures": [ARCHITECTURES[kind]], "audio_config": audio, "text_config": text}


def _writer(kind: str):
    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        raw = config(kind, sizes)
        c = from_hf(raw)
        tensors = random_tensors(state_shapes(c), rng)
        for name in tensors:  # transformers' initial clips: unbounded
            if name.rsplit(".", 1)[-1] in CLIP_BOUNDS:
                tensors[name] = np.array(-np.inf if name.endswith("_min") else np.inf, np.float32)
        if kind == GEMMA3N:  # the hard-token path the LLM reads for its audio special tokens
            tensors[f"{EMBED}embedding.weight"] = rng.standard_normal((128, c.width)).astype(np.float32)
            tensors[f"{EMBED}hard_embedding_norm.weight"] = np.ones(c.width, np.float32)
        extractor = {"feature_extractor_type": EXTRACTORS[kind], "sampling_rate": 16000, "padding_value": 0.0,
                     "padding_side": "right", "return_attention_mask": True, **DEFAULTS[kind]}  # fmt: skip
        tensors = {"model." + k: v for k, v in tensors.items()}
        write_checkpoint(folder, tensors, raw, {"preprocessor_config.json": extractor})

    return write


NOTE = "the audio tower and embed_audio only (no language or vision model); the subsampler's second conv 8 channels"
KINDS = (
    RandomKind("gemma3n", HUB_IDS[GEMMA3N][0], Sizes(2, 64, 4), _writer(GEMMA3N), note=NOTE),
    RandomKind("gemma4", HUB_IDS[GEMMA4][0], Sizes(2, 64, 4), _writer(GEMMA4), note=NOTE),
)
