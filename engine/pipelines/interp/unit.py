"""The work of one interp unit, a (language pair, layer): read the states of the utterances it pairs, embed every
word from the frames of its span (``kernels.wordalign``), keep the mutual best pairs (and with ``alignment="ot"`` the
links of the optimal-transport plan), and give each a text similarity, a phone distance and a paired random word.

The unit's rows are one part file (``engine.pipelines.interp.output.part_bytes``), written at once: the unit of work
the processes claim and the unit of resume.
"""

from __future__ import annotations

import zlib

import numpy as np

from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.inputs import Language
from engine.pipelines.interp.output import empty_rows, part_bytes
from engine.runtime.runs import RunSummary
from engine.text.phones import phone_distance
from kernels.wordalign import (
    WordPair,
    Words,
    check_spans,
    layer_standardisation,
    plan_links,
    word_plan_pairs,
    wordalign_pairs,
)

PAIR_BLOCK = 32  # utterance pairs per kernel call
WORD_QUANTUM = 8  # word axes are padded to a multiple of this (fewer recompiles)
FRAME_QUANTUM = 64


def unit_part(reader, A: Language, B: Language, layer: int, pairs: list, config: InterpConfig, phone_cache: dict,
              summary: RunSummary) -> tuple[bytes, int]:  # fmt: skip
    """(the part's bytes, its number of word pairs) of the unit (A.lang, B.lang, ``layer``) over the utterance
    ``pairs`` [(id_a, id_b, rank)]; ``phone_cache`` keeps phone distances between units."""
    states = []
    for L, side in ((A, 0), (B, 1)):
        ids = sorted({p[side] for p in pairs})
        x, _ = reader.language_layer(L.lang, layer, [L.index[u] for u in ids], dtype=np.float32)
        states.append((x, {u: n for n, u in enumerate(ids)}))
    rows = _unit_rows(A, B, layer, pairs, states, config, phone_cache, summary) if pairs else {}
    rows = rows or empty_rows()
    return part_bytes(rows, [list(p) for p in pairs]), len(rows["id_a"])


def _pad_words(L: Language, ids: list[str], words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spans = np.zeros((len(ids), words, 2), np.int32)
    n_words = np.array([len(L.words[u]) for u in ids], np.int32)
    n_frames = np.array([L.n_frames[u] for u in ids], np.int32)
    for p, uid in enumerate(ids):
        spans[p, : n_words[p]] = [(s, e) for *_, s, e in L.words[uid]]
    return spans, n_words, n_frames


def _rng(seed: int, *parts) -> np.random.Generator:
    """A generator fixed by the run's seed and the unit's names (stable across processes and resumes)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _standardisation(A, B, states, standardise: str):
    """None, or the z-scoring of one unit: every valid frame of every utterance it reads, both languages."""
    if standardise == "none":
        return None
    xs, lengths = [], []
    for L, (X, index) in ((A, states[0]), (B, states[1])):
        for uid, n in index.items():
            xs.append(X[n][None])  # [layer=1, frame, embed]
            lengths.append(min(L.n_frames[uid], X.shape[1]))
    return layer_standardisation(xs, lengths)


def _unit_rows(A, B, layer, pairs, states, config, phone_cache, summary) -> dict[str, list]:
    """The rows of one (language pair, layer) unit: mutual best pairs, and with alignment="ot" the OT links too."""
    (Xa, idx_a), (Xb, idx_b) = states
    out = empty_rows()
    threshold = np.float32(-np.inf if config.threshold is None else config.threshold)
    standardise = _standardisation(A, B, states, config.standardise)
    for first in range(0, len(pairs), PAIR_BLOCK):
        block = pairs[first : first + PAIR_BLOCK]
        ids_a, ids_b = [p[0] for p in block], [p[1] for p in block]
        wmax = max(max(len(A.words[u]) for u in ids_a), max(len(B.words[u]) for u in ids_b))
        words = -(-wmax // WORD_QUANTUM) * WORD_QUANTUM
        sa, na, fa = _pad_words(A, ids_a, words)
        sb, nb, fb = _pad_words(B, ids_b, words)
        frames = -(-int(max(fa.max(), fb.max())) // FRAME_QUANTUM) * FRAME_QUANTUM
        xa = _crop(Xa[[idx_a[u] for u in ids_a]], frames)[:, None]  # [pair, layer=1, frame, embed]
        xb = _crop(Xb[[idx_b[u] for u in ids_b]], frames)[:, None]
        check_spans("spans_a", sa, na, fa)
        check_spans("spans_b", sb, nb, fb)
        block_words = WordPair(Words(xa, fa, sa, na), Words(xb, fb, sb, nb))
        for pooling in config.poolings:
            got = wordalign_pairs(block_words, threshold, standardise, pooling=pooling)
            cosine, mutual = np.asarray(got.cosine[:, 0]), np.asarray(got.mutual[:, 0])
            ot = None
            if config.alignment == "ot":
                plan = word_plan_pairs(
                    block_words, standardise, pooling=pooling, weights=config.ot_weights, config=config.ot
                )
                share, links = plan_links(plan.plan[:, 0], plan.weight_a, plan.weight_b, config.ot_mass)
                ot = (np.asarray(plan.plan[:, 0]), share, links, np.asarray(plan.converged[:, 0]))
            for p, (id_a, id_b, rank) in enumerate(block):
                rng = _rng(config.seed, A.lang, B.lang, layer, pooling, id_a, id_b)
                wa, wb = A.words[id_a], B.words[id_b]
                keep, link, mass, part = mutual[p], None, None, None
                if ot is not None:
                    if ot[3][p]:
                        mass, part, link = ot[0][p], ot[1][p], ot[2][p]
                        keep = keep | link
                    else:  # never used: the mutual pairs stay, without OT columns
                        summary.skip("ot_nonconverged", f"{A.lang}-{B.lang}", f"{id_a}/{id_b}/layer{layer}/{pooling}")
                for i, j in zip(*np.nonzero(keep), strict=True):
                    k = -1
                    if len(wb) > 1:
                        k = int(rng.integers(len(wb) - 1))
                        k += k >= j  # uniform over every index but j
                    _add_row(out, A, B, wa[i], wb[j], wb[k] if k >= 0 else None, phone_cache)
                    out["cosine"].append(float(cosine[p, i, j]))
                    out["cosine_random"].append(float(cosine[p, i, k]) if k >= 0 else None)
                    for col, v in (("id_a", id_a), ("id_b", id_b), ("rank", rank), ("layer", layer)):
                        out[col].append(v)
                    out["pooling"].append(pooling)
                    out["mutual"].append(bool(mutual[p, i, j]))
                    out["ot_link"].append(bool(link[i, j]) if link is not None else None)
                    out["mass"].append(float(mass[i, j]) if mass is not None else None)
                    out["share"].append(float(part[i, j]) if part is not None else None)
    return out


def _crop(x: np.ndarray, frames: int) -> np.ndarray:
    if x.shape[1] >= frames:
        return x[:, :frames]
    return np.pad(x, ((0, 0), (0, frames - x.shape[1]), (0, 0)))


def _add_row(out, A, B, wa, wb, wr, phone_cache) -> None:
    def text(u, v):
        eu, ev = A.text.get(u), B.text.get(v)
        return float(np.dot(eu, ev)) if eu is not None and ev is not None else None

    def phone(u, v):
        pu, pv = A.phones.get(u), B.phones.get(v)
        if not pu or not pv:
            return None
        if (pu, pv) not in phone_cache:
            phone_cache[pu, pv] = phone_distance(pu, pv)
        return phone_cache[pu, pv]

    out["word_index_a"].append(wa[0])
    out["word_a"].append(wa[1])
    out["word_index_b"].append(wb[0])
    out["word_b"].append(wb[1])
    out["text_similarity"].append(text(wa[2], wb[2]))
    out["phone_distance"].append(phone(wa[2], wb[2]))
    out["word_index_random"].append(wr[0] if wr else None)
    out["word_random"].append(wr[1] if wr else None)
    out["text_similarity_random"].append(text(wa[2], wr[2]) if wr else None)
    out["phone_distance_random"].append(phone(wa[2], wr[2]) if wr else None)
    out["phones_a"].append(" ".join(A.phones.get(wa[2], ())))
    out["phones_b"].append(" ".join(B.phones.get(wb[2], ())))
