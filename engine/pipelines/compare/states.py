"""The states two layer stores hold for the same audio, paired: utterance by utterance, and frame by frame in time.

Utterances are paired by ``(id, recording)`` within a language, which each store may name by a code of its own
(``compare.languages``): two stores of the same audio list the same ones, in any order, and only utterances done in
both are used. A pair whose durations differ (``duration_s`` of the
utterance tables, more than ``DURATION_TOLERANCE``) is not the same audio: refused, naming the ids, unless
``allow_mismatch``. Utterance-level states are the mean over an utterance's
valid frames (``kernels.pooling.mean_pool``, float32).

Frames are paired by their time in seconds. Frame i of a store with ``r`` frames per second covers
``[i / r, (i + 1) / r)``. Walking the frames of the store with the lower rate (the first store when equal), frame i
is paired with the other store's frame containing its centre time ``(i + 1/2) / r_slow``, i.e.
``floor((i + 1/2) r_fast / r_slow)``, when that frame is valid. Each frame of the slower store is used once; the
faster store's frames between two centres are not used. With equal rates (every Whisper) frame i pairs with
frame i, up to the shorter of the two lengths.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from engine.pipelines.compare.config import CompareError
from engine.stores.reader import StoreReader
from kernels.pooling import mean_pool

log = logging.getLogger(__name__)
# Seconds two stores' durations of one utterance may differ by: the same file decodes to the same samples in every
# family (duration_s is samples / 16 kHz), so any difference is other audio; 1 ms leaves room for a resampler.
DURATION_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Pairing:
    """The utterances two stores share in one language: index lists of equal length, in the same order."""

    lang: str  # store a's code of the language
    index_a: np.ndarray  # i64[n] utterance indices in store a
    index_b: np.ndarray  # i64[n] utterance indices in store b
    keys: tuple[tuple[str, int], ...]  # (id, recording) of each pair
    lang_b: str  # store b's code of the language (the same as ``lang`` within one code system)


def _done_keys(reader: StoreReader, lang: str) -> dict[tuple[str, int], int]:
    done = reader.done(lang)
    return {(row.id, int(row.recording)): u for u, row in enumerate(reader.arrays(lang).rows) if done[u]}


# Utterances two stores must share in a language to pair their frames; the utterance level needs
# ``MIN_POOLED`` (two mean-pooled points make CKA and k-NN overlaps 1 whatever they are)
MIN_SHARED = 2
MIN_POOLED = 3


def pair_utterances(
    a: StoreReader, b: StoreReader, lang: str | tuple[str, str], allow_mismatch: bool = False
) -> Pairing:
    """The utterances of ``lang`` done in both stores, paired by (id, recording), sorted by it; a CompareError if
    any pair's durations differ (module docstring), a warning with ``allow_mismatch``. ``lang``: the language's
    code, or (store a's code, store b's code) where the stores name it in different systems."""
    lang_a, lang_b = (lang, lang) if isinstance(lang, str) else lang
    for reader, code in ((a, lang_a), (b, lang_b)):
        if code not in reader.languages():
            raise CompareError(f"store {reader.url!r} has no language {code!r}; it has {reader.languages()}")
    named = repr(lang_a) if lang_a == lang_b else f"{lang_a!r} / {lang_b!r}"
    keys_a, keys_b = _done_keys(a, lang_a), _done_keys(b, lang_b)
    shared = sorted(set(keys_a) & set(keys_b))
    if len(shared) < MIN_SHARED and (keys_a or keys_b):
        why = ("they must hold the same audio; encode the same dataset and split into both" if not shared else
               f"{MIN_SHARED} at least are needed; encode more utterances into both")  # fmt: skip
        raise CompareError(
            f"stores {a.url!r} and {b.url!r} share {len(shared)} done utterances of {named} (by id and recording): "
            + why
        )
    rows_a, rows_b = a.arrays(lang_a).rows, b.arrays(lang_b).rows
    durations = [(k, rows_a[keys_a[k]].duration_s, rows_b[keys_b[k]].duration_s) for k in shared]
    differ = [(k, x, y) for k, x, y in durations if abs(x - y) > DURATION_TOLERANCE]
    if differ:
        listed = ", ".join(f"{k[0]!r} ({x:.3f} s vs {y:.3f} s)" for k, x, y in differ[:5])
        text = (
            f"stores {a.url!r} and {b.url!r} hold other audio under {len(differ)} ids of {named}: {listed}"
            f"{' ...' if len(differ) > 5 else ''}"
        )
        if not allow_mismatch:
            raise CompareError(f"{text}. Encode the same clips into both, or pass --allow_mismatch to compare anyway")
        log.warning("%s; compared anyway (--allow_mismatch)", text)
    return Pairing(
        lang_a,
        np.array([keys_a[k] for k in shared], np.int64),
        np.array([keys_b[k] for k in shared], np.int64),
        tuple(shared),
        lang_b,
    )


_mean_pool = jax.jit(jax.vmap(mean_pool))


def read_layer(reader: StoreReader, lang: str, layer: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f32[n, frames, embed] zero-padded, i32[n] lengths) of utterances ``index``, trimmed to the longest."""
    lengths = reader.lengths(lang)[index]
    states, lengths = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
    return states, lengths


def pooled(reader: StoreReader, lang: str, layer: int, index: np.ndarray) -> np.ndarray:
    """f32[n, embed]: mean over valid frames of each utterance in ``index``."""
    states, lengths = read_layer(reader, lang, layer, index)
    return np.asarray(_mean_pool(states, lengths))


def frame_pairs(len_a: int, len_b: int, rate_a: float, rate_b: float) -> tuple[np.ndarray, np.ndarray]:
    """(i64[m], i64[m]): frame indices of a and b paired by time (module docstring)."""
    if rate_a <= rate_b:
        slow = np.arange(len_a)
        fast = np.floor((slow + 0.5) * rate_b / rate_a).astype(np.int64)
        keep = fast < len_b
        return slow[keep], fast[keep]
    fb, fa = frame_pairs(len_b, len_a, rate_b, rate_a)
    return fa, fb


def paired_frames(
    states_a: np.ndarray, len_a: np.ndarray, states_b: np.ndarray, len_b: np.ndarray, rate_a: float, rate_b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames of paired utterances matched by time: (f32[m, embed_a], f32[m, embed_b], i64[m] utterance position)."""
    rows_a, rows_b, owner = [], [], []
    for u in range(len(len_a)):
        ia, ib = frame_pairs(int(len_a[u]), int(len_b[u]), rate_a, rate_b)
        rows_a.append(states_a[u, ia])
        rows_b.append(states_b[u, ib])
        owner.append(np.full(len(ia), u))
    return np.concatenate(rows_a), np.concatenate(rows_b), np.concatenate(owner)


def reference_frame_pairs(len_a: int, len_b: int, rate_a: float, rate_b: float) -> list[tuple[int, int]]:
    """The same pairs by brute force over times: for each frame of the slower store, the faster store's frame whose
    interval holds its centre."""
    slow_is_a = rate_a <= rate_b
    slow, fast = (len_a, rate_a), (len_b, rate_b)
    (n_slow, r_slow), (n_fast, r_fast) = (slow, fast) if slow_is_a else (fast, slow)
    pairs = []
    for i in range(n_slow):
        centre = (i + 0.5) / r_slow
        for j in range(n_fast):
            if j / r_fast <= centre < (j + 1) / r_fast:
                pairs.append((i, j) if slow_is_a else (j, i))
    return pairs
