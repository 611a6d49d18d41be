"""Voxtral Realtime's audio encoder, projector and feature extractor against transformers' PyTorch, layer by layer, at
the real width.

Encoder: transformers' ``VoxtralRealtimeEncoder`` at the released width (1280 wide, 32 heads of 64: a 2048-wide
attention, SwiGLU of 5120, 128 mels, RoPE theta 10000, RMSNorm eps 1e-5) with 2 blocks instead of 32 and a sliding
window of 16 frames instead of 750 (0.32 s instead of 15 s), so that clips under a second are longer than the
window and the band's both edges are crossed, at a fraction of a 16 s clip's cost (the released 750 frames are run
against transformers at a small width on a 30 s window in tests/jobs/test_voxtral_realtime_jobs.py); every parameter
drawn at random.
Projector: ``VoxtralRealtimeMultiModalProjector`` (4 frames joined, 5120 -> a text width of 96, GELU, 96 -> 96).
Both are saved in ``save_pretrained``'s layout (``audio_tower.*``, ``multi_modal_projector.*``, the full model's
``config.json``) and babelgrid loads the folder.

Input: two clips of tones and noise, 0.8 s (40 frames) and 0.55 s (27), whose log-mel is checked against
``VoxtralRealtimeFeatureExtractor`` first (within 3e-5 of the peak: transformers' float32 STFT against babelgrid's
float64 one, the gap ``engine.models.common.logmel`` measured for Whisper's extractor; 1.2e-5 here); babelgrid runs them
as one ragged batch (its log-mel zero-padded, the rows' valid frames differing), transformers each clip alone (a batch
of one: what babelgrid means by a window's states). Forward hooks read the first block's input (layer 0) and every
block's output; the final norm's is the encoder's ``last_hidden_state`` and the projector's the module's return (on the
clip's whole groups of 4 frames, which is all transformers' reshape takes). A head mask (head 5 of block 2 off, on the
second row only) is checked against transformers with that head's slice of ``o_proj``'s input zeroed by a pre-hook.
Compared in float32 over each clip's valid frames as ``max |ours - theirs| / max |theirs|`` per array: within 1e-5.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers.initialization import no_init_weights
from transformers.models.voxtral_realtime import configuration_voxtral_realtime as cvr
from transformers.models.voxtral_realtime import modeling_voxtral_realtime as mvr
from transformers.models.voxtral_realtime.feature_extraction_voxtral_realtime import VoxtralRealtimeFeatureExtractor

from engine.models.speechllm.realtime_encoder import RealtimeEncoder
from engine.models.speechllm.realtime_features import RealtimeFeatures, log_mel
from engine.models.speechllm.realtime_loaded import TRIM_STEP, collate, load_realtime, trimmed_collate
from engine.models.speechllm.realtime_model import banded_attention, reference_banded_attention, rms_norm

RTOL = 1e-5
SECONDS = (0.8, 0.55)
LAYERS, WINDOW, TEXT = 2, 16, 96
FEATURES_RTOL = 3e-5
ABLATED = (1, 5)  # block 2's head 5


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for s in SECONDS:
        t = np.arange(int(s * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        out.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def _build(cls, *args):
    """``cls(*args)`` with every parameter drawn at random (matrices normal of variance 1 / fan-in, norm scales 1 +
    N(0, 0.05^2), other vectors N(0, 0.05^2)): transformers' own initialisation is skipped, being slower than the
    test's forward passes at this width."""
    with no_init_weights():
        module = cls(*args)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + ("norm" in name))
    return module.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = cvr.VoxtralRealtimeConfig(
        audio_config={"num_hidden_layers": LAYERS, "sliding_window": WINDOW}, text_config={"hidden_size": TEXT}
    )
    tower = _build(mvr.VoxtralRealtimeEncoder, config.audio_config)
    projector = _build(mvr.VoxtralRealtimeMultiModalProjector, config)
    folder = tmp_path_factory.mktemp("voxtral-realtime")
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    tensors = {f"audio_tower.{k}": v for k, v in tower.state_dict().items()}
    tensors |= {f"multi_modal_projector.{k}": v for k, v in projector.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return tower, projector, load_realtime(folder)


def test_features_equal_the_extractor():
    extractor, settings = VoxtralRealtimeFeatureExtractor(), RealtimeFeatures()
    for clip in _clips():
        want = extractor([clip], sampling_rate=16000, return_tensors="np")["input_features"][0]  # a batch of one
        got = log_mel(clip, settings)
        assert got.shape == want.shape == (128, len(clip) // 160)
        assert np.abs(got - want).max() <= FEATURES_RTOL * np.abs(want).max()


@pytest.mark.parametrize("batched", [True, False])
def test_banded_attention_equals_the_reference(batched):
    """The sliding-window attention against its NumPy twin: accelerators' form (every head at once; on a CPU machine
    it runs nowhere else in the tests) and the CPU's (blocks of 2 queries against their 9 keys here, 23 frames
    leaving a part block, the first blocks reaching before the clip's start)."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 23, 3, 8)).astype(np.float32) for _ in range(3))
    want = reference_banded_attention(q, k, v, 7)
    got = np.asarray(jax.jit(banded_attention, static_argnums=(3, 4))(q, k, v, 7, batched))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_rms_norm_of_a_row_does_not_change_with_the_batch_frames():
    """``rms_norm`` on 600 frames of a batch equals it on the batch's 1,500, bit for bit. ``jnp.mean`` followed by
    ``rsqrt`` in one jitted step differed here by 1e-6 on this CPU: XLA compiled that fusion per shape."""
    x = np.random.default_rng(3).standard_normal((4, 1500, 1280)).astype(np.float32)
    scale = np.ones(1280, np.float32)
    norm = jax.jit(lambda x: rms_norm(x, scale, 1e-5))
    np.testing.assert_array_equal(np.asarray(norm(x[:, :600])), np.asarray(norm(x))[:, :600])
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(norm(x)), want, rtol=1e-6, atol=1e-6)


def test_a_batch_cut_to_its_longest_window_gives_the_same_bits(models):
    """The encode job's batch (``trimmed_collate``: 800 mel frames for these clips) against the full 30 s one: every
    layer's valid frames are equal, not close. On CPU every reduction of the tower runs in blocks of one shape
    (``realtime_model.rms_norm``, ``banded_attention``), so a window's states do not depend on its batch mates."""
    ours = models[2]
    windows = [ours.features(clip)[0] for clip in _clips()]
    mel, valid = trimmed_collate(windows, len(windows))
    assert mel.shape[2] == TRIM_STEP
    full = np.asarray(ours.encode(*collate(windows, len(windows))))
    got = np.asarray(ours.encode(mel, valid))
    for b, n in enumerate(ours.frames(valid)):
        np.testing.assert_array_equal(got[:, b, :n], full[:, b, :n])


def _close(ours, theirs, what):
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err <= RTOL, f"{what}: {err:.2e} of the peak"


def _hooked(tower, projector, mel: np.ndarray, ablate: bool = False):
    """One clip alone through transformers: layer 0 (the first block's input) and each block's output ``f[frame,
    width]``, the final norm's ``f[frame, width]`` and the projector's ``f[frame / 4, text]``; ``ablate``: head
    ``ABLATED`` zeroed before its block's ``o_proj``."""
    states: list = []
    hooks = [tower.layers[0].register_forward_pre_hook(lambda mod, a: states.append(a[0][0].numpy()))]
    hooks += [blk.register_forward_hook(lambda mod, i, o: states.append(o[0].numpy())) for blk in tower.layers]
    if ablate:
        block, head = ABLATED
        dh = tower.config.head_dim

        def zero(mod, args):
            x = args[0].clone()
            x[..., head * dh : (head + 1) * dh] = 0
            return (x,)

        hooks.append(tower.layers[block].self_attn.o_proj.register_forward_pre_hook(zero))
    with torch.no_grad():
        final = tower(input_features=torch.from_numpy(mel)[None]).last_hidden_state
        groups = final.shape[1] // 4
        projected = projector(final[:, : 4 * groups].reshape(1, groups, -1))[0].numpy()
    for h in hooks:
        h.remove()
    return states, final[0].numpy(), projected


def test_every_layer_equals_transformers(models):
    tower, projector, ours = models
    c = ours.config
    assert (c.width, c.heads, c.head_dim, c.ffn, c.layers, c.window) == (1280, 32, 64, 5120, LAYERS, WINDOW)
    windows = [ours.features(clip)[0] for clip in _clips()]
    mel, valid = collate(windows, len(windows))
    mel = mel[:, :, : -(-max(v for _, v in windows) // 8) * 8]  # a short batch: the tower takes any 8k mel frames
    got = ours.outputs(mel, valid)
    n = ours.frames(valid)
    np.testing.assert_array_equal(n, got["frames"])
    assert min(n) > WINDOW and len(set(n)) == len(n) and got["layers"].shape[0] == LAYERS + 2
    masks = np.ones((len(windows), LAYERS, c.heads), np.float32)
    masks[1][ABLATED] = 0  # the second row only: a mask per row
    masked = RealtimeEncoder(ours).head_masked(range(LAYERS + 2))((mel, valid), masks)  # the heads job's call
    for b, (m, _) in enumerate(windows):
        states, final, projected = _hooked(tower, projector, m)
        assert len(states) == LAYERS + 1 and states[0].shape[0] == n[b]
        for i, want in enumerate([*states, final]):
            _close(got["layers"][i, b, : n[b]], want, f"layer {i} clip {b}")
        _close(got["final"][b, : n[b]], final, f"final clip {b}")
        g = got["projector_frames"][b]
        assert g == n[b] // 4 == projected.shape[0]
        _close(got["projector"][b, :g], projected, f"projector clip {b}")
        if b == 1:
            states, final, _ = _hooked(tower, projector, m, ablate=True)
            for i, want in enumerate([*states, final]):
                _close(masked[i, b, : n[b]], want, f"head-masked layer {i} clip {b}")
            assert np.abs(states[-1] - got["layers"][LAYERS, b, : n[b]]).max() > 1e-3  # the head mattered
        else:
            _close(masked[:, b, : n[b]], got["layers"][:, b, : n[b]], f"unmasked row {b}")
