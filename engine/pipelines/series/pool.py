"""A store's mean-pooled states at one layer, per language: what every measure of the series job reads.

Each utterance done in the store is the mean of its valid frames (``kernels.pooling.mean_pool``, float32), read one
language at a time and trimmed to its longest utterance. Utterances are named by ``(id, recording)``: the id pairs
translations across languages (retrieval) and, with the recording, the same audio across stores (CKA).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from engine.stores.reader import StoreReader
from kernels.pooling import mean_pool

_mean_pool = jax.jit(jax.vmap(mean_pool))


@dataclasses.dataclass(frozen=True)
class Pooled:
    """One language at one layer: ``states`` f32[utterance, embed], ``keys`` (id, recording) of each row."""

    states: np.ndarray
    keys: tuple[tuple[str, int], ...]

    @property
    def ids(self) -> list[str]:
        return [key[0] for key in self.keys]


def pooled(reader: StoreReader, lang: str, layer: int) -> Pooled:
    """The done utterances of ``lang`` at ``layer``, mean-pooled (module docstring)."""
    done = np.flatnonzero(reader.done(lang))
    rows = reader.arrays(lang).rows
    keys = tuple((str(rows[u].id), int(rows[u].recording)) for u in done)
    if not len(done):
        return Pooled(np.zeros((0, reader.info.embed), np.float32), keys)
    lengths = reader.lengths(lang)[done]
    states, lengths = reader.language_layer(lang, layer, done, np.float32, frames=int(lengths.max()))
    return Pooled(np.asarray(_mean_pool(states, lengths), np.float32), keys)


def pooled_layer(reader: StoreReader, langs, layer: int) -> dict[str, Pooled]:
    return {lang: pooled(reader, lang, layer) for lang in langs}
