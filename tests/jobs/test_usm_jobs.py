"""The USM Conformer (Gemma 3n's audio tower) through the jobs, on ``babelgrid random-model --kind gemma3n``'s folder
(NumPy-written, the released layout): encode writes every layer at 25 frames/s, equal, utterance by utterance and
window by window, to transformers' ``Gemma3nAudioEncoder`` holding the folder's tensors on each window alone; seqsim,
the probes job's language ID and the heads job run on the store. Gemma 4's folder is encoded, and its head masks
(the heads job's forward pass and gradient) checked, in tests/jobs/test_random_model.py; the real widths against
transformers in tests/models/speechllm/test_usm.py.

Clips: three languages (de, en, es: 3 FLEURS clips each, ids shared by position) cut to 2-4 s, and one of 31 s joined
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
from engine.models.speechllm.usm_encoder import USM_LAYERS
from engine.models.speechllm.usm_loaded import load_usm
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
    return write_clips(tmp_path_factory.mktemp("usm-clips"), fleurs_dir, LANGS, PER_LANG, LONG)


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory):
    from engine.models.random_folder import write_random_folder

    root = tmp_path_factory.mktemp("usm-jobs")
    write_random_folder("gemma3n", root / "model")
    run_encode(configure(EncodeConfig, out=str(root / "store"), model=str(root / "model"), dataset=f"folder:{clips}",
                         progress=False))  # fmt: skip
    return root / "model", root / "store"


def _theirs(folder: pathlib.Path):
    """transformers' Gemma 3n audio tower with the random folder's tensors."""
    from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

    audio = json.loads((folder / "config.json").read_text())["audio_config"]
    tower = Gemma3nAudioEncoder(Gemma3nAudioConfig(**{k: v for k, v in audio.items() if k != "model_type"})).eval()
    tensors = load_file(folder / "model.safetensors")
    prefix = "model.audio_tower."
    tower.load_state_dict({k[len(prefix) :]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)})
    return tower


def _hooked_layers(tower, mel: np.ndarray) -> list[np.ndarray]:
    """Layer 0 (the first block's input) and each block's output of one window alone."""
    got: list = []
    hooks = [tower.conformer[0].register_forward_pre_hook(lambda m, a: got.append(a[0][0].numpy()))]
    hooks += [block.register_forward_hook(lambda m, i, o: got.append(o[0].numpy())) for block in tower.conformer]
    with torch.no_grad():
        tower(torch.from_numpy(mel)[None], torch.zeros(1, len(mel), dtype=torch.bool))
    for h in hooks:
        h.remove()
    return got


def test_encode_every_layer_equals_transformers(encoded, clips):
    folder, store = encoded
    reader = open_store(str(store))
    info = reader.info
    assert info.family == "speechllm" and info.frame_rate == 25.0 and info.embed == 64
    assert info.layers == (0, 1, 2) and info.layer_meaning == USM_LAYERS
    assert json.loads((store / "manifest.json").read_text())["dims"]["config"]["kind"] == "gemma3n"
    ours, tower = load_usm(folder), _theirs(folder)
    for lang, i in [LONG, ("es", 2)]:
        windows = ours.features(load_audio(clips / lang / f"s{i}.wav"))
        frames = ours.frames(np.array([v for _, v in windows]))
        assert int(reader.lengths(lang)[reader.utterance_index(lang, f"s{i}")]) == frames.sum()
        want = [np.concatenate(layer) for layer in zip(*(_hooked_layers(tower, m) for m, _ in windows), strict=True)]
        assert len(want) == 3 and all(w.shape[0] == frames.sum() for w in want)
        for layer, w in enumerate(want):
            got = reader.states(lang, f"s{i}", layer)
            err, peak = np.abs(got - w).max(), np.abs(w).max()
            assert err <= 1e-5 * peak, f"{lang}/s{i} layer {layer}: {err / peak:.2e} of the peak"
    assert len(ours.features(load_audio(clips / "en" / "s1.wav"))) == 2


def test_seqsim_probes_and_heads_read_the_store(encoded, tmp_path):
    """seqsim's similarity store and the probes job's language ID (3 folds: 3 ids a language) at the last block, and the
    heads job (every head of both blocks ablated over each language's first utterance) at the last stored layer
    (tests/jobs/seqsim_probes_heads.py)."""
    folder, store = encoded
    seqsim_reads(store, tmp_path / "sim", (2,), len(LANGS), PER_LANG)
    lid_probe_reads(store, tmp_path / "probes", (2,), folds=3)
    heads_reads(store, folder, tmp_path / "heads", 2)
