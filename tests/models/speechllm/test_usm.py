"""The USM Conformer (Gemma 3n's and Gemma 4's audio tower) and its feature extractors against transformers' PyTorch,
layer by layer, at the real widths.

Towers: transformers' ``Gemma3nAudioEncoder`` (1536 wide, 8 heads, subsampler channels 128/32) and
``Gemma4AudioModel`` (1024 wide, 8 heads, output projection to 1536), each with the released settings (chunks of 12
frames, left context 13, soft cap 50, light-conv kernel 5, 3n's reduction by 4) but 2 blocks instead of 12, every
parameter drawn at random; Gemma 4's clipped linears get finite bounds that do clip. Beside each tower
its ``embed_audio`` (``Gemma3nMultimodalEmbedder``, ``Gemma4MultimodalEmbedder``, a text width of 96). Both are saved
in the released layout (``model.audio_tower.*``, ``model.embed_audio.*``, the full model's ``config.json``) and
babelgrid loads the folder.

Input: three clips of tones and noise, 1.3 s (33 frames of 40 ms: three attention chunks), 1.05 s and 0.55 s, whose
log-mel is checked against each model's own feature extractor first; babelgrid runs them as one ragged batch (its
log-mel zero-padded, the frames past each clip masked), transformers each clip alone (a batch of one: what babelgrid
means by a window's states). Forward hooks read the first block's input (layer 0) and every block's output; the
tower's output and ``embed_audio``'s are the modules' returns. Compared in float32 over each clip's valid frames as
``max |ours - theirs| / max |theirs|`` per array: within 1e-5. A head mask (the heads job's) is checked the same way
against transformers with a pre-hook scaling a head's slice of each block's attention output projection's input.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers.initialization import no_init_weights
from transformers.models.gemma3n import configuration_gemma3n as c3n
from transformers.models.gemma3n import feature_extraction_gemma3n as f3n
from transformers.models.gemma3n import modeling_gemma3n as m3n
from transformers.models.gemma4 import configuration_gemma4 as c4
from transformers.models.gemma4 import feature_extraction_gemma4 as f4
from transformers.models.gemma4 import modeling_gemma4 as m4

from engine.models.speechllm.usm_encoder import UsmEncoder
from engine.models.speechllm.usm_features import from_preprocessor, log_mel
from engine.models.speechllm.usm_loaded import collate, load_usm

RTOL = 1e-5
SECONDS = (1.3, 1.05, 0.55)
LAYERS = 2
TEXT = 96


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
    test's forward passes at these widths; Gemma 4's clip bounds finite, so that some values are clipped."""
    with no_init_weights():
        module = cls(*args)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + ("norm" in name))
        for name, b in module.named_buffers():  # Gemma 4's clip bounds: finite, some values clipped
            if name.endswith(("input_min", "output_min")):
                b.fill_(-2.0 - float(torch.rand(1, generator=gen)))
            elif name.endswith(("input_max", "output_max")):
                b.fill_(2.0 + float(torch.rand(1, generator=gen)))
    return module.eval()


def _gemma3n():
    torch.manual_seed(0)
    audio = c3n.Gemma3nAudioConfig(conf_num_hidden_layers=LAYERS)
    text = c3n.Gemma3nTextConfig(hidden_size=TEXT)
    tower, embed = _build(m3n.Gemma3nAudioEncoder, audio), _build(m3n.Gemma3nMultimodalEmbedder, audio, text)
    return audio, tower, embed, tower.conformer, lambda mel, n: tower(mel, torch.zeros(1, n, dtype=torch.bool))


def _gemma4():
    torch.manual_seed(0)
    audio = c4.Gemma4AudioConfig(num_hidden_layers=LAYERS)
    text = c4.Gemma4TextConfig(hidden_size=TEXT)
    tower, embed = _build(m4.Gemma4AudioModel, audio), _build(m4.Gemma4MultimodalEmbedder, audio, text)

    def run(mel, valid):
        return tower(mel, torch.from_numpy(np.arange(mel.shape[1]) < valid)[None])

    return audio, tower, embed, tower.layers, run


BUILD = {"gemma3n": _gemma3n, "gemma4": _gemma4}
EXTRACTORS = {"gemma3n": f3n.Gemma3nAudioFeatureExtractor, "gemma4": f4.Gemma4AudioFeatureExtractor}


@pytest.mark.parametrize("kind", list(BUILD))
def test_features_equal_the_extractor(kind):
    settings, extractor = from_preprocessor(kind, None), EXTRACTORS[kind]()
    for clip in _clips():
        theirs = extractor([clip], return_tensors="np")  # a batch of one
        mel, valid = log_mel(clip, settings)
        want = theirs["input_features"][0]
        assert mel.shape == want.shape and valid == theirs["input_features_mask"][0].sum()
        assert np.abs(mel - want).max() <= 1e-6 * np.abs(want).max()
    frames, valid = settings.mel_frames(np.array([480_000, 16_000, 1]))
    assert frames.tolist() == ([2997, 97, 0] if kind == "gemma3n" else [2999, 99, 0]) and (valid <= frames).all()


def _close(ours, theirs, what):
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err <= RTOL, f"{what}: {err:.2e} of the peak"


def _hooked(blocks, run, embed, mel: np.ndarray, valid: int):
    """One clip alone through transformers' tower: layer 0 (the first block's input) and each block's output
    ``f[frame, width]``, the tower's output ``f[1, frame, width']`` and embed_audio's ``f[frame, text]``."""
    states: list = []
    hooks = [blocks[0].register_forward_pre_hook(lambda mod, a: states.append(a[0][0].numpy()))]
    hooks += [blk.register_forward_hook(lambda mod, i, o: states.append(o[0].numpy())) for blk in blocks]
    with torch.no_grad():
        final = run(torch.from_numpy(mel)[None], valid).last_hidden_state
        projected = embed(inputs_embeds=final)[0].numpy()
    for h in hooks:
        h.remove()
    return states, final, projected


@pytest.fixture(scope="module", params=list(BUILD))
def built(request, tmp_path_factory):
    """(kind, transformers' tower, its embedder, its blocks, its call, babelgrid's loaded folder, the clips' windows,
    babelgrid's short ragged batch ``(mel, valid)``)."""
    kind = request.param
    audio, tower, embed, blocks, run = BUILD[kind]()
    folder = tmp_path_factory.mktemp(kind)
    config = {"model_type": kind, "audio_config": audio.to_dict(), "text_config": {"hidden_size": TEXT}}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {f"model.audio_tower.{k}": v for k, v in tower.state_dict().items()}
    tensors |= {f"model.embed_audio.{k}": v for k, v in embed.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    ours = load_usm(folder)
    assert ours.config.width == audio.hidden_size and ours.config.layers == LAYERS
    windows = [log_mel(clip, ours.feature_settings) for clip in _clips()]
    mel, valid = collate(windows, len(windows))
    mel = mel[:, : -(-max(len(m) for m, _ in windows) // 4) * 4]  # a short batch: the tower takes any 4k frames
    return kind, tower, embed, blocks, run, ours, windows, (mel, valid)


def test_every_layer_equals_transformers(built):
    kind, tower, embed, blocks, run, ours, windows, (mel, valid) = built
    got = ours.outputs(mel, valid)
    n = ours.frames(valid)
    np.testing.assert_array_equal(n, got["frames"])
    assert n[0] > 2 * ours.config.chunk and got["layers"].shape[0] == LAYERS + 1
    for b, (m, v) in enumerate(windows):
        states, final, projected = _hooked(blocks, run, embed, m, v)
        # transformers keeps every subsampled frame, Gemma 4's last one masked where its mel frames are not all audio
        assert len(states) == LAYERS + 1 and states[0].shape[0] - n[b] in (0, 1)
        for i, want in enumerate(states):
            _close(got["layers"][i, b, : n[b]], want[: n[b]], f"{kind} layer {i} clip {b}")
        f = got["final_frames"][b]
        assert final.shape[1] - f in (0, 1)
        _close(got["final"][b, :f], final[0, :f].numpy(), f"{kind} final clip {b}")
        _close(got["projector"][b, :f], projected[:f], f"{kind} projector clip {b}")


def test_a_head_mask_equals_transformers_with_the_head_zeroed(built):
    """The heads job's call (``UsmEncoder.head_masked``: a mask per row, here head 3 of block 2 off on the first row
    and head 6 of block 1 scaled by 0.5 on the second) against transformers with a pre-hook on each block's
    attention output projection (3n's ``attention.post``, 4's clippable ``self_attn.post``) scaling that head's
    slice: every layer within 1e-5 of its peak on each clip's valid frames; the rows without a mask equal the
    unmasked pass, and the zeroed head moved the states."""
    kind, tower, embed, blocks, run, ours, windows, (mel, valid) = built
    c = ours.config
    masks = np.ones((len(windows), LAYERS, c.heads), np.float32)
    masks[0, 1, 3], masks[1, 0, 6] = 0.0, 0.5
    got = UsmEncoder(ours).head_masked(range(LAYERS + 1))((mel, valid), masks)
    plain = ours.outputs(mel, valid)["layers"]
    n = ours.frames(valid)
    for b, (m, v) in enumerate(windows):
        scale = torch.from_numpy(masks[b]).repeat_interleave(c.head_dim, dim=-1)
        posts = [blk.attention.post if kind == "gemma3n" else blk.self_attn.post for blk in blocks]
        hooks = [post.register_forward_pre_hook(lambda mod, a, s=scale[i]: (a[0] * s,)) for i, post in enumerate(posts)]
        try:
            states, _, _ = _hooked(blocks, run, embed, m, v)
        finally:
            for h in hooks:
                h.remove()
        for i, want in enumerate(states):
            _close(got[i, b, : n[b]], want[: n[b]], f"{kind} head-masked layer {i} clip {b}")
        if b == 2:
            np.testing.assert_array_equal(got[:, b, : n[b]], np.asarray(plain)[:, b, : n[b]])
    assert np.abs(got[LAYERS, 0, : n[0]] - np.asarray(plain)[LAYERS, 0, : n[0]]).max() > 1e-3
