"""A layer's valid frames, streamed from the store in shuffled blocks, never all in memory.

Per epoch (seeded by ``(seed, epoch)``, so a resumed run sees the same batches): the done utterances of every
language in one random order, read ``block`` at a time (one read per language in the block), their valid frames
added to a buffer of at most ``buffer_frames``; a full buffer is shuffled and cut into batches, the rest carried to
the next. The frames left at the epoch's end that do not fill a batch are dropped (one fixed batch shape: one
compiled step). ``scan`` reads every frame once, in store order, for the evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from engine.pipelines.sae.config import SaeError


@dataclasses.dataclass
class Frames:
    store: object  # engine.stores.reader.StoreReader
    layer: int
    langs: Sequence[str]
    block: int
    buffer_frames: int
    seed: int

    def __post_init__(self):
        self.lengths = {lang: self.store.lengths(lang) for lang in self.langs}
        self.utterances = [(lang, int(u)) for lang in self.langs for u in np.flatnonzero(self.lengths[lang] > 0)]
        self.total = int(sum(self.lengths[lang][u] for lang, u in self.utterances))
        if not self.utterances:
            raise SaeError(f"layer {self.layer}: no utterance of {list(self.langs)} is done in the store")

    def _read(self, chosen: Sequence[tuple[str, int]]) -> Iterator[tuple[str, int, np.ndarray]]:
        """(language, utterance, f32[valid frames, embed]) of ``chosen``, in its order, one store read per language."""
        by_lang: dict[str, list[int]] = {}
        for lang, u in chosen:
            by_lang.setdefault(lang, []).append(u)
        read = {}
        for lang, index in by_lang.items():
            index = np.asarray(index)
            lengths = self.lengths[lang][index]
            states, _ = self.store.language_layer(lang, self.layer, index, np.float32, frames=int(lengths.max()))
            for row, (u, n) in enumerate(zip(index, lengths, strict=True)):
                read[lang, int(u)] = states[row, :n]
        for lang, u in chosen:  # not grouped by language: the frames' order must not depend on ``block``
            yield lang, int(u), read[lang, int(u)]

    def epoch(self, epoch: int, batch: int) -> Iterator[np.ndarray]:
        """f32[batch, embed] batches of one epoch (module docstring)."""
        rng = np.random.default_rng([self.seed, self.layer, epoch])
        order = [self.utterances[i] for i in rng.permutation(len(self.utterances))]
        buffer: list[np.ndarray] = []
        held = 0
        # The buffer is cut at the utterance that fills it, not at the end of a read: ``block`` decides how many
        # utterances a read fetches, never the batches (the sae output folder does not pin it).
        for start in range(0, len(order), self.block):
            for _, _, frames in self._read(order[start : start + self.block]):
                buffer.append(frames)
                held += len(frames)
                if held >= self.buffer_frames:
                    yield from self._cut(buffer, batch, rng, keep_rest=True)
                    held = sum(len(b) for b in buffer)
        yield from self._cut(buffer, batch, rng, keep_rest=False)

    @staticmethod
    def _cut(buffer: list[np.ndarray], batch: int, rng, keep_rest: bool) -> Iterator[np.ndarray]:
        frames = np.concatenate(buffer) if buffer else np.zeros((0, 0), np.float32)
        frames = frames[rng.permutation(len(frames))]
        whole = len(frames) // batch * batch
        buffer.clear()
        if keep_rest and whole < len(frames):
            buffer.append(frames[whole:])
        for start in range(0, whole, batch):
            yield frames[start : start + batch]

    def steps_per_epoch(self, batch: int) -> int:
        """Batches an epoch gives: the frames less what the buffers cannot fill, computed by the same cutting."""
        return self.total // batch

    def scan(self) -> Iterator[tuple[str, int, np.ndarray]]:
        """Every done utterance's valid frames, in store order."""
        for start in range(0, len(self.utterances), self.block):
            yield from self._read(self.utterances[start : start + self.block])
