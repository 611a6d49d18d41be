"""transformers' PyTorch wav2vec2 / HuBERT as the reference: random models at real widths, saved as folders, and
their ``hidden_states`` on one utterance at a time.

torch and transformers are test-only references (the ``test`` extra); this module imports them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from engine.data.audio import load_audio

SAMPLE_RATE = 16000

# Real widths, the layer count cut to 2 for CI time. Base: wav2vec2-base / hubert-base-ls960 (group norm on conv 0,
# no conv bias, post-LN layers). Large: wav2vec2-large-lv60 / hubert-large-ll60k / XLS-R / MMS (layer norm after
# every conv, conv bias, pre-LN layers and a final layer norm).
BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=2)
LARGE = dict(
    hidden_size=1024,
    num_attention_heads=16,
    intermediate_size=4096,
    num_hidden_layers=2,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    conv_bias=True,
    # not the default 1e-5: a layer norm built with the wrong eps (the conv and adapter norms use torch's 1e-5
    # whatever the config says) then moves outputs by ~5e-4 of their peak, 50x the parity tolerance
    layer_norm_eps=1e-3,
)

# The clips of the ragged batch: (file stem, start s, seconds); the lengths are not multiples of 320 samples.
CLIPS = (
    ("fleurs-en-000", 0.5, 3.1),
    ("fleurs-de-000", 0.5, 1.7),
    ("fleurs-fr-000", 0.4, 2.45),
    ("fleurs-es-000", 0.6, 0.93),
)


def real_clips(fleurs_dir: pathlib.Path) -> list[np.ndarray]:
    """The ``CLIPS`` cut from the real FLEURS sample: ``f32[samples]`` at 16 kHz each."""
    out = []
    for stem, start, seconds in CLIPS:
        audio = load_audio(fleurs_dir / f"{stem}.ogg")
        begin = int(start * SAMPLE_RATE)
        out.append(np.ascontiguousarray(audio[begin : begin + int(seconds * SAMPLE_RATE)]))
    return out


def perturb_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make the weights that transformers initialises to constants random, so that a weight read from the wrong place
    shows: layer and group norms (1 and 0), the positional conv's weight-norm magnitude (initially ``|v|``, which
    would hide a fold that ignores it) and BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(seed)

    def noise(p, scale):
        return torch.randn(p.shape, generator=gen) * scale

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + noise(p, 0.2))
            elif name.endswith("bias"):
                p.copy_(noise(p, 0.1))
            elif name.endswith("original0") or name.endswith("weight_g"):
                p.mul_(torch.exp(noise(p, 0.3)))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(noise(b, 0.3))
            elif name.endswith("running_var"):
                b.copy_(torch.exp(noise(b, 0.3)))
    return model.eval()


def build(cls, config, folder: pathlib.Path, seed: int) -> torch.nn.Module:
    """A random ``cls(config)`` (perturbed, eval mode) saved with ``save_pretrained`` into ``folder``."""
    torch.manual_seed(seed)
    model = perturb_(cls(config), seed)
    model.save_pretrained(folder)
    return model


def write_vocab(folder: pathlib.Path, size: int, lang: str | None = None) -> dict[str, int]:
    """A character vocabulary of ``size`` ids (pad = blank 0, specials, ``|``, letters) as ``vocab.json``, nested under
    ``lang`` as MMS writes it, with a ``tokenizer_config.json`` naming ``lang`` as ``target_lang``."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("éèàçüöäßñ'") + [chr(0x3B1 + i) for i in range(25)]
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *letters][:size]
    assert len(tokens) == size, f"at most {5 + len(letters)} tokens"
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps({lang: vocab} if lang else vocab), encoding="utf-8")
    config = {"tokenizer_class": "Wav2Vec2CTCTokenizer", "target_lang": lang}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return vocab


def write_adapter(model, folder: pathlib.Path, lang: str, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Random weights for exactly what ``model.load_adapter`` replaces (``model._get_adapters()``: every layer's
    attention adapter and ``lm_head``, the head resized to ``vocab_size``) as ``adapter.<lang>.safetensors``."""
    gen = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    weights = {}
    for name, p in model._get_adapters().items():
        shape = {"lm_head.weight": (vocab_size, d), "lm_head.bias": (vocab_size,)}.get(name, tuple(p.shape))
        scale = 0.05 if name.endswith("weight") and "norm" not in name else 0.2
        base = 1.0 if "norm.weight" in name else 0.0
        weights[name] = (base + torch.randn(shape, generator=gen) * scale).contiguous()
    save_file(weights, str(folder / f"adapter.{lang}.safetensors"))
    return {k: v.numpy() for k, v in weights.items()}


def extractor(model) -> transformers.Wav2Vec2FeatureExtractor:
    """The feature extractor released checkpoints ship with: an attention mask for "layer" models only."""
    return transformers.Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=model.config.feat_extract_norm == "layer"
    )


def run_alone(model, waves: list[np.ndarray]) -> tuple[list[list[np.ndarray]], list[np.ndarray] | None]:
    """Each utterance run alone, unpadded: its ``hidden_states`` as ``[f32[frame, embed]] * (L + 1)``, and for a
    ``*ForCTC`` model its logits ``f32[frame, vocab]`` (else None)."""
    fe = extractor(model)
    states, logits = [], []
    for w in waves:
        x = fe(w, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        with torch.inference_mode():
            out = model(x, output_hidden_states=True)
        states.append([h[0].numpy() for h in out.hidden_states])
        logits.append(out.logits[0].numpy() if hasattr(out, "logits") else None)
    return states, logits if logits[0] is not None else None
