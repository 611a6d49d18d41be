"""Feed-forward activation counts (what language-selective units are ranked by, issue 48 item 3) against
transformers' PyTorch MLP outputs, on real FLEURS clips, for Whisper and wav2vec2.

Each side counts, per layer and unit, the valid frames at which the unit's activation after the nonlinearity is
> 0: ours in one pass (``AudioEncoder.ffn_active``, ``Wav2Vec2.ffn_active``), theirs from forward hooks on each
layer's activation (``WhisperEncoderLayer.activation_fn``'s input ``fc1``, ``Wav2Vec2FeedForward.intermediate_act_fn``),
over the same valid frames.

Tolerance: a unit's count may differ only by activations that sit at 0 within rounding. Both sides compute in float32
with different summation orders, so an activation within 1e-5 of that layer's largest may change sign; the test
allows, per unit, as many differences as the reference has such activations, and requires the counts to agree
exactly everywhere else. Measured: 0 or 1 count differs per layer, against 6 to 132 near-zero activations among the
10^5 (Whisper) to 1.7 x 10^6 (wav2vec2) frames x units.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.wav2vec2.loaded import load_wav2vec2
from engine.models.whisper.checkpoints.hf import state_dict_from_hf
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.features import features_for_audio
from engine.models.whisper.model import Whisper
from tests.models.wav2vec2 import w2v_reference as ref

NEAR_ZERO = 1e-5  # of the layer's largest activation


def _check(ours: np.ndarray, hidden: list[np.ndarray]) -> None:
    """``hidden[l]``: f[frames, units] the reference's activations at valid frames only."""
    assert ours.shape == (len(hidden), hidden[0].shape[1])
    for layer, h in enumerate(hidden):
        theirs = np.sum(h > 0, axis=0)
        slack = np.sum(np.abs(h) <= NEAR_ZERO * np.abs(h).max(), axis=0)
        assert np.all(np.abs(ours[layer] - theirs) <= slack), f"layer {layer}"
        assert theirs.sum() > 0.2 * h.size  # a real share of the units is active: the check is not vacuous


# Each model is built once and serves both checks (the counts, and the units switched off): they read it, and every
# hook a test adds is removed before it ends.
WHISPER_WIDTH, WHISPER_LAYERS = 64, 2


@pytest.fixture(scope="module")
def whisper(fleurs_dir):
    """(transformers' Whisper with its weights perturbed, ours with the same weights, log-mel of 3 clips, their valid
    frames)."""
    torch.manual_seed(0)
    width, layers = WHISPER_WIDTH, WHISPER_LAYERS
    cfg = transformers.WhisperConfig(vocab_size=51865, num_mel_bins=80, encoder_layers=layers, decoder_layers=1,
                                     d_model=width, encoder_attention_heads=4, decoder_attention_heads=4,
                                     encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width,
                                     attn_implementation="eager")  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = state_dict_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    ours = Whisper(ModelDimensions(80, 1500, width, 4, layers, 51865, 448, width, 4, 1), sd)
    clips = ref.real_clips(fleurs_dir)[:3]
    mels, frames = zip(*(features_for_audio(clip, 80) for clip in clips), strict=True)
    return hf, ours, np.concatenate(mels), np.concatenate(frames)


@pytest.fixture(scope="module", params=[ref.BASE, ref.LARGE], ids=["post-LN base", "pre-LN large"])
def wav2vec2(request, fleurs_dir, tmp_path_factory):
    """(transformers' Wav2Vec2Model at ``widths``, ours loaded from its folder, the 4 real clips, our padded batch of
    them and its lengths)."""
    folder = tmp_path_factory.mktemp("wav2vec2")
    theirs = ref.build(transformers.Wav2Vec2Model, transformers.Wav2Vec2Config(**request.param), folder, 3)
    loaded = load_wav2vec2(folder)
    waves = ref.real_clips(fleurs_dir)
    wave, lengths = loaded.features(waves)
    return theirs, loaded, waves, wave, lengths


def test_whisper_counts_equal_transformers(whisper):
    hf, ours, mel, frames = whisper
    captured = []
    hooks = [layer.fc1.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in hf.model.encoder.layers]
    try:
        with torch.no_grad():
            hf.model.encoder(torch.from_numpy(mel))
    finally:
        for hook in hooks:
            hook.remove()
    hidden = []
    for layer, z in zip(hf.model.encoder.layers, captured, strict=True):
        h = layer.activation_fn(z).numpy()
        hidden.append(np.concatenate([h[b, : frames[b]] for b in range(len(frames))]))
    _check(np.asarray(ours.encoder.ffn_active(jnp.asarray(mel), jnp.asarray(frames))), hidden)


def test_wav2vec2_counts_equal_transformers(wav2vec2):
    theirs, loaded, waves, wave, lengths = wav2vec2
    counts = np.asarray(loaded.model.ffn_active(jnp.asarray(wave), jnp.asarray(lengths)))
    hidden = [[] for _ in theirs.encoder.layers]
    captured: list = []
    hooks = [layer.feed_forward.intermediate_act_fn.register_forward_hook(lambda m, i, o: captured.append(o))
             for layer in theirs.encoder.layers]  # fmt: skip
    try:
        for clip in waves:  # each clip alone and unpadded, as the parity tests run them
            captured.clear()
            inputs = ref.extractor(theirs)(clip, sampling_rate=16000, return_tensors="pt")
            with torch.no_grad():
                theirs(inputs.input_values)
            for layer, h in enumerate(captured):
                hidden[layer].append(h[0].numpy())
    finally:
        for hook in hooks:
            hook.remove()
    _check(counts, [np.concatenate(h) for h in hidden])


# -- switching units off (the intervention on language-selective units) ------------------------------------------------

SWITCHED_OFF = 0.1  # share of each layer's units set to zero
# float32 on both sides, other summation orders: max |ours - theirs| / max |theirs| per layer (measured <= 1.1e-6)
POOLED_RTOL = 1e-5


def _scale(layers: int, units: int, seed: int) -> np.ndarray:
    scale = np.ones((layers, units), np.float32)
    rng = np.random.default_rng(seed)
    for layer in range(layers):
        scale[layer, rng.choice(units, int(SWITCHED_OFF * units), replace=False)] = 0
    return scale


def _zeroing(linears, scale):
    """Pre-hooks on each layer's second feed-forward matrix: its input (the activations) times the layer's scale."""

    def hook(factor):
        return lambda module, args: (args[0] * factor,)

    return [lin.register_forward_pre_hook(hook(torch.from_numpy(s))) for lin, s in zip(linears, scale, strict=True)]


def _check_pooled(ours: np.ndarray, theirs: list[np.ndarray], unscaled: np.ndarray) -> None:
    """ours, unscaled: f32[layer, batch, embed] mean-pooled; theirs: per layer f32[batch, embed]."""
    assert ours.shape[0] == len(theirs)
    for layer, t in enumerate(theirs):
        assert np.abs(ours[layer] - t).max() <= POOLED_RTOL * np.abs(t).max(), f"layer {layer}"
    changed = np.abs(ours[-1] - unscaled[-1]).max() / np.abs(unscaled[-1]).max()
    assert changed > 1e-2  # the switched-off units changed the last layer: the comparison is not vacuous


def _last_layer_output(layer, captured):
    return layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))


def test_whisper_switched_off_units_equal_transformers(whisper):
    """``AudioEncoder.scaled_sums`` against WhisperEncoder with the same units zeroed by hooks: every layer (the stem,
    each block, ln_post) mean-pooled over the valid frames."""
    hf, ours, mel, frames = whisper
    width, layers = WHISPER_WIDTH, WHISPER_LAYERS
    scale = _scale(layers, 4 * width, seed=3)
    encoder = hf.model.encoder
    captured: list = []
    hooks = _zeroing([layer.fc2 for layer in encoder.layers], scale)
    hooks.append(_last_layer_output(encoder.layers[-1], captured))
    try:
        with torch.no_grad():
            states = encoder(torch.from_numpy(mel), output_hidden_states=True).hidden_states
    finally:
        for hook in hooks:
            hook.remove()
    full = [h.numpy() for h in states[:layers]] + [captured[0].numpy(), states[layers].numpy()]
    keep = (np.arange(1500)[None, :] < frames[:, None])[..., None]
    theirs = [np.sum(np.where(keep, h, 0), axis=1) / frames[:, None] for h in full]
    mel_j, frames_j = jnp.asarray(mel), jnp.asarray(frames)
    pooled = np.asarray(ours.encoder.scaled_sums(mel_j, frames_j, jnp.asarray(scale))) / frames[None, :, None]
    unscaled = np.asarray(ours.encoder.scaled_sums(mel_j, frames_j, jnp.ones_like(scale))) / frames[None, :, None]
    _check_pooled(pooled, theirs, unscaled)
    # all ones is the unchanged model: the same states as encode's, pooled
    encoded = np.asarray(ours.encoder(mel_j))
    plain = np.sum(np.where(keep[None], encoded, 0), axis=2) / frames[None, :, None]
    np.testing.assert_allclose(unscaled, plain, rtol=0, atol=POOLED_RTOL * np.abs(plain).max())


def test_wav2vec2_switched_off_units_equal_transformers(wav2vec2):
    theirs, loaded, waves, wave, lengths = wav2vec2
    n_layers, units = theirs.config.num_hidden_layers, theirs.config.intermediate_size
    scale = _scale(n_layers, units, seed=5)
    sums, frames = loaded.scaled_sums(wave, lengths, scale)
    pooled = sums / frames[None, :, None]
    unscaled_sums, _ = loaded.scaled_sums(wave, lengths, np.ones_like(scale))
    unscaled = unscaled_sums / frames[None, :, None]
    captured: list = []
    layers = theirs.encoder.layers
    hooks = _zeroing([layer.feed_forward.output_dense for layer in layers], scale)
    hooks.append(_last_layer_output(layers[-1], captured))
    try:
        states, _ = ref.run_alone(theirs, waves)  # each clip alone and unpadded
    finally:
        for hook in hooks:
            hook.remove()
    theirs_pooled = [np.stack([s[layer].mean(axis=0) for s in states]) for layer in range(n_layers)]
    theirs_pooled.append(np.stack([c[0].numpy().mean(axis=0) for c in captured]))  # the last layer, before any norm
    assert [len(s[0]) for s in states] == list(frames)
    _check_pooled(pooled, theirs_pooled, unscaled)
    encoded, _ = loaded.encode(wave, lengths)
    encoded = np.asarray(encoded)
    plain = encoded.sum(axis=2) / frames[None, :, None]  # encode zeroes the frames past each row's end
    np.testing.assert_allclose(unscaled, plain, rtol=0, atol=POOLED_RTOL * np.abs(plain).max())
