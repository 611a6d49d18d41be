"""A random OpenAI-named Whisper state dict, for tests and benchmarks (``random_state_dict``)."""

from __future__ import annotations

import numpy as np

from engine.models.whisper.dims import ModelDimensions, sinusoids


def random_state_dict(dims: ModelDimensions, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    """A random OpenAI-named state dict of the given dims, for tests and benchmarks."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ln(prefix, d):
        return {f"{prefix}.weight": (1 + w(d)).astype(np.float32), f"{prefix}.bias": w(d)}

    def attn(prefix, d):
        out = {f"{prefix}.key.weight": w(d, d)}
        for name in ("query", "value", "out"):
            out |= {f"{prefix}.{name}.weight": w(d, d), f"{prefix}.{name}.bias": w(d)}
        return out

    def block(prefix, d, cross):
        out = {**attn(f"{prefix}.attn", d), **ln(f"{prefix}.attn_ln", d), **ln(f"{prefix}.mlp_ln", d)}
        out |= {f"{prefix}.mlp.0.weight": w(4 * d, d), f"{prefix}.mlp.0.bias": w(4 * d)}
        out |= {f"{prefix}.mlp.2.weight": w(d, 4 * d), f"{prefix}.mlp.2.bias": w(d)}
        if cross:
            out |= attn(f"{prefix}.cross_attn", d) | ln(f"{prefix}.cross_attn_ln", d)
        return out

    da, dt = dims.n_audio_state, dims.n_text_state
    sd = {
        "encoder.conv1.weight": w(da, dims.n_mels, 3),
        "encoder.conv1.bias": w(da),
        "encoder.conv2.weight": w(da, da, 3),
        "encoder.conv2.bias": w(da),
        "encoder.positional_embedding": sinusoids(dims.n_audio_ctx, da),
        **ln("encoder.ln_post", da),
        "decoder.token_embedding.weight": w(dims.n_vocab, dt),
        "decoder.positional_embedding": w(dims.n_text_ctx, dt),
        **ln("decoder.ln", dt),
    }
    for i in range(dims.n_audio_layer):
        sd |= block(f"encoder.blocks.{i}", da, False)
    for i in range(dims.n_text_layer):
        sd |= block(f"decoder.blocks.{i}", dt, True)
    return sd
