"""The speech LLMs' audio towers and projectors against transformers' PyTorch, on real FLEURS clips.

Random weights at the released widths with the depth cut to 2 blocks (a 1280-wide tower of 20 heads and 5120 feed-
forward units, 128 mels, 1500 positions; projectors to the language models' widths: Qwen2-Audio-7B's 4096, Voxtral
Mini's 3072, Audio Flamingo 3's 3584; the language models cut to one small layer, which is never read). Every weight
is moved off its initial value so that a weight read from the wrong place shows. Each full model is saved with
``save_pretrained`` and loaded by babelgrid from that folder (its tower and projector only).

Both sides get the same log-mel windows (babelgrid's, themselves checked against WhisperFeatureExtractor in
tests/engine) and the valid frames of each window as transformers' processors pass them (``feature_attention_mask``:
``ceil(samples / 160)`` mel frames). Compared, in float32, over each window's valid frames (all frames for Voxtral,
which masks nothing): every block's output, the tower's final output (pooled by 2 and normed for Qwen2-Audio and
Audio Flamingo 3) and the projector's output, as ``max |ours - theirs| / max |theirs|`` per array, within 1e-5
(float32 with other summation orders through 2 blocks of width 1280; measured at most about 1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask

from engine.data.audio import load_audio
from engine.models.common.logmel import features_for_audio, split_windows
from engine.models.speechllm.loaded import load_speechllm

RTOL = 1e-5
TOWER = dict(num_mel_bins=128, max_source_positions=1500)
WIDTHS = {"d_model": 1280, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "encoder_layers": 2}
CLIPS = ("fleurs-en-000", "fleurs-de-009", "fleurs-es-003")  # de-009 is 43 s: two windows, the second mostly padding


def _text(hidden: int, heads: int) -> dict:
    """A language model at the released width (the projector's output) with one layer of 2 heads of 8: it is never
    run, and its attention would otherwise be most of the folder."""
    del heads
    return dict(hidden_size=hidden, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=128, head_dim=8)  # fmt: skip


def _build(kind: str):
    torch.manual_seed(0)
    if kind == "qwen2_audio":
        config = transformers.Qwen2AudioConfig(audio_config={**TOWER, **WIDTHS}, text_config=_text(4096, 32))
        model = transformers.Qwen2AudioForConditionalGeneration(config)
    elif kind == "voxtral":
        audio = {**TOWER, "hidden_size": 1280, "num_attention_heads": 20, "intermediate_size": 5120,
                 "num_hidden_layers": 2}  # fmt: skip
        model = transformers.VoxtralForConditionalGeneration(
            transformers.VoxtralConfig(audio_config=audio, text_config=_text(3072, 24))
        )
    else:
        audio = {**TOWER, "hidden_size": 1280, "num_attention_heads": 20, "intermediate_size": 5120,
                 "num_hidden_layers": 2}  # fmt: skip
        model = transformers.AudioFlamingo3ForConditionalGeneration(
            transformers.AudioFlamingo3Config(audio_config=audio, text_config=_text(3584, 28))
        )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _theirs(kind: str, model, mel: np.ndarray, samples: np.ndarray) -> dict:
    """transformers' tower (every layer's output, the final output) and projector, as the full models call them."""
    x = torch.from_numpy(np.array(mel))
    mel_mask = torch.from_numpy(np.arange(mel.shape[-1])[None, :] < -(-samples[:, None] // 160))
    inner = model.model
    last: list = []  # the last block's own output: hidden_states ends with the tower's final output instead
    hook = inner.audio_tower.layers[-1].register_forward_hook(
        lambda m, i, o: last.append((o[0] if isinstance(o, tuple) else o).numpy())
    )
    with torch.no_grad():
        if kind == "qwen2_audio":  # Qwen2AudioModel.forward's mask, then its tower and projector
            tower = inner.audio_tower
            lengths, _ = tower._get_feat_extract_output_lengths(mel_mask.sum(-1))
            keep = (torch.arange(1500)[None, :] < lengths[:, None]).long()
            mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros(len(x), 1500, 1),
                                             attention_mask=keep)  # fmt: skip
            out = tower(x, attention_mask=mask, output_hidden_states=True)
            projected = inner.multi_modal_projector(out.last_hidden_state)
        elif kind == "voxtral":  # VoxtralModel.get_audio_features: no mask
            out = inner.get_audio_features(x, output_hidden_states=True)
            projected = out.pooler_output.reshape(len(x), -1, out.pooler_output.shape[-1])
        else:
            out = inner.audio_tower(x, input_features_mask=mel_mask, output_hidden_states=True)
            projected = inner.multi_modal_projector(out.last_hidden_state)
    hook.remove()
    assert tuple(out.hidden_states[-1].shape) == tuple(out.last_hidden_state.shape)
    layers = [h.numpy() for h in out.hidden_states[:-1]] + last
    return {"layers": layers, "final": out.last_hidden_state.numpy(),
            "projector": projected.numpy()}  # fmt: skip


def _close(ours, theirs, what):
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= RTOL * scale, f"{what}: {np.abs(ours - theirs).max() / scale:.2e}"


@pytest.mark.parametrize("kind", ["qwen2_audio", "voxtral", "audioflamingo3"])
def test_tower_and_projector_equal_transformers(kind, fleurs_dir, tmp_path):
    theirs_model = _build(kind)
    theirs_model.save_pretrained(tmp_path)
    ours = load_speechllm(tmp_path)
    assert ours.config.kind == kind and ours.config.layers == 2 and ours.config.has_projector
    mels, frames, samples = [], [], []
    for clip in CLIPS:
        audio = load_audio(fleurs_dir / f"{clip}.ogg")
        mel, valid = features_for_audio(audio, 128)
        mels.append(mel)
        frames.append(valid)
        samples.append(split_windows(audio)[1])
    mel, frames, samples = np.concatenate(mels), np.concatenate(frames), np.concatenate(samples)
    assert len(mel) > len(CLIPS) and frames.min() < 1500  # a long clip's two windows; a window with padding
    got = ours.outputs(mel, frames)
    want = _theirs(kind, theirs_model, mel, samples)
    assert len(want["layers"]) == 3 and got["layers"].shape[0] == 3
    masked = kind != "voxtral"
    for i, (g, w) in enumerate(zip(got["layers"], want["layers"], strict=True)):
        for b in range(len(mel)):
            n = frames[b] if masked else 1500
            _close(g[b, :n], w[b, :n], f"layer {i} window {b}")
    for b in range(len(mel)):
        n = int(got["final_frames"][b]) if masked else 1500
        _close(got["final"][b, :n], want["final"][b, :n], f"final window {b}")
        n = int(got["projector_frames"][b]) if masked else 375
        _close(got["projector"][b, :n], want["projector"][b, :n], f"projector window {b}")
    assert got["final"].shape[1] == (750 if masked else 1500) and got["projector"].shape[1] == (750 if masked else 375)
    assert ours.n_layers_out == (3 if masked else 4)  # encode's layers: checked through the job in test_speechllm_jobs
