"""The speech-LLM towers' head mask (Qwen2-Audio, Voxtral, Audio Flamingo 3: one block code) against transformers'
PyTorch Voxtral tower with forward hooks: a pre-hook on each layer's ``self_attn.out_proj`` multiplying one head's slice
of the attention output, as tests/models/whisper/test_head_mask.py. A small random tower (64 wide, 4 heads, 3 blocks,
128 mels, 1500 positions; the language model one tiny layer, never run), random log-mel windows, float32; tolerance
1e-5 of each layer's peak (test_speechllm.py's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.speechllm.loaded import load_speechllm
from tests.parity import rel_err

RTOL = 1e-5
LAYERS, HEADS, WIDTH = 3, 4, 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(2)
    audio = dict(num_mel_bins=128, max_source_positions=1500, hidden_size=WIDTH, num_attention_heads=HEADS,
                 intermediate_size=128, num_hidden_layers=LAYERS)  # fmt: skip
    text = dict(hidden_size=64, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                vocab_size=128, head_dim=8)  # fmt: skip
    model = transformers.VoxtralForConditionalGeneration(transformers.VoxtralConfig(audio_config=audio,
                                                                                    text_config=text))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("voxtral")
    model.eval().save_pretrained(folder)
    mel = np.random.default_rng(3).standard_normal((2, 128, 3000)).astype(np.float32)
    return model, load_speechllm(folder), mel


def hooked(model, mask: torch.Tensor):
    """(pre-hook handles on every tower layer's out_proj, the list the last block's output lands in)."""
    tower = model.model.audio_tower
    dh = WIDTH // HEADS
    handles = [
        layer.self_attn.out_proj.register_forward_pre_hook(
            lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),)
        )
        for i, layer in enumerate(tower.layers)
    ]
    last: list = []
    handles.append(tower.layers[-1].register_forward_hook(
        lambda m, i, o: last.append(o[0] if isinstance(o, tuple) else o)))  # fmt: skip
    return handles, last


def theirs_layers(model, mel, mask: torch.Tensor):
    """The tower's stem and every block's output (hidden_states ends with the normed output instead of the last)."""
    handles, last = hooked(model, mask)
    try:
        out = model.model.get_audio_features(torch.from_numpy(mel), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return [h.detach().numpy() for h in out.hidden_states[:-1]] + [last[0].detach().numpy()]


def test_one_head_ablated_equals_transformers_with_hooks(pair):
    model, ours, mel = pair
    mask = np.ones((LAYERS, HEADS), np.float32)
    mask[1, 2] = 0.0
    frames = jnp.full(len(mel), 1500, jnp.int32)
    with torch.no_grad():
        want = theirs_layers(model, mel, torch.from_numpy(mask))
    got = np.asarray(ours.model(jnp.asarray(mel), frames, tuple(range(LAYERS + 1)), head_mask=mask))
    plain = np.asarray(ours.model(jnp.asarray(mel), frames, tuple(range(LAYERS + 1))))
    for i in range(LAYERS + 1):
        assert rel_err(got[i], want[i]) < RTOL, f"layer {i}"
    np.testing.assert_array_equal(got[:2], plain[:2])
    assert rel_err(got[2], plain[2]) > 1e-3


def test_gradient_importance_equals_torch_autograd(pair):
    model, ours, mel = pair
    frames = jnp.full(len(mel), 1500, jnp.int32)

    def loss(mask):
        return jnp.mean(ours.model(jnp.asarray(mel), frames, (LAYERS,), head_mask=mask)[0] ** 2)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones((LAYERS, HEADS), jnp.float32)))
    mask = torch.ones((LAYERS, HEADS), requires_grad=True)
    handles, last = hooked(model, mask)
    try:
        model.model.get_audio_features(torch.from_numpy(mel))
        (last[0] ** 2).mean().backward()
    finally:
        for h in handles:
            h.remove()
    assert rel_err(got, mask.grad.numpy()) < 1e-4
