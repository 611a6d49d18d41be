"""FastConformer's head mask (Parakeet, Canary's encoder) against transformers' ``ParakeetEncoder`` with forward hooks:
a pre-hook on each layer's ``self_attn.o_proj`` multiplying one head's slice of the attention output, as
tests/models/whisper/test_head_mask.py. A small random Parakeet-CTC (64 wide, 4 heads, 2 blocks; every parameter
perturbed, BatchNorm statistics drawn), random features with an attention mask on both sides, float32 at "highest";
tolerance 1e-5 of each layer's peak over the valid frames (test_fastconformer.py's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.fastconformer.loaded import load_fastconformer
from tests.models.fastconformer.test_fastconformer import perturb

RTOL = 1e-5
LAYERS, HEADS, WIDTH = 2, 4, 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    encoder = dict(num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=128,
                   subsampling_conv_channels=16)  # fmt: skip
    torch.manual_seed(0)
    model = perturb(transformers.ParakeetForCTC(transformers.ParakeetCTCConfig(encoder_config=encoder)), seed=3)
    folder = tmp_path_factory.mktemp("parakeet")
    model.save_pretrained(folder)
    rng = np.random.default_rng(7)
    features = rng.standard_normal((1, 200, model.config.encoder_config.num_mel_bins)).astype(np.float32)
    return model.encoder, load_fastconformer(folder), features


def theirs(encoder, features, mask: torch.Tensor):
    dh = WIDTH // HEADS
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),)
        )
        for i, layer in enumerate(encoder.layers)
    ]
    try:
        attention = torch.ones(features.shape[:2], dtype=torch.long)
        return encoder(torch.from_numpy(features), attention_mask=attention, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()


def test_one_head_ablated_equals_transformers_with_hooks(pair):
    encoder, ours, features = pair
    mask = np.ones((LAYERS, HEADS), np.float32)
    mask[1, 0] = 0.0
    valid = jnp.asarray([features.shape[1]], jnp.int32)
    with torch.no_grad():
        want = [h[0].numpy() for h in theirs(encoder, features, torch.from_numpy(mask))]
    with jax.default_matmul_precision("highest"):
        got = np.asarray(ours.model(jnp.asarray(features), valid, head_mask=mask))[:, 0]
        plain = np.asarray(ours.model(jnp.asarray(features), valid))[:, 0]
    for layer, w in enumerate(want):
        assert np.abs(got[layer] - w).max() <= RTOL * np.abs(w).max(), f"layer {layer}"
    np.testing.assert_array_equal(got[:2], plain[:2])
    assert np.abs(got[2] - plain[2]).max() > 1e-3 * np.abs(plain[2]).max()


def test_gradient_importance_equals_torch_autograd(pair):
    encoder, ours, features = pair
    valid = jnp.asarray([features.shape[1]], jnp.int32)

    def loss(mask):
        return jnp.mean(ours.model(jnp.asarray(features), valid, head_mask=mask)[-1] ** 2)

    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones((LAYERS, HEADS), jnp.float32)))
    mask = torch.ones((LAYERS, HEADS), requires_grad=True)
    (theirs(encoder, features, mask)[-1] ** 2).mean().backward()
    want = mask.grad.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (got, want)
