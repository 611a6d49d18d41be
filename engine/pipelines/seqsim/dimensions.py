"""``--dimensions``: the per-dimension transform of a seqsim run (``kernels.outliers``), fitted once per layer over the
run's languages, stored in the similarity store, applied to every state a measure reads, after ``--remove_language``.

- ``none`` (default): states as stored (or as ``--remove_language`` leaves them).
- ``standardise``: each dimension's mean subtracted and the result divided by its standard deviation (divided by
  n), both over every valid frame of every language of the run at the layer (each frame weighs the same): the
  standardisation of Timkey and van Schijndel (2021), under which no dimension dominates a cosine by its scale. A
  dimension constant over the frames (standard deviation 0) is only centred: it becomes 0.
- ``drop:K``: the K dimensions of the largest mean magnitude (``mean |x_i|`` over the same frames: the outliers job's
  ``magnitude``, pooled over the run's languages) set to 0 in every state, so that every cosine is that of the
  other dimensions.

With ``--remove_language``, the statistics are those of the states that transform leaves (it is applied first, then
this one). As that transform, it sees every frame of the run's languages, never which utterances are translations,
and is fitted on the utterances it is then applied to (transductive).

Stored as ``dimension_transform/layer-<L>.npz`` (NumPy's format, read with ``allow_pickle=False``, beside a SHA-256
file): ``kind``, ``k``, ``languages``, ``counts`` (frames per language), ``mean``, ``scale`` (the standard deviation,
1 where it is 0), ``magnitude`` (each f64[d]) and ``dimensions`` (i64[K], the dropped ones; empty for standardise).
Process 0 fits and writes a layer's file before any process scores a pair; a resume reads it back and refuses one
fitted over other languages. The kind is in the store's manifest (``dimensions``), so a resume with another
``--dimensions`` is refused before anything is read.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from engine.errors import DamageError
from engine.pipelines.seqsim.config import parse_dimensions
from engine.pipelines.seqsim.transform import BLOCK_SHARE, blocks, stored_or_fitted
from engine.stores.records import read_npz
from engine.stores.similarity import SimilarityMismatchError
from kernels import outliers

FOLDER = "dimension_transform/"
FIELDS = ("kind", "k", "languages", "counts", "mean", "scale", "magnitude", "dimensions")


@dataclasses.dataclass(frozen=True)
class DimensionTransform:
    """One layer's fitted ``--dimensions`` transform (module docstring)."""

    kind: str
    k: int
    languages: tuple[str, ...]
    counts: np.ndarray  # i64[languages]: frames fitted on
    mean: np.ndarray  # f64[d]
    scale: np.ndarray  # f64[d]: the standard deviation, 1 where it is 0
    magnitude: np.ndarray  # f64[d]: mean |x_i|
    dimensions: np.ndarray  # i64[K]: dropped (drop), empty (standardise)

    @property
    def label(self) -> str:
        return f"drop:{self.k}" if self.kind == "drop" else self.kind

    def function(self):
        """The transform of host states ``f[..., d]`` (``kernels.outliers``: NumPy in float32, returned in their
        dtype); padding is transformed too and left unread by the kernels' masks."""
        if self.kind == "standardise":
            return lambda states: outliers.standardise(states, self.mean, self.scale)
        return lambda states: outliers.zero_dimensions(states, self.dimensions)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, kind=np.array(self.kind), k=np.array(self.k), languages=np.array(self.languages),
                 counts=self.counts, mean=self.mean, scale=self.scale, magnitude=self.magnitude,
                 dimensions=np.asarray(self.dimensions, np.int64))  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "transform", url: str = "", fix: str = "") -> DimensionTransform:
        """A stored transform; one that is not an npz of numeric arrays, or lacks one of them, is a DamageError."""
        f = read_npz(data, key, url, fix)
        missing = sorted(set(FIELDS) - set(f))
        if missing:
            raise DamageError(f"{key} in {url!r} lacks {missing}: it is not a transform babelgrid wrote. {fix}",
                              "not a transform")  # fmt: skip
        return cls(str(f["kind"]), int(f["k"]), tuple(str(x) for x in f["languages"]), f["counts"], f["mean"],
                   f["scale"], f["magnitude"], f["dimensions"])  # fmt: skip


def key(layer: int) -> str:
    return f"{FOLDER}layer-{layer}.npz"


def fit(reader, langs, done_index, layer: int, kind: str, k: int, block_bytes: int, before=None) -> DimensionTransform:
    """The transform of ``layer`` over ``langs``' done utterances (``done_index[lang]``), read in blocks of at most
    ``block_bytes`` of float32 states; ``before``: layer -> language -> the ``--remove_language`` function applied
    first (None: none)."""
    pooled, counts = outliers.Moments(), []
    langs = tuple(sorted(langs))
    for lang in langs:
        change = None if before is None else before(lang)
        own = outliers.Moments()
        for states, lengths in blocks(reader, lang, layer, done_index[lang], block_bytes):
            states = states if change is None else change(states)
            own.add(np.asarray(states)[np.arange(states.shape[1])[None, :] < lengths[:, None]])
        if not own.count:
            raise SimilarityMismatchError(f"language {lang!r} has no done frames at layer {layer}: nothing to fit")
        counts.append(own.count)
        pooled = pooled.merged(own)
    std = pooled.std
    scale = np.where(std > 0, std, 1.0)
    dropped = outliers.top_dimensions(pooled.magnitude, k) if kind == "drop" else np.zeros(0, np.int64)
    return DimensionTransform(kind, k, langs, np.array(counts, np.int64), pooled.mean, scale, pooled.magnitude,
                              dropped)  # fmt: skip


def layer_dimensions(config, reader, request, budget_bytes: int,
                     languages=None) -> dict[int, DimensionTransform] | None:  # fmt: skip
    """Layer -> its ``--dimensions`` transform for this run (None for ``none``): read from the similarity store, or
    fitted and written there by process 0 first. ``languages``: the run's ``--remove_language`` transforms (layer ->
    ``transform.LayerTransform``), applied before the fit. A stored one fitted over other languages is refused."""
    kind, k = parse_dimensions(config.dimensions)
    if kind == "none":
        return None
    langs = tuple(sorted(request.in_play))

    def fit_layer(layer: int) -> DimensionTransform:
        before = None if languages is None else languages[layer].function
        return fit(reader, langs, request.done_index, layer, kind, k, max(budget_bytes // BLOCK_SHARE, 1), before)

    return stored_or_fitted(
        config, request, "dimensions", key, DimensionTransform.from_bytes, config.dimensions,
        asked=(kind, k, langs), described=lambda t: (t.kind, t.k, t.languages), label=lambda t: t.label,
        fit_layer=fit_layer, said=lambda made: f", dropped {made.dimensions.tolist()}" if kind == "drop" else "",
    )  # fmt: skip


def composed(first, second):
    """``second(first(states))``, either of them None for none (None when both are)."""
    if first is None or second is None:
        return first or second
    return lambda states: second(first(states))
