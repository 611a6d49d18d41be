"""Shared test fixtures: real data beside the checkout, and one tiny random Whisper for every test that needs a model.

The tiny model is a Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) written with NumPy
and the ``safetensors`` library, so that tests and job subprocesses load it the way they load a hub checkpoint,
without torch and without the packaged whisper-base (an optional extra). Fixtures are session-scoped: tests only read
the folder and the loaded model, so the weights are written, loaded and compiled once per session. The same holds for
the packaged whisper-base, its CTranslate2 twin and both encoders' output on the real clips (the parity modules).
"""

import atexit
import dataclasses
import hashlib
import itertools
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from engine.languages import LANGUAGES
from engine.models.whisper.checkpoints.export import write_hf_folder
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.model import random_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]

# CTranslate2 (the parity modules' reference decoder) and torch run their threads on OpenMP (libgomp), whose idle
# threads spin-wait by default: on a loaded machine the spinning takes the CPU the working thread needs. CTranslate2's
# greedy decode of 4 FLEURS windows (intra_threads=2, load ~16 on the 2-core machine): 19.1 s CPU and 80 s wall
# spinning, 1.5 s and 9 s waiting passively (one thread: 1.3 s and 9.8 s). libgomp reads this when it loads, so it is
# set here, before any test module imports either library; it changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Job tests start a few hundred `python -m jobs.<job>` processes, most of them on the tiny model with the same shapes:
# each compiled the same programs again. They share JAX's persistent compilation cache, in a folder of this session
# (removed at its end, so no run reads another's), every program cached however quick its compile. Only the
# children read these variables: this process imported JAX above, with the cache off, so the thousands of small
# kernel compiles of the kernel tests are not serialised to disk. A cache hit is the same executable; no result
# changes. JAX_COMPILATION_CACHE_DIR set by the caller is kept ("" turns the cache off).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    JAX_CACHE = tempfile.mkdtemp(prefix="babelgrid-test-jax-cache-")
    atexit.register(shutil.rmtree, JAX_CACHE, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

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
    exporter (``engine.models.whisper.checkpoints.export``), plus a byte-level tokenizer for the multilingual
    vocabulary."""
    write_hf_folder(folder, random_state_dict(dims, seed=seed), dims)
    if dims.n_vocab == 51865:
        write_byte_level_tokenizer(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """``TINY_DIMS`` with seed ``TINY_SEED`` as a Hugging Face folder: pass it to ``load_whisper`` or ``--model``."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny-model") / "tiny-random")


@pytest.fixture(scope="session")
def turbo_model_dir(tmp_path_factory) -> pathlib.Path:
    """A random-weight Whisper large-v3-turbo as a Hugging Face folder: turbo's config, generation config (alignment
    heads), v3 tokenizer, and 2 encoder blocks instead of 32 (``tests/turbo_model.py``); about 870 MB, written once."""
    from tests.turbo_model import write_turbo_folder

    return write_turbo_folder(tmp_path_factory.mktemp("turbo") / "turbo-random")


@pytest.fixture(scope="session")
def tiny_whisper(tiny_model_dir):
    """The tiny model loaded once (``LoadedWhisper``), float32: read it, do not change it."""
    from engine.models.whisper.loaded import load_whisper

    return load_whisper(tiny_model_dir)


# -- the packaged whisper-base on the real clips, shared by the parity modules ----------------------------------------
#
# Loading whisper-base, writing its CTranslate2 folder, taking the log-mel of the 50 clips and running both encoders
# over their 51 windows cost about a minute each time; the parity modules (encoder, decoding, word timestamps) share
# one copy per session. Read them, do not change them.

PARITY_BATCH = 8  # windows per encoder call on both sides


@dataclasses.dataclass(frozen=True)
class FleursWindows:
    """Every 30 s window of the 50 real clips (OpenAI's padding: the audio padded, then the log-mel taken)."""

    names: list[str]  # per clip: file stem, fleurs-<whisper code>-<nnn>
    langs: list[str]  # per clip: Whisper code from the file name
    refs: list[str]  # per clip: the FLEURS transcript
    mel: np.ndarray  # f32[window, n_mels, 3000]
    owner: np.ndarray  # i32[window]: index of the window's clip
    valid: np.ndarray  # i32[window]: encoder frames holding audio

    def windows_of(self, clip: int) -> np.ndarray:
        return np.flatnonzero(self.owner == clip)


@pytest.fixture(scope="session")
def base_whisper():
    """The packaged whisper-base (``load_whisper()``), float32."""
    from engine.models.whisper.loaded import load_whisper

    return load_whisper()


@pytest.fixture(scope="session")
def ct2_base_dir(tmp_path_factory) -> pathlib.Path:
    """The packaged model as a plain CTranslate2 folder (parts concatenated), for CTranslate2 and faster-whisper."""
    from engine.models.whisper.checkpoints.load import write_packaged_ct2_folder

    return write_packaged_ct2_folder(tmp_path_factory.mktemp("ct2-base"))


@pytest.fixture(scope="session")
def ct2_base(ct2_base_dir):
    """CTranslate2's ``Whisper`` on the packaged model, float32, two threads."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    return ctranslate2.models.Whisper(str(ct2_base_dir), device="cpu", compute_type="float32", intra_threads=2)


def shared_by_workers(tmp_path_factory, worker_id: str, name: str, compute):
    """``compute()`` (a dict of NumPy arrays) once per session, not once per xdist worker: the first worker to ask
    computes it under a file lock and saves it to the session's shared temporary folder; the others load it.

    The recipe of pytest-xdist's docs ("making session-scoped fixtures execute only once"). Each copy of the whisper-
    base FLEURS encodings took both cores for about a minute on each worker; a load takes about a second. Without
    xdist (``worker_id`` "master") nothing is written: the session's own fixture cache already shares it.
    """
    if worker_id == "master":
        return compute()
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / f"shared-{name}.npz"  # this session's folder, not an older one
    with FileLock(f"{path}.lock"):
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        arrays = compute()
        part = path.with_suffix(".part.npz")
        np.savez(part, **arrays)
        os.replace(part, path)  # a worker killed mid-write leaves no file that looks complete
        return arrays


@pytest.fixture(scope="session")
def fleurs_windows(fleurs_clips, base_whisper, tmp_path_factory, worker_id) -> FleursWindows:
    from engine.data.audio import load_audio
    from engine.models.whisper.features import features_for_audio

    def compute():
        mels, owner, valid = [], [], []
        for i, path in enumerate(fleurs_clips):
            mel, frames = features_for_audio(load_audio(path), base_whisper.dims.n_mels)
            mels.append(np.asarray(mel))
            owner += [i] * len(mel)
            valid += [int(f) for f in frames]
        return {
            "mel": np.concatenate(mels),
            "owner": np.asarray(owner, np.int32),
            "valid": np.asarray(valid, np.int32),
        }

    arrays = shared_by_workers(tmp_path_factory, worker_id, "fleurs-windows", compute)
    return FleursWindows(
        names=[p.stem for p in fleurs_clips],
        langs=[p.stem.split("-")[1] for p in fleurs_clips],
        refs=[p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in fleurs_clips],
        **arrays,
    )


def ct2_view(array):
    """A CTranslate2 ``StorageView`` of a float32 copy of ``array``."""
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.array(array, np.float32, copy=True))


@pytest.fixture(scope="session")
def base_encoded(request, base_whisper, fleurs_windows, tmp_path_factory, worker_id) -> tuple[np.ndarray, np.ndarray]:
    """Encoder output (layer L+1) of every window, ours and CTranslate2's: f32[window, 1500, 512] each, computed once
    per session (``shared_by_workers``).

    Ours runs at full float32 matmul precision: on a GPU JAX's default is TF32, which on an H100 put the encoder at
    1.3e-2 to 2.9e-2 of the peak from CTranslate2 (4 windows; 3.4e-5 to 8.8e-5 with "highest").
    """

    def compute():
        import jax

        ct2_base = request.getfixturevalue("ct2_base")  # only the worker that computes loads it here
        mel = fleurs_windows.mel
        top = base_whisper.dims.n_audio_layer + 1
        ours, theirs = [], []
        for start in range(0, len(mel), PARITY_BATCH):
            chunk = mel[start : start + PARITY_BATCH]
            with jax.default_matmul_precision("highest"):
                ours.append(np.asarray(base_whisper.encode(chunk, (top,))[0]))
            theirs.append(np.asarray(ct2_base.encode(ct2_view(chunk), to_cpu=True)))
        return {"ours": np.concatenate(ours), "theirs": np.concatenate(theirs)}

    arrays = shared_by_workers(tmp_path_factory, worker_id, "base-encoded", compute)
    return arrays["ours"], arrays["theirs"]


@pytest.fixture(scope="session")
def ct2_generate(ct2_base, base_encoded, tmp_path_factory, worker_id):
    """``generate(windows, prompts, beam_size) -> list[list[int]]``: CTranslate2's tokens for ``windows`` (indices, one
    call) of its own encoder output (``base_encoded[1]``), one prompt per window, with the options both parity modules
    use (patience 1, length_penalty 1, the checkpoint's suppression, max_length 448), memoised.

    ``test_parity_ct2.py`` (prompts from the detected languages) and ``test_parity_ct2_decode.py`` (from the clips'
    languages) both decode the same batches greedily; where their prompts agree, the second reads the first's result
    instead of running CTranslate2 over the 51 windows again, on the same xdist worker or another
    (``shared_by_workers``).
    """
    cache = {}

    def generate(windows, prompts, beam_size: int) -> list[list[int]]:
        key = (tuple(int(i) for i in windows), tuple(tuple(p) for p in prompts), beam_size)
        if key not in cache:
            name = "ct2-generate-" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]
            arrays = shared_by_workers(tmp_path_factory, worker_id, name, lambda: run(key))
            cache[key] = [tuple(int(t) for t in row[row >= 0]) for row in arrays["tokens"]]
        return [list(t) for t in cache[key]]

    def run(key) -> dict[str, np.ndarray]:
        """CTranslate2's tokens for ``key``, one row per window, padded with -1."""
        windows, prompts, beam_size = key
        out = ct2_base.generate(
            ct2_view(base_encoded[1][list(windows)]),
            [list(p) for p in prompts],
            beam_size=beam_size,
            patience=1.0,
            length_penalty=1.0,
            suppress_blank=True,
            suppress_tokens=[-1],
            max_length=448,
        )
        rows = [r.sequences_ids[0] for r in out]
        tokens = np.full((len(rows), max(map(len, rows), default=0)), -1, np.int64)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        return {"tokens": tokens}

    return generate
