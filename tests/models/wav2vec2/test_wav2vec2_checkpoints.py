"""Loading wav2vec2-family checkpoints: the classes and key layouts transformers writes, the errors for broken folders
and unsupported configs, MMS adapter files, the hub path offline, greedy CTC text, and the data-parallel encoder.

Small random models (32 wide) written by transformers' ``save_pretrained``: loading does not depend on widths, and
``test_wav2vec2_parity.py`` checks the numbers at real widths.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from engine.errors import CheckpointError, ShapeError
from engine.models.common.io import file_sha256
from engine.models.wav2vec2.checkpoints import load_checkpoint
from engine.models.wav2vec2.ctc import CTCVocab
from engine.models.wav2vec2.loaded import load_wav2vec2
from tests.models.wav2vec2 import w2v_reference as ref
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = pathlib.Path(__file__).parent / "scripts" / "sharded_wav2vec2.py"
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2,
    vocab_size=20,
)
MMS = dict(SMALL, feat_extract_norm="layer", do_stable_layer_norm=True, adapter_attn_dim=4)
CLASSES = {
    "Wav2Vec2Model": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config),
    "Wav2Vec2ForCTC": (transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config),
    "Wav2Vec2ForPreTraining": (transformers.Wav2Vec2ForPreTraining, transformers.Wav2Vec2Config),
    "HubertModel": (transformers.HubertModel, transformers.HubertConfig),
    "HubertForCTC": (transformers.HubertForCTC, transformers.HubertConfig),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One saved folder per class, plus an MMS-like CTC model with an adapter ("xyz") and HuBERT with batch norm."""
    out = {}
    for i, (name, (cls, config)) in enumerate(CLASSES.items()):
        out[name] = tmp_path_factory.mktemp(name)
        ref.build(cls, config(**SMALL, codevector_dim=16, proj_codevector_dim=16), out[name], seed=i)
    out["mms"] = tmp_path_factory.mktemp("mms")
    model = ref.build(transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config(**MMS), out["mms"], seed=7)
    ref.write_adapter(model, out["mms"], "xyz", 25, seed=8)
    ref.write_vocab(out["mms"], 25, "xyz")
    out["hubert-bn"] = tmp_path_factory.mktemp("hubert-bn")
    config = transformers.HubertConfig(**SMALL, conv_pos_batch_norm=True, feat_proj_layer_norm=False)
    ref.build(transformers.HubertModel, config, out["hubert-bn"], seed=9)
    return out


def copy_folder(src: pathlib.Path, dst: pathlib.Path, edit=None) -> pathlib.Path:
    """``src`` copied to ``dst``, its model.safetensors tensors passed through ``edit(dict) -> dict``."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if edit is not None:
        save_file(edit(load_file(dst / "model.safetensors")), dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_loads_with_its_prefix_and_heads(folders, name):
    ckpt = load_checkpoint(folders[name])
    model = CLASSES[name][0].from_pretrained(folders[name]).eval()
    base = getattr(model, model.base_model_prefix, model)
    assert ckpt.dims.model_type == ("hubert" if name.startswith("Hubert") else "wav2vec2")
    assert ckpt.vocab_size == (20 if name.endswith("ForCTC") else None)
    assert ckpt.sha256 == file_sha256([folders[name] / "model.safetensors"])
    # the positional conv's weight norm folded as torch computes it
    np.testing.assert_allclose(
        ckpt.state_dict["encoder.pos_conv_embed.conv.weight"],
        base.encoder.pos_conv_embed.conv.weight.detach().numpy(),
        rtol=1e-6,
        atol=1e-7,
    )
    ignored = set(ckpt.ignored)
    if name == "Wav2Vec2ForPreTraining":  # pretraining heads are read past and listed
        assert {"quantizer.codevectors", "project_q.weight", "project_hid.weight"} <= ignored
    assert any(k.endswith("masked_spec_embed") for k in ignored)


def test_pytorch_bin_with_legacy_weight_norm_names(folders, tmp_path):
    """``pytorch_model.bin`` (torch.load(weights_only=True)) with the ``weight_g`` / ``weight_v`` names of older
    transformers loads to the same state dict."""
    src = folders["Wav2Vec2ForCTC"]
    names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    legacy = {}
    for k, v in load_file(src / "model.safetensors").items():
        for new, old in names.items():
            k = k.replace(new, old)
        legacy[k] = torch.from_numpy(v.copy())
    dst = tmp_path / "legacy"
    dst.mkdir()
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())
    torch.save(legacy, dst / "pytorch_model.bin")
    old, new = load_checkpoint(dst), load_checkpoint(src)
    assert old.sha256 == file_sha256([dst / "pytorch_model.bin"]) != new.sha256
    assert old.state_dict.keys() == new.state_dict.keys()
    for k, v in new.state_dict.items():
        np.testing.assert_array_equal(old.state_dict[k], v, err_msg=k)


def test_missing_tensor_fails_naming_it(folders, tmp_path):
    gone = "wav2vec2.encoder.layers.1.feed_forward.output_dense.bias"
    folder = copy_folder(folders["Wav2Vec2ForCTC"], tmp_path / "f", lambda t: {k: v for k, v in t.items() if k != gone})
    with pytest.raises(CheckpointError, match=f"lacks 1 tensors.*'{gone}'"):
        load_checkpoint(folder)


def test_misnamed_tensor_fails_naming_both_names(folders, tmp_path):
    good, bad = "encoder.layers.0.attention.q_proj.weight", "encoder.layers.0.attention.query.weight"
    folder = copy_folder(
        folders["Wav2Vec2Model"], tmp_path / "f", lambda t: {k.replace(good, bad): v for k, v in t.items()}
    )
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    assert f"'{good}'" in str(e.value) and f"'{bad}'" in str(e.value)


def test_wrong_shape_fails_naming_the_tensor(folders, tmp_path):
    name = "hubert.feature_projection.projection.weight"
    folder = copy_folder(folders["HubertForCTC"], tmp_path / "f", lambda t: {**t, name: t[name][:, :-1].copy()})
    with pytest.raises(CheckpointError, match=f"from '{name}'.*shape"):
        load_checkpoint(folder)


def test_no_weights_and_not_a_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(CheckpointError, match="none of model.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="neither a folder nor a Hugging Face repo id"):
        load_checkpoint(tmp_path / "nowhere" / "x")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "wav2vec2-conformer"}, "'wav2vec2-conformer' model"),
        ({"model_type": "wavlm"}, "'wavlm' model .*relative position"),
        ({"position_embeddings_type": "rotary"}, "position_embeddings_type='rotary'"),
        ({"add_adapter": True}, "add_adapter=true"),
        ({"feat_extract_norm": "batch"}, "feat_extract_norm must be 'group' or 'layer'"),
        ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
    ],
)
def test_unsupported_configs_are_refused_by_name(folders, tmp_path, change, message):
    folder = copy_folder(folders["Wav2Vec2Model"], tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_adapter_replaces_adapter_layers_and_head(folders):
    plain, with_adapter = load_checkpoint(folders["mms"]), load_checkpoint(folders["mms"], adapter="xyz")
    adapter_file = folders["mms"] / "adapter.xyz.safetensors"
    assert with_adapter.sha256 == file_sha256([folders["mms"] / "model.safetensors", adapter_file])
    assert (plain.vocab_size, with_adapter.vocab_size, with_adapter.adapter) == (20, 25, "xyz")
    written = load_file(adapter_file)
    for k, v in written.items():
        np.testing.assert_array_equal(with_adapter.state_dict[k.removeprefix("wav2vec2.")], v)
    assert written.keys() == transformers.Wav2Vec2ForCTC.from_pretrained(folders["mms"])._get_adapters().keys()


def test_adapter_errors_name_the_file_and_tensor(folders, tmp_path):
    with pytest.raises(CheckpointError, match=r"no adapter.fra.safetensors or adapter.fra.bin \(adapters found: xyz\)"):
        load_checkpoint(folders["mms"], adapter="fra")
    with pytest.raises(CheckpointError, match="has no adapter_attn_dim"):
        load_checkpoint(folders["Wav2Vec2ForCTC"], adapter="xyz")
    folder = copy_folder(folders["mms"], tmp_path / "f")
    tensors = load_file(folder / "adapter.xyz.safetensors")
    gone = "wav2vec2.encoder.layers.1.adapter_layer.linear_2.bias"
    save_file({k: v for k, v in tensors.items() if k != gone}, folder / "adapter.xyz.safetensors")
    with pytest.raises(CheckpointError, match=f"lacks '{gone}'"):
        load_checkpoint(folder, adapter="xyz")


def test_hub_id_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and 'facebook/mms-1b-all' is not in the local"):
        load_checkpoint("facebook/mms-1b-all", adapter="fra")


def test_hubert_batch_norm_positional_conv(folders):
    """HuBERT's ``conv_pos_batch_norm`` (a plain conv after an eval-mode batch norm): every layer, one utterance."""
    model = transformers.HubertModel.from_pretrained(folders["hubert-bn"]).eval()
    wave = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    theirs, _ = ref.run_alone(model, [wave])
    ours = load_wav2vec2(folders["hubert-bn"])
    states, frames = ours.encode_batch([wave])
    for layer, t in enumerate(theirs[0]):
        np.testing.assert_allclose(np.asarray(states)[layer, 0, : int(frames[0])], t, atol=1e-5 * np.abs(t).max())


def test_short_utterance_is_refused_naming_it(folders):
    model = load_wav2vec2(folders["Wav2Vec2Model"])
    with pytest.raises(ShapeError, match="utterance 1 has 20 samples; the model needs at least 40"):
        model.features([np.zeros(100, np.float32), np.zeros(20, np.float32)])


def test_greedy_ctc_text_equals_the_tokenizer(tmp_path):
    """Repeats, blanks between repeats, word delimiters, specials and an id outside the vocabulary, flat and nested
    vocabularies, ``do_lower_case``: ``CTCVocab.decode`` equals ``Wav2Vec2CTCTokenizer.decode``."""
    sequences = [[], [0, 0], [5, 5, 0, 5, 6, 4, 4, 7, 0, 0, 8, 8], [4, 5, 4, 1, 2, 3, 99, 6, 4], [7, 0, 7, 7, 4]]
    for lang, lower in ((None, False), ("xyz", False), (None, True)):
        folder = tmp_path / f"{lang}-{lower}"
        folder.mkdir()
        ref.write_vocab(folder, 30, lang)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": lower}))
        tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), target_lang=lang, do_lower_case=lower)
        ours = CTCVocab.from_folder(folder)
        assert ours.blank_id == tokenizer.pad_token_id == 0
        assert [ours.decode(s) for s in sequences] == tokenizer.batch_decode(sequences)


def test_sharded_encoder_equals_single_device(folders):
    """The sharded encoder on 4 fake CPU devices (its own process: XLA reads the device count once) equals ``encode``
    on batches of 3 and 5 ragged utterances (padded to the device count with empty rows)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folders["mms"]), "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=patient(600),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("devices") == 4 and len(report) == 2
    # Different per-device batch sizes pick different GEMM blockings: float32 rounding, not misplaced rows (O(1)).
    assert all(err < 1e-5 for err in report.values()), report


def test_layer_selection_stops_early_and_keeps_order(folders):
    """``layers`` picks ``hidden_states`` entries in the order given; the scan stops at the deepest one asked for."""
    model = load_wav2vec2(folders["mms"], adapter="xyz")
    waves = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((3000, 1900))]
    wave, lengths = model.features(waves)
    every, frames = model.encode(wave, lengths)
    picked, picked_frames = model.encode(wave, lengths, layers=(1, 0))
    np.testing.assert_array_equal(np.asarray(picked_frames), np.asarray(frames))
    np.testing.assert_allclose(np.asarray(picked), np.asarray(every)[[1, 0]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"layers \[3\] out of range 0..2"):
        model.encode(wave, lengths, layers=(3,))
