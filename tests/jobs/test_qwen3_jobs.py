"""The Qwen3 audio tower through the jobs, on ``babelgrid random-model --kind qwen3-asr``'s folder (NumPy-written, the
released layout): encode writes every layer at 13 frames/s, equal, utterance by utterance and window by window, to
transformers' ``Qwen3ASREncoder`` holding the folder's tensors; seqsim, the probes job's language ID and the heads
job run on the store. The head masks the heads job uses (a mask per row, repeated over the row's attention windows,
and its gradient) are checked in tests/jobs/test_random_model.py.

Clips: tests/jobs/test_heads.py's three languages (de, en, es: 3 FLEURS clips each, ids shared by position) cut to
2-4 s, and one of 34 s joined from three clips, so that an utterance spans two 30 s windows and its first window four
attention windows (three of 8 s; the real widths are in tests/models/speechllm/test_qwen3_audio.py).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from engine.data.audio import load_audio
from engine.models.speechllm.qwen3_encoder import QWEN3_LAYERS
from engine.models.speechllm.qwen3_loaded import load_qwen3_audio
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.clips import write_clips
from tests.jobs.seqsim_probes_heads import heads_reads, lid_probe_reads, seqsim_reads

LANGS = ("de", "en", "es")
PER_LANG = 3
LONG = ("en", 1)  # over 30 s: two windows


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    return write_clips(tmp_path_factory.mktemp("qwen3-clips"), fleurs_dir, LANGS, PER_LANG, LONG, long_seconds=34)


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory):
    from engine.models.random_folder import write_random_folder

    root = tmp_path_factory.mktemp("qwen3-jobs")
    write_random_folder("qwen3-asr", root / "model")
    run_encode(configure(EncodeConfig, out=str(root / "store"), model=str(root / "model"), dataset=f"folder:{clips}",
                         progress=False))  # fmt: skip
    return root / "model", root / "store"


def _theirs(folder: pathlib.Path):
    """transformers' Qwen3-ASR tower with the random folder's tensors (its projection is the model's, not read)."""
    from transformers.models.qwen3_asr.configuration_qwen3_asr import Qwen3ASREncoderConfig
    from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder

    audio = json.loads((folder / "config.json").read_text())["thinker_config"]["audio_config"]
    keep = ("num_mel_bins", "d_model", "encoder_attention_heads", "encoder_ffn_dim", "encoder_layers",
            "downsample_hidden_size", "n_window", "n_window_infer", "output_dim")  # fmt: skip
    tower = Qwen3ASREncoder(Qwen3ASREncoderConfig(**{k: audio[k] for k in keep})).eval()
    tensors = load_file(folder / "model.safetensors")
    state = {k.removeprefix("thinker.audio_tower."): torch.from_numpy(v) for k, v in tensors.items()
             if k.split(".")[-2] not in ("proj1", "proj2")}  # fmt: skip
    tower.load_state_dict(state, strict=True)
    return tower


def _hooked_layers(tower, mel: np.ndarray, mel_frames: np.ndarray) -> list[np.ndarray]:
    """Layer 0 (the first block's input), each block's output and ln_post's, packed over the windows."""
    got: list = []
    hooks = [tower.layers[0].register_forward_pre_hook(lambda m, a: got.append(a[0].numpy()))]
    hooks += [layer.register_forward_hook(lambda m, i, o: got.append(o[0].numpy())) for layer in tower.layers]
    hooks.append(tower.ln_post.register_forward_hook(lambda m, i, o: got.append(o.numpy())))
    mask = torch.from_numpy(np.arange(mel.shape[-1])[None, :] < mel_frames[:, None]).long()
    with torch.no_grad():
        tower(torch.from_numpy(mel), mask)
    for h in hooks:
        h.remove()
    return got


def test_encode_every_layer_equals_transformers(encoded, clips):
    folder, store = encoded
    reader = open_store(str(store))
    info = reader.info
    assert info.family == "speechllm" and info.frame_rate == 13.0 and info.embed == 64
    assert info.layers == (0, 1, 2, 3) and info.layer_meaning == QWEN3_LAYERS
    assert json.loads((store / "manifest.json").read_text())["dims"]["config"]["kind"] == "qwen3_asr"
    ours, tower = load_qwen3_audio(folder), _theirs(folder)
    for lang, i in [LONG, ("de", 0), ("es", 2)]:
        mel, mel_frames = ours.features(load_audio(clips / lang / f"s{i}.wav"))
        frames = ours.frames(mel_frames)
        assert int(reader.lengths(lang)[reader.utterance_index(lang, f"s{i}")]) == frames.sum()
        want = _hooked_layers(tower, mel, mel_frames)  # the windows as a batch: transformers packs their frames
        assert len(want) == 4 and all(w.shape[0] == frames.sum() for w in want)
        for layer, w in enumerate(want):
            got = reader.states(lang, f"s{i}", layer)
            err, peak = np.abs(got - w).max(), np.abs(w).max()
            assert err <= 1e-5 * peak, f"{lang}/s{i} layer {layer}: {err / peak:.2e} of the peak"
    assert len(ours.features(load_audio(clips / "en" / "s1.wav"))[0]) == 2


def test_seqsim_probes_and_heads_read_the_store(encoded, tmp_path):
    """seqsim's similarity store and the probes job's language ID (3 folds: 3 ids a language) at the downsampler's
    output and ln_post's, and the heads job (every head of both blocks ablated over each language's first utterance)
    at the last stored layer (tests/jobs/seqsim_probes_heads.py)."""
    folder, store = encoded
    seqsim_reads(store, tmp_path / "sim", (0, 3), len(LANGS), PER_LANG)
    lid_probe_reads(store, tmp_path / "probes", (0, 3), folds=3)
    heads_reads(store, folder, tmp_path / "heads", 3)
