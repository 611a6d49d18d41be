"""Whisper's encoder head mask against transformers' PyTorch Whisper with forward hooks (code we did not write).

transformers 5 removed ``head_mask`` (PR #41076); the reference here is what replaced it: a pre-hook on each layer's
``self_attn.out_proj`` that multiplies one head's slice of the attention output (the input of the output
projection) by the mask. Random weights from a small config, float32 both sides; tolerance 1e-5 of each layer's
peak, as test_model_parity_hf.py (observed errors ~1e-7). Gradient importance (Michel et al. 2019: the gradient of a
loss with respect to the mask) is checked against torch autograd of the same loss through the same hooks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.errors import ShapeError
from engine.models.whisper.checkpoints.hf import state_dict_from_hf
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.model import Whisper
from tests.models.whisper.hf_reference import hf_encoder_layers
from tests.parity import attention_sinks_twin, attention_stats_twin, rel_err

RTOL = 1e-5
SINK_K = 3  # attention sinks: the top frames compared
N_MELS, N_CTX, WIDTH, HEADS, LAYERS = 80, 50, 64, 4, 3


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(1)
    cfg = transformers.WhisperConfig(vocab_size=51865, num_mel_bins=N_MELS, encoder_layers=LAYERS, decoder_layers=1,
                                     d_model=WIDTH, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                     encoder_ffn_dim=4 * WIDTH, decoder_ffn_dim=4 * WIDTH, max_source_positions=N_CTX,
                                     max_target_positions=40, attn_implementation="eager")  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = state_dict_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    dims = ModelDimensions(N_MELS, N_CTX, WIDTH, HEADS, LAYERS, 51865, 40, WIDTH, HEADS, 1)
    return hf, Whisper(dims, sd)


@pytest.fixture(scope="module")
def mel():
    return np.random.default_rng(2).standard_normal((2, N_MELS, 2 * N_CTX)).astype(np.float32)


class HeadHooks:
    """Pre-hooks on every encoder layer's ``self_attn.out_proj`` multiplying head h's slice by ``mask[l, h]`` (a
    torch tensor, so that autograd reaches it)."""

    def __init__(self, hf, mask: torch.Tensor):
        dh = WIDTH // HEADS

        def hook(layer):
            def scale(module, args):
                (x,) = args
                return (x * mask[layer].repeat_interleave(dh),)

            return scale

        self.handles = [layer.self_attn.out_proj.register_forward_pre_hook(hook(i))
                        for i, layer in enumerate(hf.model.encoder.layers)]  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def ablating(layer: int, head: int) -> np.ndarray:
    mask = np.ones((LAYERS, HEADS), np.float32)
    mask[layer, head] = 0.0
    return mask


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 3), (2, 1)])
def test_one_head_ablated_equals_hf_with_hooks(pair, mel, layer, head):
    hf, ours = pair
    mask = ablating(layer, head)
    with HeadHooks(hf, torch.from_numpy(mask)):
        ref = hf_encoder_layers(hf, mel)
    got = np.asarray(ours.encoder(jnp.asarray(mel), head_mask=mask))
    plain = np.asarray(ours.encoder(jnp.asarray(mel)))
    for i in range(LAYERS + 2):
        assert rel_err(got[i], ref[i]) < RTOL, f"layer {i}"
    # The ablation changes the layers from its block on, and none before it.
    np.testing.assert_array_equal(got[: layer + 1], plain[: layer + 1])
    assert rel_err(got[layer + 1], plain[layer + 1]) > 1e-3


def test_a_mask_per_row_equals_each_row_alone_and_ones_change_nothing(pair, mel):
    _, ours = pair
    x = jnp.asarray(mel)
    masks = np.stack([ablating(0, 1), ablating(2, 3)])
    both = np.asarray(ours.encoder(x, head_mask=masks))
    for r in range(2):
        alone = np.asarray(ours.encoder(x[r : r + 1], head_mask=masks[r]))[:, 0]
        for i in range(LAYERS + 2):  # another batch shape: other GEMM blocking, float32 rounding apart
            assert rel_err(both[i, r], alone[i]) < RTOL, f"row {r}, layer {i}"
    ones = np.asarray(ours.encoder(x, head_mask=np.ones((LAYERS, HEADS), np.float32)))
    np.testing.assert_array_equal(ones, np.asarray(ours.encoder(x)))


def test_gradient_importance_equals_torch_autograd(pair, mel):
    """d(loss)/d(mask) at the all-ones mask, loss = mean square of the last layer (after ln_post)."""
    hf, ours = pair
    x = jnp.asarray(mel)

    def loss(mask):
        return jnp.mean(ours.encoder(x, (LAYERS + 1,), head_mask=mask)[0] ** 2)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones((LAYERS, HEADS), jnp.float32)))
    mask = torch.ones((LAYERS, HEADS), requires_grad=True)
    with HeadHooks(hf, mask):
        out = hf.model.encoder(torch.from_numpy(mel)).last_hidden_state
        (out**2).mean().backward()
    want = mask.grad.numpy()
    assert rel_err(got, want) < 1e-4, (got, want)  # a sum over every frame of a float32 backward pass


def test_bad_masks_are_refused(pair, mel):
    _, ours = pair
    with pytest.raises(ShapeError, match=r"head_mask must be f\[3, 4\]"):
        ours.encoder(jnp.asarray(mel), head_mask=np.ones((4, 3), np.float32))
    with pytest.raises(ShapeError, match="3 rows for a batch of 2"):
        ours.encoder(jnp.asarray(mel), head_mask=np.ones((3, LAYERS, HEADS), np.float32))


def test_attention_statistics_equal_transformers_attention_weights(pair, mel):
    """Each head's mean attention distance, entropy and local share, and its attention sinks (and the block's heads'
    together; ``engine.models.common.attention_stats``) from transformers' own attention weights
    (``output_attentions``, eager), through NumPy twins; Whisper attends over the whole window, padding included, and
    the statistics average the valid queries only."""
    from engine.models.common.attention_stats import AttentionStats
    from engine.models.whisper.encoder import _block_inputs, _qk

    hf, ours = pair
    frames = np.array([N_CTX, 31], np.int32)
    measured = AttentionStats(ours.encoder, _block_inputs, _qk, LAYERS, HEADS)
    got = measured.measure((jnp.asarray(mel),), frames, local=3, k=SINK_K)  # one program: __call__'s is wav2vec2's
    stats = got["stats"]
    np.testing.assert_array_equal(got["keys"], [N_CTX, N_CTX])  # Whisper attends to the whole window
    with torch.no_grad():
        attentions = hf.model.encoder(torch.from_numpy(mel), output_attentions=True).attentions
    for layer, weights in enumerate(attentions):
        for row, n in enumerate(frames):
            want = attention_stats_twin(weights[row].numpy(), int(n), 3)
            np.testing.assert_allclose(stats[row, layer], want, rtol=1e-4, atol=1e-5)
            # Attention sinks: the shares received, to 1e-5 of the whole attention (1); the frames where the shares
            # of consecutive ranks differ by more than that (random weights: near-ties may swap)
            share, frame, first = attention_sinks_twin(weights[row].numpy(), int(n), SINK_K)
            np.testing.assert_allclose(got["top_share"][row, layer], share, atol=1e-5)
            np.testing.assert_allclose(got["first_share"][row, layer], first, atol=1e-5)
            clear = np.diff(share, axis=1, append=0.0) < -1e-5
            clear &= np.concatenate([np.ones((HEADS + 1, 1), bool), clear[:, :-1]], axis=1)
            np.testing.assert_array_equal(got["top_frame"][row, layer][clear], frame[clear])
            assert clear[:, 0].all()
