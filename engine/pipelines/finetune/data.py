"""Training pairs from a layer store: a source language's final-layer states and target-language text by id.

Padding (what the decoder sees past an utterance's valid frames): the store keeps valid frames only, while the
decoder attends to the whole 1500-frame window. This module fills the frames past each utterance with the silent
window's states (``engine.models.whisper.timing.fill_padding`` / ``silence_states``: the encoder run once on 30 s of
zeros), for training and for the job's own evaluation alike, so that training sees what its evaluation sees and
the encoder never runs on speech. The decode job instead recomputes the encoder from audio (exact padding);
a model fine-tuned here and scored there sees real padding frames, which the silence stand-in approximates.
Utterances longer than one window (over 30 s) are skipped and counted: one window is what the decoder reads.
The approximation is named ``PADDING`` in the run's ``config.json`` and its printed report; there is no exact mode
here (it would run the encoder on every utterance's audio, what the decode job does).

Split: the ids shared by source and targets are shuffled with ``seed`` and the first ``held_out`` fraction (at
least one) held out; every recording of a held-out id is held out (FLEURS has several per sentence).
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np

from engine.errors import BabelgridError
from engine.models.whisper.timing import N_ENCODER_FRAMES, fill_padding

# How the frames past an utterance's valid frames are filled: recorded in config.json and printed by the job.


class FinetuneError(BabelgridError, ValueError):
    """The store, targets or settings cannot be used for fine-tuning."""


@dataclasses.dataclass(frozen=True)
class Pairs:
    """One source language's examples: ``xa f[n, 1500, embed]`` (silence-filled), ``ids``, ``texts`` (targets)."""

    lang: str
    ids: tuple[str, ...]
    xa: np.ndarray
    texts: tuple[str, ...]

    def take(self, keep: np.ndarray) -> Pairs:
        idx = np.flatnonzero(keep)
        return Pairs(self.lang, tuple(self.ids[i] for i in idx), self.xa[idx], tuple(self.texts[i] for i in idx))


def top_layer(reader) -> int:
    """``L+1``, checked to be in the store: the encoder output the decoder reads."""
    top = reader.info.n_blocks + 1
    if top not in reader.info.layers:
        raise FinetuneError(
            f"store {reader.url!r} has layers {list(reader.info.layers)} but not {top} (L+1, the encoder output the "
            f"decoder reads); encode again with --layers including {top}"
        )
    return top


def store_texts(reader, lang: str) -> dict[str, str]:
    """id -> transcription of ``lang`` in the store (the first recording's; empty texts left out)."""
    if lang not in reader.languages():
        raise FinetuneError(f"store {reader.url!r} has no language {lang!r}; it has {reader.languages()}")
    table = reader.utterances_table(lang)
    out: dict[str, str] = {}
    for uid, text in zip(table.column("id").to_pylist(), table.column("transcription").to_pylist(), strict=True):
        if text and text.strip() and str(uid) not in out:
            out[str(uid)] = text.strip()
    return out


def read_targets_tsv(data: bytes, source: str) -> dict[str, str]:
    """A ``--targets`` file: tab-separated ``id, text`` rows (a header ``id\\ttext`` is allowed)."""
    out = {}
    for i, row in enumerate(csv.reader(io.StringIO(data.decode("utf-8")), delimiter="\t")):
        if not row or (i == 0 and row[:2] == ["id", "text"]):
            continue
        if len(row) < 2:
            raise FinetuneError(f"{source} line {i + 1} has no tab-separated text: {row!r}; write 'id<TAB>text'")
        if row[1].strip():
            out.setdefault(row[0], row[1].strip())
    return out


def load_pairs(reader, lang: str, targets: dict[str, str], silence: np.ndarray, summary) -> Pairs:
    """Every done recording of ``lang`` whose id has a target text and that fits one window."""
    layer = top_layer(reader)
    if lang not in reader.languages():
        raise FinetuneError(f"store {reader.url!r} has no language {lang!r}; it has {reader.languages()}")
    ids = [str(u) for u in reader.utterances_table(lang).column("id").to_pylist()]
    lengths = reader.lengths(lang)
    keep = []
    for i, (uid, n) in enumerate(zip(ids, lengths, strict=True)):
        if uid not in targets:
            continue
        if n <= 0:
            summary.skip("not_encoded", lang, uid)
        elif n > N_ENCODER_FRAMES:
            summary.skip("over_30s", lang, uid)
        else:
            keep.append(i)
    if not keep:
        raise FinetuneError(
            f"no recording of {lang!r} in {reader.url!r} has a target text (ids shared with the targets: "
            f"{len(set(ids) & set(targets))}); pass targets whose ids are the store's, or another source language"
        )
    states, n_frames = reader.language_layer(lang, layer, utterances=keep, dtype=np.float32)
    xa = fill_padding(states, n_frames, silence, frames=N_ENCODER_FRAMES)
    return Pairs(lang, tuple(ids[i] for i in keep), xa, tuple(targets[ids[i]] for i in keep))


def split_ids(ids, held_out: float, seed: int) -> set[str]:
    """The held-out ids: a seeded ``held_out`` fraction (at least 1, at most all but 1) of the unique ``ids``."""
    unique = sorted(set(ids))
    if len(unique) < 2:
        raise FinetuneError(f"need at least 2 ids to hold some out, got {len(unique)}")
    n = min(max(1, round(held_out * len(unique))), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n]}


def batch_order(lengths: np.ndarray, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``i32[steps, batch_size]`` example indices: epochs of a seeded shuffle, bucketed by target length.

    Each epoch shuffles, sorts windows of 8 batches by length (so a batch pads little), cuts batches and shuffles
    them; a batch never spans two epochs (the last short batch of an epoch is topped up from the epoch's start).
    The order depends only on ``seed``, ``lengths`` and ``batch_size``: a resumed run reads the same batches.
    """
    n = len(lengths)
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n)
        if n >= batch_size and n % batch_size:
            perm = np.concatenate([perm, perm[: batch_size - n % batch_size]])
        elif n < batch_size:
            perm = np.resize(perm, batch_size)
        window = 8 * batch_size
        chunks = [perm[i : i + window] for i in range(0, len(perm), window)]
        perm = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        batches = perm.reshape(-1, batch_size)
        out.extend(batches[rng.permutation(len(batches))])
        epoch += 1
    return np.stack(out[:steps]).astype(np.int32)
