"""Shared test fixtures: real data beside the checkout, and one tiny random Whisper for every test that needs a model.

The tiny model is a Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) written with NumPy
and the ``safetensors`` library, so that tests and job subprocesses load it the way they load a hub checkpoint,
without torch and without the packaged whisper-base (an optional extra). Fixtures are session-scoped: tests only read
the folder and the loaded model, so the weights are written, loaded and compiled once per session.
"""

import itertools
import os
import pathlib

import pytest

from engine.whisper.checkpoints.export import write_hf_folder
from engine.whisper.dims import ModelDimensions
from engine.whisper.languages import LANGUAGES
from engine.whisper.model import random_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]
FLEURS_SAMPLE = pathlib.Path(
    os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample")
)

# Multilingual vocabulary (51865 ids, as whisper-base), 2 + 2 blocks of width 64: encoder layers 0..3.
TINY_DIMS = ModelDimensions(80, 1500, 64, 4, 2, 51865, 448, 64, 4, 2)
TINY_SEED = 3


@pytest.fixture(scope="session")
def fleurs_dir() -> pathlib.Path:
    """The 50 real FLEURS clips (``fleurs-<lang>-<nnn>.ogg`` + ``.txt``) beside the checkout."""
    if not FLEURS_SAMPLE.is_dir():
        pytest.skip(f"real FLEURS clips not found at {FLEURS_SAMPLE} (set BABELGRID_FLEURS_SAMPLE)")
    return FLEURS_SAMPLE


@pytest.fixture(scope="session")
def fleurs_clips(fleurs_dir) -> list[pathlib.Path]:
    clips = sorted(p for p in fleurs_dir.iterdir() if p.suffix in (".opus", ".ogg", ".wav", ".flac"))
    assert len(clips) == 50, f"expected 50 clips in {fleurs_dir}, found {len(clips)}"
    return clips


# -- the tiny random model -------------------------------------------------------------------------------------------


def write_byte_level_tokenizer(path: pathlib.Path, n_text: int = 50257, num_languages: int = 99) -> None:
    """A planted ``tokenizer.json`` with OpenAI's multilingual id layout: a byte-level BPE of ``n_text`` tokens (the
    256 bytes, then pairs of them), then ``<|endoftext|>`` and the other special tokens in OpenAI's order."""
    import tokenizers

    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    pairs = list(itertools.islice(itertools.product(alphabet, repeat=2), n_text - len(alphabet)))
    vocab = {text: i for i, text in enumerate(alphabet + [a + b for a, b in pairs])}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, pairs))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tasks = ("translate", "transcribe", "startoflm", "startofprev", "nospeech", "notimestamps")
    specials = ["endoftext", "startoftranscript", *list(LANGUAGES)[:num_languages], *tasks]
    specials += [f"{i * 0.02:.2f}" for i in range(1501)]
    tok.add_special_tokens([tokenizers.AddedToken(f"<|{s}|>", normalized=False, special=True) for s in specials])
    tok.save(str(path))


def write_tiny_hf_folder(
    folder: pathlib.Path, dims: ModelDimensions = TINY_DIMS, seed: int = TINY_SEED
) -> pathlib.Path:
    """A random Whisper of ``dims`` as a Hugging Face folder in ``folder`` (created), written by the library's own
    exporter (``engine.whisper.checkpoints.export``), plus a byte-level tokenizer for the multilingual vocabulary."""
    write_hf_folder(folder, random_state_dict(dims, seed=seed), dims)
    if dims.n_vocab == 51865:
        write_byte_level_tokenizer(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """``TINY_DIMS`` with seed ``TINY_SEED`` as a Hugging Face folder: pass it to ``load_whisper`` or ``--model``."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny-model") / "tiny-random")


@pytest.fixture(scope="session")
def tiny_whisper(tiny_model_dir):
    """The tiny model loaded once (``LoadedWhisper``), float32: read it, do not change it."""
    from engine.whisper.loaded import load_whisper

    return load_whisper(tiny_model_dir)
