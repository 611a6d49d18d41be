"""Voxtral Realtime's audio encoder through the jobs, on ``babelgrid random-model --kind voxtral-realtime``'s folder
(NumPy-written, transformers' layout, the released 750-frame sliding window): encode writes every layer at 50 frames/s,
equal, window by window, to transformers' ``VoxtralRealtimeEncoder`` holding the folder's tensors on each window alone
(a 30 s window is 1500 frames: twice the sliding window, at the released positions); seqsim, the probes job's language
ID and the heads job (every head of both blocks ablated, scored by SeqSim R@1 at the last block; its gradient importance
is left out for the suite's time: the mask's gradient is tests/jobs/test_random_model.py's, the masked pass against
transformers tests/models/speechllm/test_voxtral_realtime.py's) run on the store. The real width against transformers is
tests/models/speechllm/test_voxtral_realtime.py's.

Clips: three languages (de, en, es: 3 FLEURS clips each, ids shared by position) cut to 2-3 s, and one of 31 s joined
from three clips, so that an utterance spans two 30 s windows.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from engine.data.audio import load_audio
from engine.models.speechllm.realtime_encoder import REALTIME_LAYERS
from engine.models.speechllm.realtime_loaded import load_realtime
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
    return write_clips(tmp_path_factory.mktemp("voxtral-realtime-clips"), fleurs_dir, LANGS, PER_LANG, LONG)


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory):
    from engine.models.random_folder import write_random_folder

    root = tmp_path_factory.mktemp("voxtral-realtime-jobs")
    write_random_folder("voxtral-realtime", root / "model")
    run_encode(configure(EncodeConfig, out=str(root / "store"), model=str(root / "model"), dataset=f"folder:{clips}",
                         progress=False))  # fmt: skip
    return root / "model", root / "store"


def _theirs(folder: pathlib.Path):
    """transformers' Voxtral Realtime encoder with the random folder's tensors."""
    from transformers.models.voxtral_realtime.configuration_voxtral_realtime import VoxtralRealtimeEncoderConfig
    from transformers.models.voxtral_realtime.modeling_voxtral_realtime import VoxtralRealtimeEncoder

    audio = json.loads((folder / "config.json").read_text())["audio_config"]
    tower = VoxtralRealtimeEncoder(
        VoxtralRealtimeEncoderConfig(**{k: v for k, v in audio.items() if k != "model_type"})
    )
    tensors = load_file(folder / "model.safetensors")
    prefix = "audio_tower."
    tower.load_state_dict({k[len(prefix) :]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)})
    return tower.eval()


def _hooked_layers(tower, mel: np.ndarray) -> list[np.ndarray]:
    """Layer 0 (the first block's input), each block's output and the final norm's, of one window alone."""
    got: list = []
    hooks = [tower.layers[0].register_forward_pre_hook(lambda m, a: got.append(a[0][0].numpy()))]
    hooks += [block.register_forward_hook(lambda m, i, o: got.append(o[0].numpy())) for block in tower.layers]
    with torch.no_grad():
        got.append(tower(input_features=torch.from_numpy(mel)[None]).last_hidden_state[0].numpy())
    for h in hooks:
        h.remove()
    return got


def test_encode_every_layer_equals_transformers(encoded, clips):
    folder, store = encoded
    reader = open_store(str(store))
    info = reader.info
    assert info.family == "speechllm" and info.frame_rate == 50.0 and info.embed == 64
    assert info.layers == (0, 1, 2, 3) and info.layer_meaning == REALTIME_LAYERS
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["dims"]["config"]["kind"] == "voxtral_realtime" and manifest["dims"]["config"]["window"] == 750
    ours, tower = load_realtime(folder), _theirs(folder)
    windows = ours.features(load_audio(clips / "en" / "s1.wav"))
    frames = ours.frames(np.array([v for _, v in windows]))
    assert len(frames) == 2 and frames[0] == 1500  # the first window twice the sliding window
    assert int(reader.lengths("en")[reader.utterance_index("en", "s1")]) == frames.sum()
    want = [np.concatenate(layer) for layer in zip(*(_hooked_layers(tower, m) for m, _ in windows), strict=True)]
    assert len(want) == 4 and all(w.shape[0] == frames.sum() for w in want)
    for layer, w in enumerate(want):
        got = reader.states("en", "s1", layer)
        err, peak = np.abs(got - w).max(), np.abs(w).max()
        assert err <= 1e-5 * peak, f"en/s1 layer {layer}: {err / peak:.2e} of the peak"


def test_seqsim_probes_and_heads_read_the_store(encoded, tmp_path):
    """seqsim's similarity store and the probes job's language ID (3 folds: 3 ids a language) at the final norm, and
    the heads job: every head of both blocks ablated over the first utterance of each language (one pass of 3
    windows per ablation), scored at the last block (tests/jobs/seqsim_probes_heads.py)."""
    folder, store = encoded
    seqsim_reads(store, tmp_path / "sim", (3,), len(LANGS), PER_LANG)
    lid_probe_reads(store, tmp_path / "probes", (3,), folds=3)
    heads_reads(store, folder, tmp_path / "heads", 2)
