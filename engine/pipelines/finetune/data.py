"""Training pairs from a layer store: a source language's final-layer states and target-language text by id.

Padding (what the decoder sees past an utterance's valid frames): the store keeps valid frames only. The model's
``Trainer.memory`` fills the frames past each utterance as its decoder needs, for training and for the job's own
evaluation alike, so that training sees what its evaluation sees and the encoder never runs on speech: Whisper's
and OWSM's decoders attend to the whole window, so those frames are the silent window's states (an approximation:
the decode job recomputes the encoder from audio, real padding frames); a decoder that masks them reads the valid
frames only, as it does from audio. Utterances longer than one window (``Trainer.memory_frames``) are skipped and
counted: one window is what the decoder reads. How the frames are filled (``Trainer.padding``) is recorded in the
run's ``config.json`` and its printed report.

Split: the ids shared by source and targets are shuffled with ``seed`` and the first ``held_out`` fraction (at
least one) held out; every recording of a held-out id is held out (FLEURS has several per sentence).
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np

from engine.errors import BabelgridError


class FinetuneError(BabelgridError, ValueError):
    """The store, targets or settings cannot be used for fine-tuning."""


@dataclasses.dataclass(frozen=True)
class Pairs:
    """One source language's examples: ``xa f[n, frame, embed]`` (``Trainer.memory``), ``ids``, ``texts``
    (targets), ``valid i32[n]`` the valid frames of each (default: all of ``xa``'s)."""

    lang: str
    ids: tuple[str, ...]
    xa: np.ndarray
    texts: tuple[str, ...]
    valid: np.ndarray | None = None

    def __post_init__(self):
        if self.valid is None:
            object.__setattr__(self, "valid", np.full(len(self.ids), self.xa.shape[1], np.int32))

    def take(self, keep: np.ndarray) -> Pairs:
        idx = np.flatnonzero(keep)
        return Pairs(self.lang, tuple(self.ids[i] for i in idx), self.xa[idx], tuple(self.texts[i] for i in idx),
                     self.valid[idx])  # fmt: skip


def top_layer(reader) -> int:
    """The model's last layer (Whisper's and OWSM's ``L+1``), checked to be in the store: the encoder output the
    decoder reads."""
    info = reader.info
    top = info.n_layers_out - 1
    if top not in info.layers:
        raise FinetuneError(
            f"store {reader.url!r} has layers {list(info.layers)} but not {top}, the encoder output the decoder reads "
            f"({info.layer_meaning}); encode again with --layers including {top}"
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


def load_pairs(reader, lang: str, targets: dict[str, str], trainer, summary) -> Pairs:
    """Every done recording of ``lang`` whose id has a target text and that fits one window, as ``trainer``'s
    memory."""
    layer = top_layer(reader)
    ids, keep = usable(reader, lang, targets, trainer.memory_frames, summary)
    states, n_frames = reader.language_layer(lang, layer, utterances=keep, dtype=np.float32)
    xa = trainer.memory(states, n_frames)
    return Pairs(lang, tuple(ids[i] for i in keep), xa, tuple(targets[ids[i]] for i in keep),
                 np.asarray(n_frames, np.int32))  # fmt: skip


def usable(reader, lang: str, targets: dict[str, str], memory_frames: int, summary) -> tuple[list[str], list[int]]:
    """``(ids, keep)``: the utterance ids of ``lang`` and the indices of those with a target text that are encoded
    and fit one window (``memory_frames``); the rest with a target are counted as skipped in ``summary``. None of
    them is a FinetuneError."""
    if lang not in reader.languages():
        raise FinetuneError(f"store {reader.url!r} has no language {lang!r}; it has {reader.languages()}")
    ids = [str(u) for u in reader.utterances_table(lang).column("id").to_pylist()]
    keep = []
    for i, (uid, n) in enumerate(zip(ids, reader.lengths(lang), strict=True)):
        if uid not in targets:
            continue
        if n <= 0:
            summary.skip("not_encoded", lang, uid)
        elif n > memory_frames:
            summary.skip("over_30s", lang, uid)
        else:
            keep.append(i)
    if not keep:
        raise FinetuneError(
            f"no recording of {lang!r} in {reader.url!r} has a target text (ids shared with the targets: "
            f"{len(set(ids) & set(targets))}); pass targets whose ids are the store's, or another source language"
        )
    return ids, keep


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
