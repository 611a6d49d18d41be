"""The FastConformer family (Parakeet-CTC, Canary's encoder) against transformers' PyTorch models, every layer.

Models: random weights at the real widths, depth cut to 2 blocks for CI time. Parakeet-CTC 0.6B
(``ParakeetForCTC``: hidden 1024, 8 heads, feed-forward 4096, depthwise kernel 9, subsampling 3 x (3x3, stride 2)
of 256 channels, 80 mel bins, inputs scaled by sqrt(1024), 1025 CTC classes, blank 1024) and Canary-1B v2's encoder
(``CanaryForConditionalGeneration``: the same widths, 128 mel bins, no input scaling; its decoder kept at its
1024 width but one layer and a 64-token vocabulary, not read here). Every parameter is perturbed and the BatchNorm
running statistics drawn at random, so that a weight read from the wrong place, a norm, bias or BatchNorm statistic
left out moves the layers by far more than the bound. Each folder is written by ``save_pretrained`` and loaded with
``load_fastconformer`` (Canary's encoder read by its ``model.encoder.`` prefix).

Clips: three real FLEURS clips (three languages), each encoded alone as the issue asks, cut to 4.0 s: our encoder
compiles a program for each input length, and one length serves the three clips (a length each compiled three); the
ragged batch takes them at 4.0, 6.1 and 5.0 s, row by row against transformers on each alone. transformers
reads ``ParakeetFeatureExtractor``'s features and attention mask with ``output_hidden_states=True`` (its
``hidden_states[0]`` is the scaled subsampling output the first block reads, checked with a hook; ``[k]`` block k's).

Bound: at every layer and every valid frame, ``|ours - theirs| <= 1e-5 x`` the layer's largest magnitude, float32.
Both sides compute the same float32 arithmetic in a different order (matrix products over 1024 and 4096 terms, norm
statistics over 1024, softmax over up to 77 keys); that rounding gives about 1e-6 of the peak after two blocks
(measured 5e-7 to 1.0e-6 over both models, three clips, either features), and the bound leaves 10x of it. Ours
runs at full float32 matmul precision ("highest"). A logic error is above it: the relative distance
reversed (``j - i`` for ``i - j``, measured by mutating ``shifted_index``) moves the first attention's output by
1.8e-4 of its peak (``test_relative_position_attention``, which isolates it: in the layers the position term of
random weights is a small share and it shows as 4e-5 to 6e-5); a padding frame compared as valid, 2e-3.

Features: ours (NumPy) against the extractor's (torch.stft in float32) are checked apart, with their own bound
(``test_features``); the layers are checked both from transformers' features (the encoder alone) and from ours
(the whole front end), each within the 1e-5 bound.
"""

import jax
import numpy as np
import pytest

from engine.data.audio import load_audio
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.loaded import load_fastconformer
from engine.models.fastconformer.model import RelPositionAttention

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER = 2
RTOL_PEAK = 1e-5
CLIPS = (("fleurs-en-000", 64_000), ("fleurs-de-001", 97_600), ("fleurs-fr-003", 80_000))  # 4.0, 6.1, 5.0 s
ALONE = 64_000  # samples of each clip encoded alone: 4.0 s
CANARY_DECODER = dict(num_hidden_layers=1, intermediate_size=32, vocab_size=64)


def perturb(model, seed: int):
    """Noise on every parameter (0.1 on norms, biases and the position biases u, v; 0.02 elsewhere) and random
    BatchNorm running statistics (mean ~ N(0, 0.3), variance ~ exp(N(0, 0.3)))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            big = "norm" in name or name.endswith(("bias", "bias_u", "bias_v"))
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if big else 0.02))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.exp(torch.randn(b.shape, generator=gen) * 0.3))
    return model.eval()


@pytest.fixture(scope="module")
def ragged(fleurs_dir):
    """The ``CLIPS``, 4.0, 6.1 and 5.0 s."""
    waveforms = [load_audio(fleurs_dir / f"{stem}.ogg")[:n] for stem, n in CLIPS]
    assert [len(w) for w in waveforms] == [n for _, n in CLIPS], "a FLEURS clip is shorter than the test expects"
    return waveforms


@pytest.fixture(scope="module")
def clips(ragged):
    """The ``CLIPS`` cut to ``ALONE`` samples each: one length."""
    return [w[:ALONE] for w in ragged]


@pytest.fixture(scope="module")
def parakeet(tmp_path_factory):
    """(torch ParakeetForCTC, its folder)."""
    config = transformers.ParakeetCTCConfig(encoder_config={"num_hidden_layers": N_LAYER})
    assert (config.vocab_size, config.pad_token_id, config.encoder_config.scale_input) == (1025, 1024, True)
    torch.manual_seed(0)
    model = perturb(transformers.ParakeetForCTC(config), seed=1)
    folder = tmp_path_factory.mktemp("parakeet-ctc")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    """(torch CanaryForConditionalGeneration, its folder), sharded."""
    config = transformers.CanaryConfig(
        encoder_config={"num_hidden_layers": N_LAYER, "num_mel_bins": 128, "scale_input": False},
        decoder_config=CANARY_DECODER,
        vocab_size=64,
    )
    assert (config.encoder_config.num_mel_bins, config.encoder_config.scale_input) == (128, False)
    torch.manual_seed(0)
    model = perturb(transformers.CanaryForConditionalGeneration(config), seed=2)
    folder = tmp_path_factory.mktemp("canary")
    model.save_pretrained(folder, max_shard_size="100MB")
    return model, folder


def _theirs(encoder, waveform, n_mels):
    """transformers' features, mask and layers (each f32[frame, width]) of one clip, and its subsampling output."""
    x = transformers.ParakeetFeatureExtractor(feature_size=n_mels)(waveform, sampling_rate=16000, return_tensors="pt")
    sub = []
    hook = encoder.subsampling.register_forward_hook(lambda module, args, output: sub.append(output))
    try:
        with torch.no_grad():
            out = encoder(x["input_features"], attention_mask=x["attention_mask"], output_hidden_states=True)
    finally:
        hook.remove()
    layers = [h[0].numpy() for h in out.hidden_states]
    np.testing.assert_array_equal(layers[-1], out.last_hidden_state[0].numpy())
    np.testing.assert_allclose(layers[0], sub[0][0].numpy() * encoder.input_scale, rtol=0, atol=0)
    return x["input_features"].numpy(), x["attention_mask"].numpy(), layers, int(out.attention_mask.sum())


def _assert_close(ours, ref, what):
    peak = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err <= RTOL_PEAK * peak, f"{what}: {err / peak:.2e} of the peak {peak:.3g}"
    return err / peak


def _check_every_layer(torch_encoder, folder, clips, n_mels):
    loaded = load_fastconformer(folder)
    assert (loaded.n_layers_out, loaded.seconds_per_frame, loaded.config.width) == (N_LAYER + 1, 0.08, 1024)
    worst = 0.0
    for i, waveform in enumerate(clips):
        their_features, mask, theirs, frames = _theirs(torch_encoder, waveform, n_mels)
        ours_features, valid = loaded.features([waveform])
        assert int(valid[0]) == int(mask.sum()) and int(loaded.frames(valid)[0]) == frames
        with jax.default_matmul_precision("highest"):
            from_theirs = np.asarray(loaded.encode(their_features, mask.sum(1).astype(np.int32)))
            from_ours = np.asarray(loaded.encode(ours_features, valid))
        for layer, ref in enumerate(theirs):
            for name, states in (("their features", from_theirs), ("our features", from_ours)):
                what = f"clip {i}, layer {layer}, {name}"
                worst = max(worst, _assert_close(states[layer, 0, :frames], ref[:frames], what))
    return loaded, worst


def test_parakeet_ctc_every_layer(parakeet, clips):
    model, folder = parakeet
    loaded, worst = _check_every_layer(model.encoder, folder, clips, 80)
    assert loaded.config.model_type == "parakeet_ctc" and loaded.has_ctc_head and worst > 0


def test_canary_encoder_every_layer(canary, clips):
    model, folder = canary
    loaded, worst = _check_every_layer(model.model.encoder, folder, clips, 128)
    assert loaded.config.model_type == "canary" and not loaded.has_ctc_head and worst > 0


def test_relative_position_attention(parakeet, clips):
    """The first block's attention alone, on its real input (a hook's capture): the relative-position term, the
    biases u and v and the key mask, against ``ParakeetEncoderAttention``, over a clip padded by 8 frames."""
    model, folder = parakeet
    encoder = model.encoder
    x = transformers.ParakeetFeatureExtractor()(clips[0], sampling_rate=16000, return_tensors="pt")
    features = torch.nn.functional.pad(x["input_features"], (0, 0, 0, 56))
    mask = torch.nn.functional.pad(x["attention_mask"], (0, 56))
    seen = {}

    def capture(module, args, kwargs, output):
        seen.update(x=kwargs["hidden_states"], out=output[0])

    hook = encoder.layers[0].self_attn.register_forward_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            out = encoder(features, attention_mask=mask)
    finally:
        hook.remove()
    frames = int(out.attention_mask.sum())
    t = seen["x"].shape[1]
    assert t == frames + 8  # 56 padding feature frames and the clip's unmasked tail: 8 padding frames
    sd = {k: v.numpy() for k, v in encoder.state_dict().items()}
    loaded = load_fastconformer(folder)
    attention = RelPositionAttention(sd, "layers.0.self_attn", loaded.config, np.float32)
    keys = (np.arange(t) < frames)[None, None, None, :]
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(attention(seen["x"].numpy(), keys))
    _assert_close(ours[0, :frames], seen["out"][0, :frames].numpy(), "attention")


def test_ctc_logit_lens(parakeet, clips):
    """The CTC head on every layer's states (the logit lens) gives transformers' argmax at every valid frame: at
    layer L ``ParakeetForCTC.generate``'s ids, at layer k the head applied to transformers' ``hidden_states[k]``. The
    logits themselves are within the layers' bound of the peak; the ids are compared where transformers' best class
    leads the second by more than 10x the logits' measured difference (a near-tie either side may flip), and at
    least 95% of the frames must be such."""
    model, folder = parakeet
    loaded = load_fastconformer(folder)
    for waveform in clips:
        x = transformers.ParakeetFeatureExtractor()(waveform, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            out = model(x["input_features"], attention_mask=x["attention_mask"], output_hidden_states=True)
            generated = model.generate(x["input_features"], attention_mask=x["attention_mask"])[0].numpy()
            lens = [model.ctc_head(h)[0].numpy() for h in out.hidden_states]
        np.testing.assert_array_equal(lens[-1], out.logits[0].numpy())
        with jax.default_matmul_precision("highest"):
            states, frames = loaded.encode_batch([waveform])
            ours = np.asarray(loaded.ctc_logits(states[:, 0]))  # f32[layer, frame, vocab]
        n = int(frames[0])
        assert ours.shape == (N_LAYER + 1, len(lens[0]), 1025)
        for layer, theirs in enumerate(lens):
            err = _assert_close(ours[layer, :n], theirs[:n], f"CTC logits at layer {layer}") * np.abs(theirs).max()
            top2 = np.sort(theirs[:n], axis=-1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 10 * err
            assert clear.mean() >= 0.95, f"layer {layer}: only {clear.mean():.0%} of the frames without a near-tie"
            ids = ours[layer, :n].argmax(-1)
            np.testing.assert_array_equal(ids[clear], theirs[:n].argmax(-1)[clear])
            if layer == N_LAYER:
                np.testing.assert_array_equal(ids[clear], generated[:n][clear])
                assert (generated[n:] == 1024).all()  # generate's padding is the blank


def test_ragged_batch_equals_each_alone(parakeet, ragged):
    """A window's states do not depend on its batch mates: the three clips of three lengths in one padded batch give,
    row by row, transformers' states of each clip alone (its whole length, unpadded), within the layers' bound."""
    model, folder = parakeet
    loaded = load_fastconformer(folder)
    with jax.default_matmul_precision("highest"):
        batch, frames = loaded.encode_batch(ragged)
    batch = np.asarray(batch)
    assert batch.shape[2] > frames.min(), "the batch should pad its shorter clips"
    for i, waveform in enumerate(ragged):
        _, _, theirs, n = _theirs(model.encoder, waveform, 80)
        assert frames[i] == n
        for layer, ref in enumerate(theirs):
            _assert_close(batch[layer, i, :n], ref[:n], f"clip {i}, layer {layer} in the batch")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features(n_mels, fleurs_dir):
    """Ours against ``ParakeetFeatureExtractor`` on six whole FLEURS clips (two per language).

    The mel filters and valid frame counts are equal exactly. The features differ by torch's float32 FFT against
    NumPy's float64 one rounded to complex64 (3.5e-8 of the spectrum's peak at most on these clips), which the log
    turns into ``delta / E``: largest in the bins of least energy (the lowest mel bins, below ~30 Hz, that
    pre-emphasis nearly empties), then spread by the per-bin normalisation. Bound: 1e-4 of each clip's peak (6e-4
    absolute, 4e-5 of the peak measured at most over ten clips), and a median difference under 1e-5 absolute (about
    2e-6 measured); a wrong window, filter, pre-emphasis or normalisation moves them by 1e-2 or more."""
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=257, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000, sampling_rate=16000,
        norm="slaney", mel_scale="slaney", dtype=np.float32,
    )  # fmt: skip
    np.testing.assert_array_equal(feats.slaney_mel_filters(n_mels), ref.T)
    extractor = transformers.ParakeetFeatureExtractor(feature_size=n_mels)
    for lang in ("en", "de", "fr"):
        for k in (0, 5):
            audio = load_audio(fleurs_dir / f"fleurs-{lang}-{k:03d}.ogg")
            theirs = extractor(audio, sampling_rate=16000, return_tensors="np")
            ours, n = feats.log_mel(audio, n_mels)
            assert n == theirs["attention_mask"].sum() == feats.valid_frames(len(audio))
            assert ours.shape == theirs["input_features"][0].shape
            diff = np.abs(ours - theirs["input_features"][0])
            peak = np.abs(theirs["input_features"]).max()
            assert diff.max() <= 1e-4 * peak and np.median(diff) < 1e-5, (lang, k, diff.max() / peak)
            assert not ours[n:].any()
