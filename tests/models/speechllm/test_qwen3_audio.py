"""The Qwen3 audio encoder (Qwen3-ASR, Qwen3-Omni's AuT) against transformers' PyTorch, layer by layer.

Random weights (every tensor moved off its initial value) in a small tower that keeps the released structure: 128
mels, chunks of 100 mel frames (``n_window`` 50) through three stride-2 ``Conv2d`` (32 channels here, 480 released),
attention windows of 800 mel frames (``n_window_infer``: 104 frames, 8 s), 2 blocks of width 64 (4 heads), GELU, the
output projection to 96. Qwen3-ASR is built as ``Qwen3ASRForConditionalGeneration`` and saved by
``save_pretrained`` (transformers' layout: ``multi_modal_projector.linear_1/2``); Qwen3-Omni's tower as
``Qwen3OmniMoeAudioEncoder``, written in the released layout (``thinker_config.audio_config``,
``thinker.audio_tower.*``). babelgrid loads each folder.

Input: three clips of noise and tones in one ragged batch, 11.3 s (two attention windows, the second partial), 4.57 s
and 0.3 s (under the feature extractor's 0.5 s minimum), as babelgrid's 30 s log-mel windows with their valid mel
frames, which are checked against ``Qwen3ASRFeatureExtractor`` first. transformers' tower runs as its model calls
it (Qwen3-ASR: the padded features and ``input_features_mask``; Omni: the valid frames packed, with
``feature_lens``); forward hooks read the input of the first block (layer 0), every block's output, ``ln_post``'s
and the projection's, packed over the batch, and are split by each clip's frames. Compared in float32 over each
clip's valid frames as ``max |ours - theirs| / max |theirs|`` per array: within 1e-5 (two blocks of width 64, other
summation orders; measured about 1e-7).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from engine.models.common import logmel
from engine.models.common.logmel import log_mel_spectrogram, split_windows
from engine.models.speechllm.qwen3_config import frames_of, pooled_frames
from engine.models.speechllm.qwen3_loaded import load_qwen3_audio, mel_frames

RTOL = 1e-5
AUDIO = dict(num_mel_bins=128, d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128, encoder_layers=2,
             downsample_hidden_size=32, n_window=50, n_window_infer=800, output_dim=96)  # fmt: skip
TEXT = dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16, vocab_size=128)  # fmt: skip
SECONDS = (11.3, 4.57, 0.3)


def _perturb(model, skip: str = "language_model"):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for s in SECONDS:
        t = np.arange(int(s * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        out.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def batch():
    clips = _clips()
    extractor = transformers.Qwen3ASRFeatureExtractor()
    theirs = extractor(clips, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    mels, frames = [], []
    for clip in clips:
        windows, samples = split_windows(clip)
        mels.append(np.asarray(log_mel_spectrogram(windows, 128)))
        frames.append(mel_frames(samples))
    mel, frames = np.concatenate(mels), np.concatenate(frames)
    np.testing.assert_array_equal(theirs["attention_mask"].sum(-1), frames)
    assert theirs["input_features"].shape == mel.shape
    assert np.abs(theirs["input_features"] - mel).max() < 1e-4  # float32 STFTs: torch's and babelgrid's JAX one
    return mel, frames


def _hooked(tower, run) -> dict:
    """Runs ``run()`` with hooks on ``tower``: layer 0 (the first block's input), each block's output, ln_post's."""
    got: dict = {"layers": []}
    hooks = [tower.layers[0].register_forward_pre_hook(lambda m, a: got["layers"].append(a[0].detach().numpy()))]
    for layer in tower.layers:
        hooks.append(layer.register_forward_hook(lambda m, i, o: got["layers"].append(o[0].detach().numpy())))
    hooks.append(tower.ln_post.register_forward_hook(lambda m, i, o: got.__setitem__("final", o.detach().numpy())))
    with torch.no_grad():
        got["projector"] = run().numpy()
    for h in hooks:
        h.remove()
    return got


def _asr(tmp_path, mel, frames):
    torch.manual_seed(0)
    config = transformers.Qwen3ASRConfig(audio_config=AUDIO, text_config=TEXT)
    model = _perturb(transformers.Qwen3ASRForConditionalGeneration(config))
    model.save_pretrained(tmp_path)
    mask = torch.from_numpy(np.arange(mel.shape[-1])[None, :] < frames[:, None]).long()
    inner = model.model
    return _hooked(inner.audio_tower, lambda: inner.get_audio_features(torch.from_numpy(mel), mask).pooler_output)


def _omni(tmp_path, mel, frames):
    torch.manual_seed(0)
    config = Qwen3OmniMoeAudioEncoderConfig(**AUDIO)
    tower = _perturb(Qwen3OmniMoeAudioEncoder(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "thinker_config": {
        "model_type": "qwen3_omni_moe_thinker", "audio_config": config.to_dict()}}))  # fmt: skip
    save_file({f"thinker.audio_tower.{k}": v.contiguous() for k, v in tower.state_dict().items()},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    packed = np.concatenate([m[:, :f] for m, f in zip(mel, frames, strict=True)], axis=1)  # the thinker's [mask]
    lens = torch.from_numpy(frames.astype(np.int64))
    return _hooked(tower, lambda: tower(torch.from_numpy(packed), feature_lens=lens).last_hidden_state)


def _omni25(tmp_path, mel, frames):
    torch.manual_seed(0)
    keep = ("num_mel_bins", "d_model", "encoder_attention_heads", "encoder_ffn_dim", "encoder_layers", "output_dim")
    config = Qwen2_5OmniAudioEncoderConfig(**{k: AUDIO[k] for k in keep}, n_window=100)
    tower = _perturb(Qwen2_5OmniAudioEncoder(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": {
        "model_type": "qwen2_5_omni_thinker", "audio_config": config.to_dict()}}))  # fmt: skip
    save_file({f"thinker.audio_tower.{k}": v.contiguous() for k, v in tower.state_dict().items()},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    packed = np.concatenate([m[:, :f] for m, f in zip(mel, frames, strict=True)], axis=1)  # the thinker's [mask]
    lens = torch.from_numpy(frames.astype(np.int64))
    return _hooked(tower, lambda: tower(torch.from_numpy(packed), feature_lens=lens).last_hidden_state)


def _close(ours, theirs, what):
    scale = np.abs(theirs).max()
    err = np.abs(ours - theirs).max() / scale
    assert err <= RTOL, f"{what}: {err:.2e} of the peak"


def _compare(name, got, want, n, kind):
    """``got f[batch, frame, width]`` against transformers' frames packed over the batch, ``n`` valid per clip."""
    edges = np.concatenate([[0], np.cumsum(n)])
    assert want.shape[0] == edges[-1], f"{name}: transformers packs {want.shape[0]} frames, we count {edges[-1]}"
    for b in range(len(n)):
        _close(got[b, : n[b]], want[edges[b] : edges[b + 1]], f"{kind} {name} clip {b}")


BUILD = {"qwen3_asr": _asr, "qwen3_omni": _omni, "qwen2_5_omni": _omni25}
# kind -> (frames per chunk, per attention window, a 30 s window's frames)
SHAPES = {"qwen3_asr": (13, 104, 390), "qwen3_omni": (13, 104, 390), "qwen2_5_omni": (100, 100, 1500)}


@pytest.mark.parametrize("kind", list(BUILD))
def test_every_layer_equals_transformers(kind, batch, tmp_path):
    mel, frames = batch
    want = BUILD[kind](tmp_path, mel, frames)
    ours = load_qwen3_audio(tmp_path)
    c = ours.config
    assert c.kind == kind and (c.chunk_frames, c.window_frames) == SHAPES[kind][:2]
    got = ours.outputs(mel, frames)
    n = ours.frames(frames)
    np.testing.assert_array_equal(n, got["frames"])
    assert n[0] > c.window_frames  # the long clip spans attention windows
    if c.pooled:  # Qwen2.5-Omni: ln_post after pooling pairs, at 25 frames/s: not a stored layer
        assert len(want["layers"]) == ours.n_layers_out == len(got["layers"]) == 3
    else:
        want["layers"].append(want["final"])
        assert len(want["layers"]) == ours.n_layers_out == len(got["layers"]) == 4
    for i, (g, w) in enumerate(zip(got["layers"], want["layers"], strict=True)):
        _compare(f"layer {i}", g, w, n, kind)
    _compare("final", got["final"], want["final"], got["final_frames"], kind)
    _compare("projector", got["projector"], want["projector"], got["projector_frames"], kind)
    assert frames_of(c, 3000) == got["layers"].shape[2] == SHAPES[kind][2]  # what a 30 s window's store rows hold


@pytest.mark.parametrize(("kind", "output", "rate", "embed"), [("qwen2.5-omni", "projector", 25.0, 128),
                                                               ("qwen3-asr", "final", 13.0, 64)])  # fmt: skip
def test_tower_outputs_declare_their_rate_and_frames(kind, output, rate, embed, tmp_path):
    """``--tower_output``: the encoder of random-model's folder declares the output's frame rate, width and valid
    frames (Qwen2.5-Omni's pooled to 25/s: ``pooled_frames``, as ``outputs`` counts them, checked against
    transformers above), from the audio and from its length alone."""
    from engine.models.family import load_encoder
    from engine.models.random_folder import write_random_folder

    write_random_folder(kind, tmp_path / "m")
    encoder = load_encoder(tmp_path / "m", output=output)
    assert (encoder.frame_rate, encoder.embed, encoder.n_layers_out) == (rate, embed, 1)
    assert output in encoder.layer_meaning or "final output" in encoder.layer_meaning
    audio = _clips()[0]  # 11.3 s
    inputs, kept = encoder.windows(audio, "window")
    frames = encoder.loaded.frames(np.array([f for _, f in inputs]))
    want = pooled_frames(frames) if encoder.loaded.config.pooled else frames
    assert kept.tolist() == want.tolist() == [encoder.expected_frames(len(audio), "window")[0]]
    assert abs(kept[0] - 11.3 * rate) <= 1


@pytest.mark.parametrize("kind", ["qwen3-asr", "qwen2.5-omni"])
def test_a_batch_runs_the_attention_windows_its_longest_window_needs(kind, tmp_path):
    """The encoder's ``collate`` cuts a batch's mel to whole attention windows of at least 8 s, as many as its longest
    row needs (``qwen3_loaded.trimmed``): every row's valid frames are the full 30 s window's, and a batch of short
    clips runs 800 mel frames, not 3000. Equal to 1e-6 of each layer's peak: XLA compiles a smaller batch's fused
    steps apart, so float32 results may differ in the last bits (measured on CPU: 0.0 for Qwen3-ASR, 4.1e-7 for
    Qwen2.5-Omni)."""
    from engine.models.family import load_encoder
    from engine.models.random_folder import write_random_folder
    from engine.models.speechllm.qwen3_loaded import TRIM_STEP

    write_random_folder(kind, tmp_path / "m")
    encoder = load_encoder(tmp_path / "m")
    long, short, shortest = _clips()  # 11.3 s, 4.57 s, 0.3 s
    rows = [encoder.windows(a, "window")[0][0] for a in (short, shortest, long)]
    for batch, width in ((rows[:2], TRIM_STEP), (rows, 2 * TRIM_STEP)):
        mel, valid = encoder.collate(batch, 4)
        full, _ = logmel.collate_windows(batch, 4)
        assert mel.shape[-1] == width and full.shape[-1] == 3000
        cut = np.asarray(encoder.loaded.encode(mel, valid))
        whole = np.asarray(encoder.loaded.encode(full, valid))
        frames = encoder.loaded.frames(valid)
        assert cut.shape[2] == frames_of(encoder.loaded.config, width) < whole.shape[2]
        for r, n in enumerate(frames[: len(batch)]):
            for layer in range(len(cut)):
                peak = np.abs(whole[layer, r, :n]).max()
                assert np.abs(cut[layer, r, :n] - whole[layer, r, :n]).max() <= 1e-6 * peak, (kind, r, layer)
