"""CCA per layer against phone, word and semantic targets (after Pasad et al.'s layerwise-analysis).

Three targets, all over the word tokens of ``samediff.select_tokens`` (every language of the run together):

- ``phone``: frame level. Each frame of a word gets one of the word's phones (``engine.text.phones``: espeak-ng IPA
  of the word alone), the phones spread uniformly over the word's frames (frame j of L gets phone floor(j P / L) of
  P). This is an approximation: without a forced aligner phone boundaries are unknown, and a word with more phones
  than frames loses some. x: the frames' states; y: one-hot over the IPA segments of the whole run (shared across
  languages). At most ``MAX_FRAMES`` frames, a seeded sample.
- ``word``: word identity. x: mean-pooled word frames; y: one-hot over the (language, word type) pairs with at least
  ``MIN_TYPE_COUNT`` tokens; rarer types are left out (a one-hot column seen once cannot be tested held out).
- ``semantic``: x: mean-pooled word frames; y: the multilingual text encoder's embedding of the word
  (``engine.text.encoders``, default USE multilingual v3); words of languages it does not cover are left out.

Score: projection-weighted CCA (``kernels.cca``, as layerwise-analysis and google/svcca's ``pwcca.py``) measured on
held-out tokens: the examples are split in two by utterance id (``lid.group_folds``), the canonical directions
are fitted on one half with ridge ``epsilon`` (``kernels.cca.cca``) and the correlations of the projected other
half are weighted by the other half's projection weights (``heldout_pwcca``; on the data it was fitted on, with
epsilon 0, it is ``kernels.cca.pwcca``). In-sample CCA would be meaningless here: with fewer examples than
dimensions every canonical correlation is 1. ``chance`` is the same score with the targets shuffled across
examples (one seeded permutation of each half).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engine.errors import LanguageError
from engine.pipelines.stages import lid
from kernels.cca import cca

TARGETS = ("phone", "word", "semantic")
MIN_TYPE_COUNT = 4  # tokens a word type needs to be a word-identity target
MAX_FRAMES = 20_000  # frames of the phone target, a seeded sample beyond this
EPSILON = 0.1  # ridge of the fitted half (kernels.cca: a share of each view's top covariance eigenvalue)


@dataclasses.dataclass(frozen=True)
class CcaScore:
    layer: int
    target: str
    pwcca: float
    chance: float
    n_train: int
    n_test: int
    dims: int  # target dimensions (phones, word types or embedding width)


def heldout_pwcca(x_fit, y_fit, x_test, y_test, epsilon: float = EPSILON) -> float:
    """Projection-weighted mean correlation on (x_test f[n, d1], y_test f[n, d2]) of the canonical directions fitted
    on (x_fit, y_fit) with ridge ``epsilon``. Test correlations are taken as they come (a direction that does not
    generalise can correlate below 0). NaN when no direction can be tested."""
    x_fit, y_fit = np.asarray(x_fit, np.float32), np.asarray(y_fit, np.float32)
    fitted = cca(x_fit, y_fit, epsilon=epsilon)
    k = min(int(fitted.rank), len(x_test) - 1)
    if k < 1:
        return float("nan")
    hx = (np.asarray(x_test, np.float64) - x_fit.mean(0)) @ np.asarray(fitted.x_weights, np.float64)[:, :k]
    hy = (np.asarray(y_test, np.float64) - y_fit.mean(0)) @ np.asarray(fitted.y_weights, np.float64)[:, :k]
    hx, hy = hx - hx.mean(0), hy - hy.mean(0)
    norms = np.linalg.norm(hx, axis=0) * np.linalg.norm(hy, axis=0)
    rho = np.where(norms > 0, np.sum(hx * hy, axis=0) / np.where(norms > 0, norms, 1.0), 0.0)
    q, _ = np.linalg.qr(hx)
    xc = np.asarray(x_test, np.float64) - np.mean(x_test, axis=0)
    alpha = np.abs(q.T @ xc).sum(axis=1)
    return float(np.sum(alpha * rho) / np.sum(alpha)) if np.sum(alpha) > 0 else float("nan")


def split_score(layer, target, x, y, groups, seed: int = 0, epsilon: float = EPSILON) -> CcaScore:
    """Held-out PWCCA of x: f[n, d1] against y: f[n, d2], fitted on the half of the utterance ids ``groups`` that
    fold 0 draws, tested on the other; and the same with y's rows shuffled within each half (``chance``)."""
    half = lid.group_folds(groups, 2, seed) == 0
    fit, test = np.flatnonzero(half), np.flatnonzero(~half)
    score = heldout_pwcca(x[fit], y[fit], x[test], y[test], epsilon)
    rng = np.random.default_rng(seed)
    chance = heldout_pwcca(x[fit], y[rng.permutation(fit)], x[test], y[rng.permutation(test)], epsilon)
    return CcaScore(layer, target, score, chance, len(fit), len(test), int(y.shape[1]))


@dataclasses.dataclass(frozen=True)
class Targets:
    """What the CCA probe correlates with, fixed before the first layer is read (module docstring).

    phone_frames: i64[frame] rows of the concatenated word frames (languages in run order, tokens in order) sampled
    for the phone target; phone_labels: i32[frame] their phone; phones: the IPA inventory; phone_groups: str[frame]
    utterance ids. word_tokens: i64[token] rows of the concatenated tokens with a word-identity target; word_labels:
    their (language, type) class; semantic_tokens / semantic: rows with an embedding, f32[token, dim].
    """

    phone_frames: np.ndarray
    phone_labels: np.ndarray
    phones: tuple[str, ...]
    phone_groups: tuple[str, ...]
    word_tokens: np.ndarray
    word_labels: np.ndarray
    semantic_tokens: np.ndarray
    semantic: np.ndarray
    token_groups: tuple[str, ...]
    left_out: dict  # target -> {language: tokens without that target}


def build_targets(tokens: Sequence, ids: dict, phonemize, encoder, seed: int = 0) -> Targets:
    """Targets for ``tokens`` (``samediff.Tokens`` per language); ``ids[lang]``: the store's utterance ids;
    ``phonemize(lang, words) -> [phones]`` and ``encoder`` (``covers``, ``encode``) as in ``engine.text``."""
    left_out = {t: {} for t in TARGETS}
    labels, groups, token_groups, keys, embeddings, embedded = [], [], [], [], [], []
    row = 0
    for t in tokens:
        types = sorted(set(t.types))
        try:
            spelled = dict(zip(types, phonemize(t.lang, list(types)), strict=True))
        except LanguageError:  # espeak-ng has no voice for the language: no phone target for it
            left_out["phone"][t.lang] = len(t)
            spelled = {}
        for k in range(len(t)):
            phones = spelled.get(t.types[k], ())
            n = int(t.length[k])
            uid = ids[t.lang][int(t.utterance[k])]
            if phones:
                labels += [phones[j * len(phones) // n] for j in range(n)]
            else:
                labels += [None] * n
            groups += [uid] * n
            token_groups.append(uid)
            keys.append((t.lang, t.types[k]))
        if encoder.covers(t.lang):
            embeddings.append(encoder.encode(list(t.types)))
            embedded += range(row, row + len(t))
        else:
            left_out["semantic"][t.lang] = len(t)
        row += len(t)
    phones = tuple(sorted({p for p in labels if p is not None}))
    index = {p: i for i, p in enumerate(phones)}
    with_phone = np.flatnonzero([p is not None for p in labels])
    if len(with_phone) > MAX_FRAMES:
        with_phone = np.sort(np.random.default_rng(seed).choice(with_phone, MAX_FRAMES, replace=False))
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    frequent = sorted(key for key, c in counts.items() if c >= MIN_TYPE_COUNT)
    word_class = {key: i for i, key in enumerate(frequent)}
    word_tokens = np.array([i for i, key in enumerate(keys) if key in word_class], np.int64)
    for lang, kind in keys:
        left_out["word"][lang] = left_out["word"].get(lang, 0) + ((lang, kind) not in word_class)
    return Targets(
        phone_frames=with_phone.astype(np.int64),
        phone_labels=np.array([index[labels[i]] for i in with_phone], np.int32),
        phones=phones,
        phone_groups=tuple(groups[i] for i in with_phone),
        word_tokens=word_tokens,
        word_labels=np.array([word_class[keys[i]] for i in word_tokens], np.int32),
        semantic_tokens=np.array(embedded, np.int64),
        semantic=np.concatenate(embeddings) if embeddings else np.zeros((0, 1), np.float32),
        token_groups=tuple(token_groups),
        left_out=left_out,
    )


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def cca_layer(layer: int, targets: Targets, frames: np.ndarray, pooled: np.ndarray, seed: int = 0) -> list[CcaScore]:
    """The three targets at one layer. frames: f32[frame, embed], every word frame of the run concatenated;
    pooled: f32[token, embed], the tokens' mean-pooled frames (same order as ``build_targets``'s tokens)."""
    scores = []
    groups = np.array(targets.token_groups)
    if len(targets.phones) >= 2:
        y = one_hot(targets.phone_labels, len(targets.phones))
        scores.append(split_score(layer, "phone", frames[targets.phone_frames], y, targets.phone_groups, seed))
    if targets.word_labels.size and targets.word_labels.max() >= 1:
        y = one_hot(targets.word_labels, int(targets.word_labels.max()) + 1)
        x = pooled[targets.word_tokens]
        scores.append(split_score(layer, "word", x, y, list(groups[targets.word_tokens]), seed))
    if len(targets.semantic_tokens) >= 4:
        x = pooled[targets.semantic_tokens]
        scores.append(split_score(layer, "semantic", x, targets.semantic, list(groups[targets.semantic_tokens]), seed))
    return scores


def unmeasured(targets: Targets) -> list[str]:
    """The targets ``cca_layer`` leaves out, and why: cca.csv has no rows of them, which said nothing by itself (a
    probe's word target vanished without a word)."""
    out = [] if len(targets.phones) >= 2 else ["phone (fewer than 2 phones among the sampled frames)"]
    if not (targets.word_labels.size and targets.word_labels.max() >= 1):
        out.append("word (fewer than 2 word types with enough tokens to hold some out)")
    if len(targets.semantic_tokens) < 4:
        out.append("semantic (fewer than 4 tokens with a sentence embedding)")
    return out
