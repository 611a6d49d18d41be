"""One layer of the outliers job: every language's frame sums, spectrum and anisotropy, and the cosine between
translations split by dimension (``kernels.outliers`` has the definitions).

What is sampled is drawn once for the run, from the store's tables, never from states (``Sampling``), so that every
layer measures the same frames and the same translations, whichever process computes it:

- translations: ``--translations`` ids among those shared by two or more of the run's languages (done utterances),
  drawn with ``--seed``; each pair of readings of a drawn id in two languages is a translation pair (the pairing
  retrieval scores: the same id, every recording). No shared id: no pair, and the shares are NA.
- frame pairs: per language ``--frame_pairs`` pairs of valid frames, uniform over its frames, the two of a pair from
  two different utterances where it has two (seeded by ``--seed`` and the language's code, so that a language's pairs
  do not depend on the other languages of the run).

Memory: a language is read in blocks of ``--block`` utterances cut to their longest; its sums hold a d x d scatter
in float64; the sampled translations' frames are held per language while their pairs are measured, as many
languages at once as ``HOLD_BYTES`` allows (the others are read again for each language they are paired with).
"""

from __future__ import annotations

import collections
import dataclasses
import zlib

import numpy as np

from kernels import outliers

HOLD_BYTES = 1 << 30  # the sampled translations' frames held at once, as float32 (more are read again when needed)
REDRAWS = 1000  # frame pairs within one utterance are drawn again at most this often, then left out


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What every layer of a run measures (module docstring): per language the done utterances (``done``: indices,
    ``lengths``: their valid frames), the drawn translations (``sample``: utterance indices, ``sample_ids``: their
    ids) and the frame pairs (``pairs``: flat indices into the language's valid frames, concatenated in ``done``
    order); ``shared``: ids shared by two or more languages; ``drawn``: ids drawn."""

    langs: tuple[str, ...]
    done: dict
    lengths: dict
    sample: dict
    sample_ids: dict
    pairs: dict
    shared: int
    drawn: int


def sampling(reader, langs, translations: int, frame_pairs: int, seed: int) -> Sampling:
    """The run's ``Sampling`` from the store's tables (lengths and ids)."""
    done, lengths, ids = {}, {}, {}
    for lang in langs:
        n = np.asarray(reader.lengths(lang))
        done[lang] = np.flatnonzero(n > 0)
        lengths[lang] = n[done[lang]].astype(np.int64)
        table_ids = [str(x) for x in reader.utterances_table(lang).column("id").to_pylist()]
        ids[lang] = [table_ids[u] for u in done[lang]]
    seen = collections.Counter(i for lang in langs for i in set(ids[lang]))
    shared = sorted(i for i, c in seen.items() if c >= 2)
    rng = np.random.default_rng([seed, 0])
    drawn = set(np.asarray(shared)[np.sort(rng.choice(len(shared), min(translations, len(shared)), replace=False))]
                ) if shared else set()  # fmt: skip
    sample, sample_ids = {}, {}
    for lang in langs:
        keep = [k for k, i in enumerate(ids[lang]) if i in drawn]
        sample[lang] = done[lang][keep]
        sample_ids[lang] = [ids[lang][k] for k in keep]
    pairs = {lang: frame_pairs_of(lengths[lang], frame_pairs, seed, lang) for lang in langs}
    return Sampling(tuple(langs), done, lengths, sample, sample_ids, pairs, len(shared), len(drawn))


def frame_pairs_of(lengths: np.ndarray, n: int, seed: int, lang: str) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) i64[<= n]: flat indices into the valid frames of utterances of ``lengths`` (concatenated), each pair
    from two different utterances; none where fewer than two utterances have frames (two frames of one utterance,
    the fallback once, measured another thing beside the other languages' values: NA now). Seeded by ``seed`` and
    ``lang``."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if (lengths > 0).sum() < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 1, zlib.crc32(lang.encode())])
    owner = np.repeat(np.arange(len(lengths)), lengths)
    i, j = rng.integers(0, total, n), rng.integers(0, total, n)

    def same(i, j):
        return owner[i] == owner[j]

    bad = same(i, j)
    for _ in range(REDRAWS):
        if not bad.any():
            break
        j[bad] = rng.integers(0, total, int(bad.sum()))
        bad = same(i, j)
    return i[~bad], j[~bad]


def _blocks(reader, lang: str, layer: int, index: np.ndarray, lengths: np.ndarray, block: int):
    """(start, valid frames f32[n, d], states f32[b, frames, d]) per block of ``block`` utterances of ``index``."""
    for start in range(0, len(index), block):
        part = index[start : start + block]
        n = lengths[start : start + block]
        states, _ = reader.language_layer(lang, layer, part, np.float32, frames=int(n.max()))
        valid = np.arange(states.shape[1])[None, :] < n[:, None]
        yield start, states[valid], states


def _language(reader, lang: str, layer: int, s: Sampling, block: int) -> dict:
    """One language's sums, spectrum and anisotropy at ``layer``."""
    index, lengths = s.done[lang], s.lengths[lang]
    moments = outliers.Moments()
    i, j = s.pairs[lang]
    needed = np.unique(np.concatenate([i, j]))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.searchsorted(offsets, needed, side="right") - 1
    frame = needed - offsets[owner]
    picked = None
    for start, frames, states in _blocks(reader, lang, layer, index, lengths, block):
        moments.add(frames, scatter=True)
        if picked is None:
            picked = np.zeros((len(needed), states.shape[-1]), np.float32)
        here = (owner >= start) & (owner < start + len(states))
        picked[here] = states[owner[here] - start, frame[here]]
    if not moments.count:
        raise ValueError(f"language {lang!r} has no done frames at layer {layer}")
    cosines = outliers.frame_pair_cosines(picked[np.searchsorted(needed, i)], picked[np.searchsorted(needed, j)])
    return {
        "frames": moments.count,
        "utterances": len(index),
        "magnitude": moments.magnitude,
        "mean": moments.mean,
        "norm_share": outliers.norm_shares(moments.squares),
        "spectrum": outliers.spectrum(moments.covariance()),
        "anisotropy": float(cosines.mean()) if len(cosines) else float("nan"),
        "anisotropy_pairs": len(cosines),
    }


class _Held:
    """The sampled translations' valid frames of each language at one layer (a list of f32[n, d]), read on first use
    and kept while under ``HOLD_BYTES``."""

    def __init__(self, reader, layer: int, s: Sampling, embed: int, block: int):
        self.reader, self.layer, self.s, self.embed, self.block = reader, layer, s, embed, block
        self.kept, self.bytes = {}, 0

    def get(self, lang: str) -> list[np.ndarray]:
        if lang in self.kept:
            return self.kept[lang]
        index = self.s.sample[lang]
        lengths = np.asarray(self.reader.lengths(lang))[index]
        frames = []
        for _, _, states in _blocks(self.reader, lang, self.layer, index, lengths, self.block):
            frames += [x[:n] for x, n in zip(states, lengths[len(frames) : len(frames) + len(states)], strict=True)]
        size = int(lengths.sum()) * self.embed * 4
        if self.bytes + size <= HOLD_BYTES:
            self.kept[lang], self.bytes = frames, self.bytes + size
        return frames


def _translations(reader, layer: int, s: Sampling, embed: int, block: int, bar) -> dict:
    """Per language the sums over its translation pairs of the pooled cosine's and SeqSim's matches' terms
    (``pooled_sum``, ``seqsim_sum``: f64[d]) and the pairs' count."""
    sums = {lang: {"pooled_sum": np.zeros(embed), "seqsim_sum": np.zeros(embed), "translation_pairs": 0}
            for lang in s.langs}  # fmt: skip
    held = _Held(reader, layer, s, embed, block)
    by_id = {lang: collections.defaultdict(list) for lang in s.langs}
    for lang in s.langs:
        for k, uid in enumerate(s.sample_ids[lang]):
            by_id[lang][uid].append(k)
    with outliers.one_lapack_thread():  # many small products: OpenBLAS's threads stall them under load
        for n, a in enumerate(s.langs):
            _pairs_of(a, s.langs[n + 1 :], held, by_id, sums)
            bar.update(1)
    return sums


def _pairs_of(a: str, later, held: _Held, by_id: dict, sums: dict) -> None:
    """Adds the translation pairs of ``a`` with the languages ``later`` to ``sums`` (each pair of languages once)."""
    if not len(held.s.sample[a]):
        return
    frames_a = held.get(a)
    for b in later:
        shared = sorted(set(by_id[a]) & set(by_id[b]))
        frames_b = held.get(b) if shared else None
        for uid in shared:
            for ka in by_id[a][uid]:
                for kb in by_id[b][uid]:
                    u, v = frames_a[ka], frames_b[kb]
                    pooled = outliers.pooled_contributions(u.mean(0, dtype=np.float64), v.mean(0, dtype=np.float64))
                    a_to_b, b_to_a = outliers.matched_contributions(u, v)
                    for lang, matched in ((a, a_to_b), (b, b_to_a)):
                        sums[lang]["pooled_sum"] += pooled
                        sums[lang]["seqsim_sum"] += matched
                        sums[lang]["translation_pairs"] += 1
    held.kept.pop(a, None)  # paired with every later language: no longer needed


def measure_layer(reader, layer: int, s: Sampling, block: int, bar) -> dict[str, np.ndarray]:
    """The layer's part (``PART_FIELDS`` of ``engine.pipelines.outliers.run``), one row per language of ``s``."""
    rows = []
    for lang in s.langs:
        rows.append(_language(reader, lang, layer, s, block))
        bar.update(1)
    embed = len(rows[0]["magnitude"])
    pairs = _translations(reader, layer, s, embed, block, bar)
    out = {"languages": np.array(s.langs), "layer": np.array(layer)}
    for name in rows[0]:
        out[name] = np.array([r[name] for r in rows])
    for name in ("pooled_sum", "seqsim_sum", "translation_pairs"):
        out[name] = np.array([pairs[lang][name] for lang in s.langs])
    return out
