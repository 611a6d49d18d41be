"""Per-layer parity against Hugging Face transformers' PyTorch Whisper (an implementation we did not write).

A small random ``WhisperConfig`` (no downloads) is built in PyTorch, its weights are mapped to
OpenAI names by ``engine.models.whisper.checkpoints.load.state_dict_from_hf`` and loaded into our Flax model.

Tolerance: 1e-5 relative to the layer's largest magnitude, in float32. Both sides compute in
float32 with different summation orders (XLA vs. oneDNN GEMMs, fused vs. unfused softmax);
observed errors are ~2e-7, so 1e-5 leaves room for other BLAS builds while a wrong weight,
a transposed kernel or a missing norm gives errors of order 1.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from engine.models.whisper.checkpoints.hf import state_dict_from_hf  # noqa: E402
from engine.models.whisper.decoding import greedy_decode, teacher_forced  # noqa: E402
from engine.models.whisper.dims import ModelDimensions  # noqa: E402
from engine.models.whisper.model import Whisper  # noqa: E402
from tests.models.whisper.hf_reference import hf_encoder_layers  # noqa: E402
from tests.parity import rel_err

RTOL = 1e-5
N_MELS, N_CTX, WIDTH, HEADS, ENC_LAYERS, DEC_LAYERS, TEXT_CTX = 80, 50, 64, 4, 3, 2, 40


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=51865,
        num_mel_bins=N_MELS,
        encoder_layers=ENC_LAYERS,
        decoder_layers=DEC_LAYERS,
        d_model=WIDTH,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=4 * WIDTH,
        decoder_ffn_dim=4 * WIDTH,
        max_source_positions=N_CTX,
        max_target_positions=TEXT_CTX,
        attn_implementation="eager",
    )
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    # Random init leaves biases and norms at 0/1; perturb every tensor so that a swapped or
    # missing bias, norm or position table shows.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = state_dict_from_hf({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    dims = ModelDimensions(N_MELS, N_CTX, WIDTH, HEADS, ENC_LAYERS, 51865, TEXT_CTX, WIDTH, HEADS, DEC_LAYERS)
    return hf, Whisper(dims, sd)


@pytest.fixture(scope="module")
def mel():
    return np.random.default_rng(0).standard_normal((3, N_MELS, 2 * N_CTX)).astype(np.float32)


def test_every_encoder_layer_matches_hf(pair, mel):
    hf, ours = pair
    ref = hf_encoder_layers(hf, mel)
    assert len(ref) == ENC_LAYERS + 2
    states = np.asarray(ours.encoder(jnp.asarray(mel)))
    assert states.shape == (ENC_LAYERS + 2, 3, N_CTX, WIDTH)
    for i in range(ENC_LAYERS + 2):
        assert rel_err(states[i], ref[i]) < RTOL, f"encoder layer {i}"


def test_layer_subset_equals_full(pair, mel):
    _, ours = pair
    full = np.asarray(ours.encoder(jnp.asarray(mel)))
    subset = np.asarray(ours.encoder(jnp.asarray(mel), (ENC_LAYERS + 1, 1, 0)))
    np.testing.assert_array_equal(subset, full[[ENC_LAYERS + 1, 1, 0]])


def test_decoder_logits_match_hf(pair, mel):
    hf, ours = pair
    tokens = np.array([[50258, 50259, 50359, 50363, 400, 2000, 13, 50257]] * 3)
    with torch.no_grad():
        out = hf(
            input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens), output_attentions=True
        )
    xa = ours.encoder(jnp.asarray(mel), (ENC_LAYERS + 1,))[0]
    heads = np.array([[0, 1], [1, 3], [DEC_LAYERS - 1, 0]])
    logits, weights = teacher_forced(ours, xa, tokens, heads)
    assert rel_err(logits, out.logits.numpy()) < RTOL
    # Cross-attention of the chosen heads, as word timestamps will use them.
    ref = np.stack([out.cross_attentions[layer][:, head].numpy() for layer, head in heads], axis=1)
    assert weights.shape == ref.shape
    assert rel_err(weights, ref) < RTOL


def test_cached_greedy_decoding_matches_hf_step_by_step(pair, mel):
    """Our cached while_loop decoder against greedy steps over full HF forward passes (no cache)."""
    hf, ours = pair
    prompt = np.array([[50258, 50259, 50359, 50363]] * 3)
    n_new = 10
    seq = torch.from_numpy(prompt)
    with torch.no_grad():
        enc = hf.model.encoder(torch.from_numpy(mel)).last_hidden_state
        for _ in range(n_new):
            logits = hf(encoder_outputs=(enc,), decoder_input_ids=seq).logits[:, -1]
            logits[:, 50257] = -np.inf  # never stop, so every step is compared
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    ref_tokens = seq.numpy()[:, prompt.shape[1] :]
    assert len(np.unique(ref_tokens)) > 3, "degenerate reference: the comparison would prove little"
    xa = ours.encoder(jnp.asarray(mel), (ENC_LAYERS + 1,))[0]
    tokens, _ = greedy_decode(ours, xa, prompt, eot=50257, suppress_tokens=[50257], max_new_tokens=n_new)
    np.testing.assert_array_equal(np.array(tokens), ref_tokens)
