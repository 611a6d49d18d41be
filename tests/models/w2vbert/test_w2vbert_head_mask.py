"""w2v-BERT 2.0's head mask (and so Seamless's speech encoder, the same blocks) against transformers'
``Wav2Vec2BertModel`` with forward hooks: a pre-hook on each layer's ``self_attn.linear_out`` multiplying one head's
slice of the attention output, as tests/models/whisper/test_head_mask.py. A small random model (64 wide, 4 heads, 2
conformer blocks, relative-key positions), a ragged batch of random features with its attention mask, float32;
tolerance 1e-5 of each layer's peak over the valid frames (test_w2vbert_parity.py's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.w2vbert.loaded import load_w2vbert

RTOL = 1e-5
LAYERS, HEADS, WIDTH = 2, 4, 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    sizes = dict(
        hidden_size=WIDTH,
        num_attention_heads=HEADS,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        output_hidden_size=WIDTH,
        left_max_position_embeddings=16,
        right_max_position_embeddings=4,
    )
    config = transformers.Wav2Vec2BertConfig(**sizes)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2BertModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if "norm" in name else 0.05))
    folder = tmp_path_factory.mktemp("w2v-bert")
    model.save_pretrained(folder)
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 40, config.feature_projection_input_dim)).astype(np.float32)
    valid = np.array([40, 27], np.int32)
    return model, load_w2vbert(folder), features, valid


def theirs(model, features, valid, mask: torch.Tensor):
    dh = WIDTH // HEADS
    handles = [layer.self_attn.linear_out.register_forward_pre_hook(
        lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),))
        for i, layer in enumerate(model.encoder.layers)]  # fmt: skip
    attention = torch.from_numpy(np.arange(features.shape[1])[None, :] < valid[:, None]).long()
    try:
        return model(torch.from_numpy(features), attention_mask=attention, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()


def test_one_head_ablated_equals_transformers_with_hooks(pair):
    model, ours, features, valid = pair
    mask = np.ones((LAYERS, HEADS), np.float32)
    mask[0, 3] = 0.0
    with torch.no_grad():
        want = [h.numpy() for h in theirs(model, features, valid, torch.from_numpy(mask))]
    got = np.asarray(ours.model(jnp.asarray(features), jnp.asarray(valid), head_mask=mask))
    plain = np.asarray(ours.model(jnp.asarray(features), jnp.asarray(valid)))
    for layer in range(LAYERS + 1):
        peak = np.abs(want[layer]).max()
        for row, n in enumerate(valid):
            err = np.abs(got[layer, row, :n] - want[layer][row, :n]).max()
            assert err <= RTOL * peak, f"layer {layer}, row {row}: {err / peak:.2e}"
    np.testing.assert_array_equal(got[0], plain[0])
    assert np.abs(got[1] - plain[1]).max() > 1e-3 * np.abs(plain[1]).max()


def test_gradient_importance_equals_torch_autograd(pair):
    model, ours, features, valid = pair
    keep = jnp.asarray(np.arange(features.shape[1])[None, :, None] < valid[:, None, None])

    def loss(mask):
        last = ours.model(jnp.asarray(features), jnp.asarray(valid), head_mask=mask)[-1]
        return jnp.sum(jnp.where(keep, last, 0.0) ** 2) / jnp.sum(keep)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones((LAYERS, HEADS), jnp.float32)))
    mask = torch.ones((LAYERS, HEADS), requires_grad=True)
    last = theirs(model, features, valid, mask)[-1]
    keep_t = torch.from_numpy(np.array(keep))
    ((last * keep_t) ** 2).sum().div(keep_t.sum()).backward()
    want = mask.grad.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (got, want)
