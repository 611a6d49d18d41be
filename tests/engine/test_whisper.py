"""The loaded-model API: bad inputs get specific errors; OpenAI .pt checkpoints get a tokenizer."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import CheckpointError, LanguageError, ShapeError
from engine.whisper.decoding import DecodingOptions, teacher_forced
from engine.whisper.dims import ModelDimensions
from engine.whisper.loaded import load_whisper
from engine.whisper.model import Whisper, random_state_dict

torch = pytest.importorskip("torch")

DIMS = ModelDimensions(80, 1500, 64, 4, 2, 51865, 448, 64, 4, 2)


def write_pt(path, dims):
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(dims).items()}
    torch.save({"dims": dims.to_dict(), "model_state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_whisper(write_pt(tmp_path_factory.mktemp("pt") / "tiny-random.pt", DIMS))


def test_openai_pt_loads_with_packaged_tokenizer(tiny):
    assert tiny.checkpoint.format == "openai"
    assert tiny.tokenizer.sot == 50258 and tiny.tokenizer.language_token("de") == 50261
    mel = np.zeros((1, 80, 3000), np.float32)
    states = tiny.encode(mel)
    assert states.shape == (DIMS.n_audio_layer + 2, 1, 1500, 64)
    # Random dims match no OpenAI size, so no table applies: the default is every head of the
    # last half of the decoder layers.
    assert tiny.checkpoint.alignment_heads is None
    assert tiny.alignment_heads().tolist() == [[1, h] for h in range(4)]


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


def test_unknown_language_and_task(tiny):
    mel = np.zeros((1, 80, 3000), np.float32)
    with pytest.raises(LanguageError):
        tiny.transcribe(mel, DecodingOptions(language="xx"))
    with pytest.raises(ValueError, match="task must be one of"):
        DecodingOptions(task="summarise")


def test_alignment_heads_out_of_range(tiny):
    xa = jnp.zeros((1, 1500, 64))
    with pytest.raises(ValueError, match=r"alignment heads \[\(5, 0\)\] out of range"):
        teacher_forced(tiny.model, xa, np.array([[50258, 50259]]), np.array([[5, 0]]))
