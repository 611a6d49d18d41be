"""The wav2vec2 family's head mask against transformers' PyTorch models with forward hooks (code we did not write).

As for Whisper (tests/models/whisper/test_head_mask.py): transformers 5 has no ``head_mask``, so the reference is a
pre-hook on each layer's ``attention.out_proj`` multiplying one head's slice of the attention output. Small random
models of both layouts (post-LN with group norm, pre-LN with layer norms), a ragged batch of two random waves on our
side (theirs: each wave alone, unpadded), float32; tolerance 1e-5 of each layer's peak (test_wav2vec2_parity.py's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.wav2vec2.loaded import load_wav2vec2
from tests.models.wav2vec2 import w2v_reference as ref
from tests.parity import attention_stats_twin, rel_err

RTOL = 1e-5
SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=3, conv_dim=(32,) * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
LAYOUTS = {"post-LN": {}, "pre-LN": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)}
LAYERS, HEADS = SMALL["num_hidden_layers"], SMALL["num_attention_heads"]


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    theirs = ref.build(transformers.Wav2Vec2Model, transformers.Wav2Vec2Config(**SMALL, **LAYOUTS[request.param]),
                       folder, seed=4)  # fmt: skip
    rng = np.random.default_rng(6)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 5360)]
    return theirs, load_wav2vec2(folder), waves


def hooked_states(model, waves, mask: torch.Tensor) -> list[list[np.ndarray]]:
    dh = SMALL["hidden_size"] // HEADS

    def hook(layer):
        return lambda module, args: (args[0] * mask[layer].repeat_interleave(dh),)

    handles = [layer.attention.out_proj.register_forward_pre_hook(hook(i))
               for i, layer in enumerate(model.encoder.layers)]  # fmt: skip
    try:
        return ref.run_alone(model, waves)[0]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("layer, head", [(0, 2), (2, 0)])
def test_one_head_ablated_equals_transformers_with_hooks(pair, layer, head):
    theirs, ours, waves = pair
    mask = np.ones((LAYERS, HEADS), np.float32)
    mask[layer, head] = 0.0
    reference = hooked_states(theirs, waves, torch.from_numpy(mask))
    wave, lengths = ours.features(waves)
    states, frames = ours.model(jnp.asarray(wave), jnp.asarray(lengths), head_mask=mask)
    plain, _ = ours.model(jnp.asarray(wave), jnp.asarray(lengths))
    states, plain = np.asarray(states), np.asarray(plain)
    for i, want in enumerate(reference):
        n = int(frames[i])
        errors = [rel_err(states[k, i, :n], want[k]) for k in range(LAYERS + 1)]
        assert max(errors) < RTOL, (i, errors)
    np.testing.assert_array_equal(states[: layer + 1], plain[: layer + 1])  # layers before the ablated block
    assert rel_err(states[layer + 1], plain[layer + 1]) > 1e-3


def test_masks_per_row_and_gradient_importance(pair):
    """One mask per batch row equals each row's mask alone; d(loss)/d(mask) equals torch autograd's."""
    theirs, ours, waves = pair
    wave, lengths = (jnp.asarray(a) for a in ours.features(waves))
    masks = np.ones((2, LAYERS, HEADS), np.float32)
    masks[0, 1, 1] = masks[1, 0, 3] = 0.0
    both = np.asarray(ours.model(wave, lengths, head_mask=masks)[0])
    for r in range(2):
        alone = np.asarray(ours.model(wave, lengths, head_mask=masks[r])[0])[:, r]
        assert rel_err(both[:, r], alone) < RTOL

    one = wave[:1, : len(waves[0])]  # the first wave alone, unpadded, as transformers runs it

    def loss(mask):
        states, _ = ours.model(one, jnp.asarray([len(waves[0])]), (LAYERS,), head_mask=mask)
        return jnp.mean(states[0] ** 2)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones((LAYERS, HEADS), jnp.float32)))
    mask = torch.ones((LAYERS, HEADS), requires_grad=True)
    dh = SMALL["hidden_size"] // HEADS
    handles = [layer.attention.out_proj.register_forward_pre_hook(
        lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),))
        for i, layer in enumerate(theirs.encoder.layers)]  # fmt: skip
    try:
        x = ref.extractor(theirs)(waves[0], sampling_rate=ref.SAMPLE_RATE, return_tensors="pt").input_values
        (theirs(x, output_hidden_states=True).hidden_states[-1] ** 2).mean().backward()
    finally:
        for h in handles:
            h.remove()
    assert rel_err(got, mask.grad.numpy()) < 1e-4


def test_attention_statistics_equal_transformers_attention_weights(pair):
    """Each head's attention statistics (``engine.models.common.attention_stats``) on a ragged batch, the padding's
    keys masked, equal those of transformers' attention weights (``output_attentions``, eager) of each wave alone,
    through a NumPy twin."""
    from engine.models.wav2vec2.encoder import Wav2Vec2Encoder

    theirs, ours, waves = pair
    encoder = Wav2Vec2Encoder(ours)
    inputs, frames = zip(*(encoder.windows(w, "window") for w in waves), strict=True)
    frames = np.array([int(f[0]) for f in frames])
    stats = encoder.attention_stats(encoder.collate([i[0] for i in inputs], 2), frames, local=2)
    for row, w in enumerate(waves):
        x = ref.extractor(theirs)(w, sampling_rate=ref.SAMPLE_RATE, return_tensors="pt").input_values
        theirs.config._attn_implementation = "eager"
        with torch.no_grad():
            attentions = theirs(x, output_attentions=True).attentions
        assert attentions[0].shape[-1] == frames[row]
        for layer, weights in enumerate(attentions):
            want = attention_stats_twin(weights[0].numpy(), int(frames[row]), 2)
            np.testing.assert_allclose(stats[row, layer], want, rtol=1e-4, atol=1e-5)
