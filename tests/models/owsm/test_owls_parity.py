"""OWLS (``espnet/owls_*``) against ESPnet's own PyTorch modules and search, on real FLEURS clips and a random model
ESPnet builds with ``encoder: transformer`` (``owsm_reference.OWLS``: OWSM v3's transformer widths, 1024 wide with 16
heads and 4096-wide feed-forwards, 2 encoder blocks and 1 decoder block, a 4 s window), saved in ESPnet's published
layout and loaded by both sides from those files.

What OWLS adds to the OWSM port is its encoder's blocks (ESPnet's ``TransformerEncoder``: pre-norm ``EncoderLayer``s,
ReLU feed-forwards, no norm per block); the frontend, the subsampling, the decoder, the CTC head and the searches are
the ones ``test_owsm_parity.py`` checks on v3.1, v4 and POWSM. Here every encoder layer is checked, and the decoder's
and the CTC head's logits on the encoder's output, read through an OWLS config (the searches run on those logits with
v3.1's code; the greedy and beam searches' own parity is ``test_owsm_parity.py``'s, and a decode run on an OWLS store
is ``test_owls_intermediates.py``'s).

Bounds as ``test_owsm_parity.py``'s: ``max|ours - espnet| <= 1e-5 * max|espnet|`` per layer and per array in float32
(both sides compute the same float32 operations in different orders, so they differ by float32 rounding over
reductions of width <= 4096: a few 1e-7 of the peak).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.owsm import owsm_reference as ref

REL = 1e-5


@pytest.fixture(scope="module")
def owls(tmp_path_factory, fleurs_dir):
    from engine.models.owsm.loaded import load_owsm

    root = ref.write_model(tmp_path_factory.mktemp("owls"), fleurs_dir, variant="owls")
    clips = ref.real_clips(fleurs_dir)[:2]
    ours = load_owsm(root)
    features, _ = ours.features(clips)
    return dict(root=root, clips=clips, ours=ours, features=features, states=ours.encode(features),
                s2t=ref.speech2text(root, max_tokens=1))  # fmt: skip


def _close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err, peak = np.abs(ours - theirs).max(), np.abs(theirs).max()
    assert err <= REL * peak, f"{what}: max error {err:.3g} > {REL} x peak {peak:.3g}"


def test_the_config_reads_as_a_transformer_encoder(owls):
    c = owls["ours"].config
    dims = (c.encoder, c.width, c.n_head, c.ffn_width, c.n_layer, c.n_dec_layer)
    assert dims == ("transformer", 1024, 16, 4096, 2, 1)
    assert (c.cgmlp_width, c.merge_kernel, c.subsampling) == (0, 0, 4)
    assert type(owls["s2t"].s2t_model.encoder).__name__ == "TransformerEncoder"


def test_every_encoder_layer_equals_espnet(owls):
    enc = owls["s2t"].s2t_model.encoder
    states = np.asarray(owls["states"])
    assert states.shape == (4, 2, 99, 1024)  # layers 0..L+1; 4 s: 401 feature frames, 99 after conv2d
    for i in range(len(owls["clips"])):
        feats = torch.from_numpy(owls["features"][i : i + 1])
        with torch.no_grad():
            layer0, _ = enc.embed(feats, torch.ones(1, 1, feats.shape[1], dtype=torch.bool))
            (out, hidden), _, _ = enc(feats, torch.tensor([feats.shape[1]]), return_all_hs=True)
        theirs = [layer0, *hidden, out]
        assert len(theirs) == 4
        for layer, t in enumerate(theirs):
            _close(states[layer, i], t[0].numpy(), f"clip {i} layer {layer}")


def test_decoder_and_ctc_logits_equal_espnet(owls):
    from engine.models.owsm.decoder import prompt

    s2t, ours = owls["s2t"], owls["ours"]
    memory = np.asarray(owls["states"][-1])
    rng = np.random.default_rng(0)
    langs = [lang for _, lang in ref.CLIPS[:2]]
    tokens = np.array([prompt(ours.config, lang, "asr") + list(rng.integers(13, ours.config.n_vocab - 3, 5))
                       for lang in langs])  # fmt: skip
    with torch.no_grad():
        theirs, _ = s2t.s2t_model.decoder(
            torch.from_numpy(memory), torch.full((2,), memory.shape[1]),
            torch.from_numpy(tokens), torch.full((2,), tokens.shape[1]),
        )  # fmt: skip
        ctc = s2t.s2t_model.ctc.ctc_lo(torch.from_numpy(memory))
    _close(ours.decoder.logits(tokens, memory), theirs.numpy(), "decoder logits")
    _close(ours.ctc_logits(owls["states"], ours.config.n_layer + 1), ctc.numpy(), "CTC logits")


def test_cost_equals_espnet_flops_and_parameters(owls):
    """``encode --plan``'s FLOP model for a transformer encoder: torch's ``FlopCounterMode`` on ESPnet's encoder over
    one full window (matmuls and convolutions, as ``cost`` counts) equals it exactly, and so do the parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    from engine.models.owsm.cost import encoder_cost

    enc = owls["s2t"].s2t_model.encoder
    feats = torch.from_numpy(owls["features"][:1])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        enc(feats, torch.tensor([feats.shape[1]]))
    cost = encoder_cost(owls["ours"].config)
    assert cost.flops == counter.get_total_flops()
    assert cost.params == sum(p.numel() for p in enc.parameters())
