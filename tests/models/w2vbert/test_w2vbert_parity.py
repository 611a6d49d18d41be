"""w2v-BERT 2.0 and the SeamlessM4T v2 speech encoder against transformers' PyTorch models, every layer.

Each family is built once (module-scoped) at real width (hidden 1024, 16 heads, FFN 4096, depthwise kernel 31,
relative_key clipped at -64/+8) with 2 conformer layers for CI time, its random weights perturbed so that norms and
biases differ from their initial 1 and 0 (a miswired norm or bias would otherwise hide), and written by
``save_pretrained``: ``Wav2Vec2BertModel``, and ``SeamlessM4Tv2Model`` with a small text, speech-unit and vocoder
config (those share ``hidden_size`` with the speech encoder, so only their depths, widths of their own and
vocabularies shrink) written in shards. babelgrid loads each folder with ``load_w2vbert`` and encodes a ragged batch
of three real FLEURS clips (2.0, 3.3 and 4.1 s, three languages) from its own features; transformers encodes the same
clips from ``SeamlessM4TFeatureExtractor``'s features and attention mask with ``output_hidden_states=True``.

Bound: at every layer and every valid frame, ``|ours - theirs| <= 1e-5 x`` the layer's largest magnitude, in float32.
Both sides compute the same float32 arithmetic in a different order (matrix products over 1024 and 4096 terms, layer
norm statistics over 1024, softmax over up to 205 keys); that rounding gives about 1e-6 of the peak after two blocks
(4e-7 to 1.2e-6 measured, both families), and the bound leaves 10x of it. Ours runs at full float32 matmul
precision ("highest"): JAX's default on a GPU is TF32, far coarser than this bound. A logic error is far above it:
with the perturbed weights a norm's scale or a bias in the wrong place moves a layer by 1e-2 of its peak or more, a
mask leaking padding by more still (a missing chunk mask: 2e-2).

transformers' ``SeamlessM4Tv2SpeechEncoder`` ties its last ``hidden_states`` entry to its output, the adapter's
(8x fewer frames); the last conformer block's output is read with a forward hook instead (see ``model``).

Seamless's chunked attention (20000-frame chunks in the real config, 400 s) is checked at width 64 with 16-frame
chunks against transformers' ``SeamlessM4Tv2SpeechEncoder`` alone, with the same bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.data.audio import load_audio
from engine.models.w2vbert import features
from engine.models.w2vbert.config import config_from_hf
from engine.models.w2vbert.loaded import load_w2vbert
from engine.models.w2vbert.model import W2vBertEncoder, state_shapes

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER = 2
RTOL_PEAK = 1e-5
CLIPS = ((3, 32_000), (17, 52_800), (33, 65_600))  # (clip index, samples kept): 2.0, 3.3, 4.1 s
# A SeamlessM4Tv2Model whose parts other than the speech encoder are as small as the config allows.
SEAMLESS_SMALL_REST = dict(
    vocab_size=64,
    t2u_vocab_size=32,
    char_vocab_size=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    max_position_embeddings=64,
    t2u_encoder_layers=1,
    t2u_decoder_layers=1,
    t2u_encoder_ffn_dim=32,
    t2u_decoder_ffn_dim=32,
    t2u_encoder_attention_heads=2,
    t2u_decoder_attention_heads=2,
    t2u_max_position_embeddings=64,
    t2u_variance_predictor_embed_dim=16,
    t2u_variance_predictor_hidden_dim=16,
    upsample_initial_channel=16,
    upsample_rates=(2,),
    upsample_kernel_sizes=(4,),
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1,),),
    unit_hifi_gan_vocab_size=16,
    unit_embed_dim=16,
    lang_embed_dim=4,
    spkr_embed_dim=4,
    vocoder_num_langs=2,
    vocoder_num_spkrs=2,
)


def perturb(module, seed: int) -> None:
    """Add seeded noise to every parameter: 0.1 on norms (initially 1 and 0), 0.02 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if "norm" in name else 0.02))


@pytest.fixture(scope="module")
def clips(fleurs_clips):
    waveforms = [load_audio(fleurs_clips[i])[:n] for i, n in CLIPS]
    assert [len(w) for w in waveforms] == [n for _, n in CLIPS], "a FLEURS clip is shorter than the test expects"
    assert len({p.name.split("-")[1] for p in (fleurs_clips[i] for i, _ in CLIPS)}) == 3
    extractor = transformers.SeamlessM4TFeatureExtractor()
    theirs = extractor(waveforms, sampling_rate=16000, return_tensors="pt")
    return waveforms, theirs["input_features"], theirs["attention_mask"]


@pytest.fixture(scope="module")
def w2v_bert(tmp_path_factory):
    """(torch Wav2Vec2BertModel, its save_pretrained folder)."""
    config = transformers.Wav2Vec2BertConfig(num_hidden_layers=N_LAYER)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2BertModel(config).eval()
    perturb(model, seed=1)
    folder = tmp_path_factory.mktemp("w2v-bert")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def seamless(tmp_path_factory):
    """(torch SeamlessM4Tv2Model, its save_pretrained folder, sharded)."""
    config = transformers.SeamlessM4Tv2Config(speech_encoder_layers=N_LAYER, **SEAMLESS_SMALL_REST)
    torch.manual_seed(0)
    model = transformers.SeamlessM4Tv2Model(config).eval()
    perturb(model.speech_encoder, seed=2)
    folder = tmp_path_factory.mktemp("seamless-m4t-v2")
    model.save_pretrained(folder, max_shard_size="200MB")
    return model, folder


def assert_layers_match(ours: np.ndarray, theirs: list[np.ndarray], valid: np.ndarray) -> None:
    assert ours.shape[0] == len(theirs) == N_LAYER + 1
    for layer, ref in enumerate(theirs):
        assert ours[layer].shape == ref.shape, (layer, ours[layer].shape, ref.shape)
        peak = np.abs(ref).max()
        for row, n in enumerate(valid):
            err = np.abs(ours[layer, row, :n] - ref[row, :n]).max()
            assert err <= RTOL_PEAK * peak, f"layer {layer}, utterance {row}: {err / peak:.2e} of the peak {peak:.3g}"
        assert np.isfinite(ours[layer]).all(), f"layer {layer} has non-finite padding frames"


def test_w2v_bert_every_layer(w2v_bert, clips):
    model, folder = w2v_bert
    waveforms, their_features, mask = clips
    with torch.no_grad():
        out = model(their_features, attention_mask=mask, output_hidden_states=True)
    theirs = [h.numpy() for h in out.hidden_states]
    np.testing.assert_array_equal(theirs[-1], out.last_hidden_state.numpy())  # layer L is the model's output

    loaded = load_w2vbert(folder)
    assert (loaded.n_layers_out, loaded.seconds_per_frame, loaded.config.width) == (N_LAYER + 1, 0.02, 1024)
    with jax.default_matmul_precision("highest"):
        states, valid = loaded.encode_batch(waveforms)
    np.testing.assert_array_equal(valid, mask.sum(1).numpy())
    assert_layers_match(np.asarray(states), theirs, valid)


def test_seamless_speech_encoder_every_layer(seamless, clips):
    model, folder = seamless
    waveforms, their_features, mask = clips
    encoder = model.speech_encoder
    last = []
    hook = encoder.encoder.layers[-1].register_forward_hook(lambda module, args, output: last.append(output))
    try:
        with torch.no_grad():
            out = encoder(their_features, attention_mask=mask, output_hidden_states=True)
    finally:
        hook.remove()
    # transformers' last entry is the adapter's output, 8x fewer frames: not a conformer layer.
    frames = their_features.shape[1]
    assert out.hidden_states[-1].shape[1] == -(-frames // 8) != frames
    theirs = [h.numpy() for h in out.hidden_states[:-1]] + [last[0].numpy()]

    loaded = load_w2vbert(folder)
    assert loaded.config.family == "seamless_m4t_v2" and loaded.n_layers_out == N_LAYER + 1
    ours, valid = features.batch_features(waveforms)
    np.testing.assert_array_equal(valid, mask.sum(1).numpy())
    with jax.default_matmul_precision("highest"):
        states = loaded.encode(ours, valid)
    assert_layers_match(np.asarray(states), theirs, valid)


@pytest.mark.parametrize("left_chunks", [1, -1])
def test_seamless_chunked_attention(left_chunks):
    """Seamless attends within chunks of ``speech_encoder_chunk_size`` frames and the ``left_chunks`` before (all of
    them when negative). The real 20000-frame chunks need 400 s of audio; 16-frame chunks at width 64 show it on 50
    random frames, against transformers' speech encoder alone."""
    # Not exported at the top of transformers.
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

    config = transformers.SeamlessM4Tv2Config(
        hidden_size=64,
        speech_encoder_layers=N_LAYER,
        speech_encoder_attention_heads=4,
        speech_encoder_intermediate_size=128,
        speech_encoder_chunk_size=16,
        speech_encoder_left_chunk_num=left_chunks,
        conv_depthwise_kernel_size=7,
        left_max_position_embeddings=8,
        right_max_position_embeddings=4,
        add_adapter=False,
    )
    torch.manual_seed(0)
    encoder = SeamlessM4Tv2SpeechEncoder(config).eval()
    perturb(encoder, seed=3)
    valid = np.array([50, 37], np.int32)
    x = np.random.default_rng(0).standard_normal((2, 50, 160)).astype(np.float32)
    mask = torch.from_numpy((np.arange(50)[None] < valid[:, None]).astype(np.int64))
    last = []
    encoder.encoder.layers[-1].register_forward_hook(lambda module, args, output: last.append(output))
    with torch.no_grad():
        out = encoder(torch.from_numpy(x), attention_mask=mask, output_hidden_states=True)
    theirs = [h.numpy() for h in out.hidden_states[:-1]] + [last[0].numpy()]

    ours_config = config_from_hf(config.to_dict())
    assert (ours_config.chunk_size, ours_config.left_chunks) == (16, left_chunks)
    sd = {k: v.numpy() for k, v in encoder.state_dict().items() if k in state_shapes(ours_config)}
    with jax.default_matmul_precision("highest"):
        ours = W2vBertEncoder(ours_config, sd)(jnp.asarray(x), jnp.asarray(valid))
    assert_layers_match(np.asarray(ours), theirs, valid)
