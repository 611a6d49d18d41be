"""OWSM's encoder head mask against ESPnet's own modules with forward hooks (code we did not write): a pre-hook on each
E-Branchformer block's ``attn.linear_out`` multiplying one head's slice of ``MultiHeadedAttention``'s output, as
tests/models/whisper/test_head_mask.py does for transformers. The random base-width model of test_owsm_parity.py
(``owsm_reference``: 768 wide, 12 heads, 2 blocks, a 10 s window), one real clip's features on both sides, float32;
tolerance 1e-5 of each layer's peak (test_owsm_parity.py's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.models.owsm import owsm_reference as ref

REL = 1e-5


@pytest.fixture(scope="module")
def owsm(tmp_path_factory, fleurs_dir):
    from engine.models.owsm.loaded import load_owsm

    root = ref.write_model(tmp_path_factory.mktemp("owsm"), fleurs_dir)
    ours = load_owsm(root)
    features, _ = ours.features(ref.real_clips(fleurs_dir)[:1])
    return ref.speech2text(root, 4).s2t_model.encoder, ours, np.asarray(features)


def espnet_layers(enc, features, mask: torch.Tensor) -> list:
    n_head = enc.encoders[0].attn.h
    dh = enc.encoders[0].attn.d_k
    handles = [
        block.attn.linear_out.register_forward_pre_hook(
            lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),)
        )
        for i, block in enumerate(enc.encoders)
    ]
    assert mask.shape[1] == n_head
    feats = torch.from_numpy(features)
    try:
        layer0, _ = enc.embed(feats, torch.ones(1, 1, feats.shape[1], dtype=torch.bool))
        (out, hidden), _, _ = enc(feats, torch.tensor([feats.shape[1]]), return_all_hs=True)
    finally:
        for h in handles:
            h.remove()
    return [layer0, *hidden, out]


def test_one_head_ablated_equals_espnet_with_hooks(owsm):
    enc, ours, features = owsm
    n_layer, n_head = ours.config.n_layer, ours.config.n_head
    mask = np.ones((n_layer, n_head), np.float32)
    mask[1, 5] = 0.0
    with torch.no_grad():
        want = [t[0].numpy() for t in espnet_layers(enc, features, torch.from_numpy(mask))]
    got = np.asarray(ours.encoder(jnp.asarray(features), head_mask=mask))[:, 0]
    plain = np.asarray(ours.encoder(jnp.asarray(features)))[:, 0]
    for layer, w in enumerate(want):
        peak = np.abs(w).max()
        assert np.abs(got[layer] - w).max() <= REL * peak, f"layer {layer}"
    np.testing.assert_array_equal(got[:2], plain[:2])
    assert np.abs(got[2] - plain[2]).max() > 1e-3 * np.abs(plain[2]).max()


def test_gradient_importance_equals_torch_autograd(owsm):
    enc, ours, features = owsm
    shape = (ours.config.n_layer, ours.config.n_head)

    def loss(mask):
        return jnp.mean(ours.encoder(jnp.asarray(features), head_mask=mask)[-1] ** 2)

    got = np.asarray(jax.grad(loss)(jnp.ones(shape, jnp.float32)))
    mask = torch.ones(shape, requires_grad=True)
    (espnet_layers(enc, features, mask)[-1] ** 2).mean().backward()
    want = mask.grad.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (got, want)
