"""w2v-BERT checkpoints and configs without torch models: small random folders in both layouts, written with the
``safetensors`` library (a ``Wav2Vec2BertModel`` folder, and a sharded ``SeamlessM4Tv2Model`` one whose text shard
must stay unread), every refusal naming its field or tensor, and hub ids through a fake ``snapshot_download``.
The real-width folders written by transformers' ``save_pretrained`` are read in ``test_w2vbert_parity.py``.
"""

import fnmatch
import hashlib
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.errors import CheckpointError
from engine.models.w2vbert.checkpoints import load_checkpoint
from engine.models.w2vbert.config import SEAMLESS_M4T_V2, TORCH_LN_EPS, W2V_BERT, EncoderConfig, config_from_hf
from engine.models.w2vbert.model import random_state_dict

SMALL = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "conv_depthwise_kernel_size": 7}
W2V_CONFIG = {"model_type": W2V_BERT, "num_hidden_layers": 2, **SMALL}
SEAMLESS_CONFIG = {
    "model_type": SEAMLESS_M4T_V2,
    "hidden_size": 64,
    "speech_encoder_layers": 2,
    "speech_encoder_attention_heads": 4,
    "speech_encoder_intermediate_size": 128,
    "conv_depthwise_kernel_size": 7,
    "layer_norm_eps": 1e-6,
}


def small_config(family=W2V_BERT) -> EncoderConfig:
    return config_from_hf(W2V_CONFIG if family == W2V_BERT else SEAMLESS_CONFIG)


def write_w2v_folder(folder, sd=None):
    folder.mkdir(parents=True, exist_ok=True)
    sd = dict(random_state_dict(small_config(), seed=1) if sd is None else sd)
    # Known tensors after the conformer (pre-training and adapter): recognised, not read.
    extra = {"masked_spec_embed": np.zeros(64, np.float32), "adapter.layers.0.ffn.output_dense.bias": np.zeros(64)}
    save_file({**sd, **{k: v.astype(np.float32) for k, v in extra.items()}}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(W2V_CONFIG))
    return folder


def write_seamless_folder(folder, sd=None):
    """Sharded as save_pretrained shards a SeamlessM4Tv2Model: text weights, then the speech encoder, then more text."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = random_state_dict(small_config(SEAMLESS_M4T_V2), seed=2) if sd is None else sd
    speech = {f"speech_encoder.{k}": v for k, v in sd.items()}
    speech |= {
        f"speech_encoder.{k}": np.ones(64, np.float32) for k in ("encoder.layer_norm.weight", "inner_layer_norm.bias")
    }
    shards = {
        "model-00001-of-00003.safetensors": {"shared.weight": np.ones((8, 64), np.float32)},
        "model-00002-of-00003.safetensors": speech,
        "model-00003-of-00003.safetensors": {"text_decoder.layer_norm.weight": np.ones(64, np.float32)},
    }
    for name, tensors in shards.items():
        save_file(tensors, folder / name)
    weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(SEAMLESS_CONFIG))
    return folder


def test_configs_of_both_families():
    w2v = config_from_hf({"model_type": W2V_BERT})  # transformers' defaults: w2v-bert-2.0's dimensions
    assert (w2v.n_layer, w2v.width, w2v.n_head, w2v.ffn_width, w2v.n_input) == (24, 1024, 16, 4096, 160)
    assert (w2v.depthwise_kernel, w2v.left_positions, w2v.right_positions, w2v.chunk_size) == (31, 64, 8, None)
    assert (w2v.n_layers_out, w2v.seconds_per_frame, w2v.n_positions) == (25, 0.02, 73)
    seamless = config_from_hf({"model_type": SEAMLESS_M4T_V2})
    assert dataclasses_equal_but_family(w2v, seamless)
    assert (seamless.chunk_size, seamless.left_chunks) == (20000, 128)
    small = small_config(SEAMLESS_M4T_V2)
    # The Seamless blocks' norms pass no eps (torch's default); only the feature projection reads layer_norm_eps.
    assert (small.projection_ln_eps, small.block_ln_eps) == (1e-6, TORCH_LN_EPS)


def dataclasses_equal_but_family(a, b):
    keep = ("n_layer", "width", "n_head", "ffn_width", "n_input", "depthwise_kernel", "left_positions")
    return all(getattr(a, k) == getattr(b, k) for k in keep)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embeddings_type": "rotary"}, "position_embeddings_type='rotary' is not supported.*relative_key"),
        ({"position_embeddings_type": "relative"}, "position_embeddings_type='relative' is not supported"),
        ({"position_embeddings_type": None}, "position_embeddings_type=None is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported.*swish"),
        ({"speech_encoder_hidden_act": "relu"}, "speech_encoder_hidden_act='relu' is not supported"),
        ({"conv_depthwise_kernel_size": 30}, "conv_depthwise_kernel_size=30 .* must be odd"),
        ({"model_type": "whisper"}, "describes a 'whisper' model.*wav2vec2-bert.*seamless_m4t_v2"),
    ],
)
def test_unsupported_options_are_refused_by_name(change, message):
    base = SEAMLESS_CONFIG if "speech_encoder_hidden_act" in change else W2V_CONFIG
    with pytest.raises(CheckpointError, match=message):
        config_from_hf({**base, **change}, "x/config.json")


def test_w2v_bert_folder(tmp_path):
    folder = write_w2v_folder(tmp_path / "w2v")
    ckpt = load_checkpoint(folder)
    want = random_state_dict(small_config(), seed=1)
    assert sorted(ckpt.state_dict) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(ckpt.state_dict[k], v)
    assert ckpt.sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (ckpt.name, ckpt.config) == ("w2v", small_config())


def test_seamless_folder_reads_only_the_speech_encoder_shards(tmp_path):
    folder = write_seamless_folder(tmp_path / "seamless")
    for unread in ("model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"):
        (folder / unread).unlink()  # listed in the index, absent: reading it would fail
    ckpt = load_checkpoint(folder, dtype=np.float16)
    want = random_state_dict(small_config(SEAMLESS_M4T_V2), seed=2)
    assert sorted(ckpt.state_dict) == sorted(want)
    depthwise = "encoder.layers.1.conv_module.depthwise_conv.weight"
    np.testing.assert_array_equal(ckpt.state_dict[depthwise], want[depthwise].astype(np.float16))
    assert ckpt.sha256 == hashlib.sha256((folder / "model-00002-of-00003.safetensors").read_bytes()).hexdigest()


def test_pytorch_bin_folder(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "bin"
    folder.mkdir()
    sd = random_state_dict(small_config(), seed=3)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(W2V_CONFIG))
    ckpt = load_checkpoint(folder)
    projection = "feature_projection.projection.weight"
    np.testing.assert_array_equal(ckpt.state_dict[projection], sd[projection])


@pytest.mark.parametrize("family", [W2V_BERT, SEAMLESS_M4T_V2])
def test_missing_unknown_and_misshapen_tensors_are_named(tmp_path, family):
    write, prefix = (write_w2v_folder, "") if family == W2V_BERT else (write_seamless_folder, "speech_encoder.")
    sd = random_state_dict(small_config(family))
    gone = "encoder.layers.1.self_attn.distance_embedding.weight"
    with pytest.raises(CheckpointError, match=f"lacks 1 tensors .*: {prefix}{gone}"):
        load_checkpoint(write(tmp_path / "missing", {k: v for k, v in sd.items() if k != gone}))
    renamed = {("encoder.layers.1.self_attn.distance_embeddings.weight" if k == gone else k): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=f"does not: {prefix}encoder.layers.1.self_attn.distance_embeddings"):
        load_checkpoint(write(tmp_path / "renamed", renamed))
    bad = {**sd, gone: np.zeros((72, 16), np.float32)}
    with pytest.raises(CheckpointError, match=f"'{prefix}{gone}' has shape \\(72, 16\\), .* requires \\(73, 16\\)"):
        load_checkpoint(write(tmp_path / "shape", bad))


def test_unusable_sources(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder nor a Hugging Face repo id"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a folder with config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(W2V_CONFIG))
    with pytest.raises(CheckpointError, match="has config.json but none of model.safetensors"):
        load_checkpoint(tmp_path)


# --- the hub, faked ---------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """``install(repo folder or exception)``: snapshot_download copies the files its patterns allow into a local
    snapshot, as the hub client does; returns the list of calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def install(result):
        snapshot = tmp_path / "snapshot"

        def snapshot_download(repo_id, *, revision=None, allow_patterns=None):
            calls.append((repo_id, revision, list(allow_patterns)))
            if isinstance(result, Exception):
                raise result
            snapshot.mkdir(exist_ok=True)
            for f in result.iterdir():
                if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                    shutil.copy(f, snapshot / f.name)
            return str(snapshot)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return calls

    return install


def test_hub_seamless_downloads_only_the_speech_encoder(fake_hub, tmp_path):
    calls = fake_hub(write_seamless_folder(tmp_path / "repo"))
    ckpt = load_checkpoint("facebook/seamless-m4t-v2-large@main")
    assert ckpt.name == "facebook/seamless-m4t-v2-large@main" and ckpt.config.family == SEAMLESS_M4T_V2
    fetched = [p for _, _, patterns in calls for p in patterns]
    assert "model-00002-of-00003.safetensors" in fetched
    assert not [p for p in fetched if p.startswith("model-0000") and "00002" not in p]
    assert {(repo, rev) for repo, rev, _ in calls} == {("facebook/seamless-m4t-v2-large", "main")}


def test_hub_w2v_bert_single_file(fake_hub, tmp_path):
    calls = fake_hub(write_w2v_folder(tmp_path / "repo"))
    assert load_checkpoint("facebook/w2v-bert-2.0").config == small_config()
    assert "pytorch_model.bin" not in [p for _, _, patterns in calls for p in patterns]  # safetensors found first


def test_hub_unreachable_fails_clearly(fake_hub, monkeypatch):
    from huggingface_hub import constants, errors

    fake_hub(errors.LocalEntryNotFoundError("connection refused"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="hub is unreachable and 'facebook/w2v-bert-2.0' .*pass the folder"):
        load_checkpoint("facebook/w2v-bert-2.0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and 'facebook/seamless-m4t-v2-large'"):
        load_checkpoint("facebook/seamless-m4t-v2-large")
