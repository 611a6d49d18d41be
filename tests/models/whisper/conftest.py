"""Whisper's parity fixtures: the packaged whisper-base (``base_whisper``, tests/conftest.py) on the real FLEURS
clips of ``PARITY_CLIPS``, its CTranslate2 twin and both encoders' output, shared by the parity modules of this folder
(encoder, decoding, word timestamps, early exit). Session-scoped, and computed once for all xdist workers
(``shared_by_workers``): read them, do not change them.
"""

import dataclasses
import hashlib
import os
import pathlib

import numpy as np
import pytest

# Loading whisper-base, writing its CTranslate2 folder, taking the log-mel of the clips and running both encoders
# over their windows cost about a minute each time; the parity modules share one copy per session.
PARITY_BATCH = 6  # windows per encoder call on both sides: the 12 windows in two calls of one compiled program
# The parity clips: the first 2 of each of the 5 languages and de-009 (43 s: the one clip of two windows), 12
# windows. All 50 clips (51 windows) gave the same results (2026-11-23: every encoder window within tolerance,
# detections equal, 50/50 greedy and translated transcripts identical) at three times the CI time of these modules,
# and so did the first 5 of each (27 windows, until 2026-11-27 noon) and the first 3 (17 windows, until 2026-11-27);
# every case the 50 cover is here (languages, the long clip, the beam clips of test_parity_ct2_decode.py, the
# early-exit clips of test_early_exit_hf.py and test_turbo.py). On CI's AVX2 machines these modules' encoder,
# decoding and word-timestamp passes over 27 windows were about 15 minutes of the two workers' time.
PARITY_PER_LANGUAGE = 2
PARITY_LONG = "fleurs-de-009"


def parity_clips(clips) -> list:
    return [c for c in clips if int(c.stem.rsplit("-", 1)[1]) < PARITY_PER_LANGUAGE or c.stem == PARITY_LONG]


@dataclasses.dataclass(frozen=True)
class FleursWindows:
    """Every 30 s window of the parity clips (OpenAI's padding: the audio padded, then the log-mel taken)."""

    names: list[str]  # per clip: file stem, fleurs-<whisper code>-<nnn>
    langs: list[str]  # per clip: Whisper code from the file name
    refs: list[str]  # per clip: the FLEURS transcript
    mel: np.ndarray  # f32[window, n_mels, 3000]
    owner: np.ndarray  # i32[window]: index of the window's clip
    valid: np.ndarray  # i32[window]: encoder frames holding audio

    def windows_of(self, clip: int) -> np.ndarray:
        return np.flatnonzero(self.owner == clip)


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
    fleurs_clips = parity_clips(fleurs_clips)
    assert len(fleurs_clips) == 5 * PARITY_PER_LANGUAGE + 1, [c.stem for c in fleurs_clips]
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
