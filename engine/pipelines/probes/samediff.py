"""Same-different word discrimination per layer (after kamperh/speech_dtw's ``samediff.py``).

Word tokens come from a ``words.parquet`` (``engine.stores.words``: utterance, start and end in seconds; the align
job's, or any other source with those columns and the store's utterance indices and ids). A token's word type is its
spelling case-folded with everything but letters and digits removed (Whisper's words carry spaces and punctuation);
tokens of types shorter than ``min_chars`` or of fewer than ``min_frames`` frames are left out, as are tokens whose
span is outside the utterance's encoded frames.

Frames: ``[floor(start * rate), ceil(end * rate))`` at the store's frame rate (Whisper: 50 per second, 20 ms).

Within each language, every pair of tokens is scored (both speakers differ, when the utterance table names two or
more speakers in the language; otherwise all pairs, and ``speakers`` = 1 says so): a pair is *same* when both tokens
have one type. Two distances, per layer:

- ``cosine``: 1 - cosine of the mean-pooled frames of the two tokens (``kernels.pooling``);
- ``dtw``: the mean cosine distance of the frame pairs on the DTW path (``kernels.dtw.dtw_similarity_matrix``).

``ap`` is the average precision of ranking same pairs above different ones by distance (``average_precision``:
scikit-learn's step-wise definition, ties at one distance taken together); ``chance`` is the share of same pairs,
the expected AP of a random ranking.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from engine.errors import BabelgridError, ShapeError
from engine.pipelines.probes.config import MAX_TOKENS, MIN_CHARS
from engine.stores.words import frame_span
from kernels.dtw import dtw_similarity_matrix
from kernels.pooling import mean_pooled_cosine_matrix

MEASURES = ("cosine", "dtw")
MIN_FRAMES = 3  # 60 ms at 50 frames/s


class SameDiffError(BabelgridError, ValueError):
    """Word tokens that cannot be used: another store's utterances, negative or inverted times."""


@dataclasses.dataclass(frozen=True)
class Tokens:
    """The word tokens of one language kept for the probe, in store utterance order.

    utterance, first, length: i32[token], frames ``first..first+length-1`` of store utterance ``utterance``;
    types: str[token] normalised spellings; speakers: str[token] (empty when the store names none).
    """

    lang: str
    utterance: np.ndarray
    first: np.ndarray
    length: np.ndarray
    types: tuple[str, ...]
    speakers: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.types)


def word_type(word: str) -> str:
    """'  Hello,' -> 'hello': case-folded, letters and digits only (any script)."""
    return "".join(ch for ch in word.casefold() if ch.isalnum())


def select_tokens(
    lang: str,
    words,
    store_ids: Sequence[str],
    lengths: np.ndarray,
    speakers: Sequence[str | None],
    frame_rate: float,
    *,
    min_chars: int = MIN_CHARS,
    min_frames: int = MIN_FRAMES,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
) -> tuple[Tokens, dict[str, int]]:
    """The tokens of ``words`` (a pyarrow Table or mapping of columns utterance, id, word, start, end) to probe, and
    the counts of those left out by reason. ``store_ids``, ``lengths`` (i32, -1 = not done) and ``speakers`` are
    the store's, per utterance. Above ``max_tokens``, a seeded sample of them is kept."""
    cols = {name: list(words[name]) for name in ("utterance", "id", "word", "start", "end")}
    cols = {k: [x.as_py() if hasattr(x, "as_py") else x for x in v] for k, v in cols.items()}
    dropped = {"short_word": 0, "short_span": 0, "not_encoded": 0}
    kept = []
    for u, uid, word, start, end in zip(*cols.values(), strict=True):
        if not 0 <= u < len(store_ids) or store_ids[u] != uid:
            found = store_ids[u] if 0 <= u < len(store_ids) else "none"
            raise SameDiffError(
                f"words of {lang!r} name utterance {u} with id {uid!r}, but the store's utterance {u} has id {found!r}:"
                " the words come from another store; run jobs.align on this store"
            )
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise SameDiffError(
                f"word {word!r} of {lang!r} utterance {u} has times {start}..{end} s: need 0 <= start <= end"
            )
        kind = word_type(word)
        first, last = frame_span(start, end, int(lengths[u]), frame_rate) if lengths[u] > 0 else (0, 0)
        if len(kind) < min_chars:
            dropped["short_word"] += 1
        elif lengths[u] < 0:
            dropped["not_encoded"] += 1
        elif last - first < min_frames:
            dropped["short_span"] += 1
        else:
            kept.append((u, first, last - first, kind, speakers[u] or ""))
    if len(kept) > max_tokens:
        dropped["sampled_out"] = len(kept) - max_tokens
        pick = np.sort(np.random.default_rng(seed).choice(len(kept), max_tokens, replace=False))
        kept = [kept[i] for i in pick]
    kept.sort(key=lambda t: (t[0], t[1]))
    u, first, length, kinds, who = zip(*kept, strict=True) if kept else ((), (), (), (), ())
    tokens = Tokens(lang, *(np.array(a, np.int32) for a in (u, first, length)), tuple(kinds), tuple(who))
    return tokens, dropped


def pair_mask(tokens: Tokens) -> tuple[np.ndarray, int]:
    """(bool[token, token]: the pairs to score, i < j, of different speakers when the language has several;
    the number of speakers)."""
    n = len(tokens)
    upper = np.triu(np.ones((n, n), bool), k=1)
    speakers = len(set(tokens.speakers) - {""})
    if speakers < 2:
        return upper, max(speakers, 1)
    who = np.array(tokens.speakers)
    return upper & (who[:, None] != who[None, :]) & (who[:, None] != "") & (who[None, :] != ""), speakers


def average_precision(scores: np.ndarray, same: np.ndarray) -> float:
    """AP of ranking ``same`` (bool[pair]) first by descending ``scores`` (f[pair]): sum over distinct score
    thresholds of (recall gain) x precision, ties counted together, as scikit-learn's ``average_precision_score``.
    NaN when there is no same pair."""
    scores, same = np.asarray(scores, np.float64).reshape(-1), np.asarray(same, bool).reshape(-1)
    if scores.shape != same.shape:
        raise ShapeError(f"scores and same must have one length, got {scores.shape} and {same.shape}")
    if not same.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], same[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last index of each run of equal scores
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def word_frames(tokens: Tokens, blocks) -> tuple[np.ndarray, np.ndarray]:
    """(f32[token, frame, embed] zero-padded, i32[token]): the frames of every token, cut from ``blocks``, an
    iterable of (utterance indices i[b], states f[b, frames, embed]) covering the tokens' utterances."""
    out, filled = None, np.zeros(len(tokens), bool)
    width = int(tokens.length.max()) if len(tokens) else 0
    for index, states in blocks:
        if out is None:
            out = np.zeros((len(tokens), width, states.shape[-1]), np.float32)
        where = {int(u): i for i, u in enumerate(index)}
        for t in np.flatnonzero(np.isin(tokens.utterance, index)):
            row = states[where[int(tokens.utterance[t])]]
            out[t, : tokens.length[t]] = row[tokens.first[t] : tokens.first[t] + tokens.length[t]]
            filled[t] = True
    if out is None or not filled.all():
        raise SameDiffError(f"{int((~filled).sum())} tokens of {tokens.lang!r} were not in the blocks read")
    return out, tokens.length


@dataclasses.dataclass(frozen=True)
class SameDiffScore:
    lang: str
    layer: int
    measure: str
    ap: float
    chance: float
    n_pairs: int
    n_same: int
    n_tokens: int
    n_types: int
    speakers: int


def samediff_layer(layer: int, tokens: Tokens, frames: np.ndarray, lengths: np.ndarray) -> list[SameDiffScore]:
    """Both measures for one language at one layer; frames: f32[token, frame, embed], lengths: i32[token]."""
    mask, speakers = pair_mask(tokens)
    kinds = np.array(tokens.types)
    same = (kinds[:, None] == kinds[None, :])[mask]
    sims = {
        "cosine": mean_pooled_cosine_matrix(frames, lengths, frames, lengths),
        "dtw": dtw_similarity_matrix(frames, lengths, frames, lengths),
    }
    n_same = int(same.sum())
    return [
        SameDiffScore(
            lang=tokens.lang,
            layer=layer,
            measure=measure,
            ap=average_precision(np.asarray(sims[measure])[mask], same),
            chance=n_same / len(same) if len(same) else float("nan"),
            n_pairs=int(len(same)),
            n_same=n_same,
            n_tokens=len(tokens),
            n_types=len(set(tokens.types)),
            speakers=speakers,
        )
        for measure in MEASURES
    ]
