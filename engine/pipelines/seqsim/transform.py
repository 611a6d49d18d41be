"""The two per-layer transforms of a seqsim run, each fitted once per layer over the run's languages, stored in the
similarity store and applied to every state a measure reads: ``--remove_language`` first, then ``--dimensions``, which
is fitted on the states the first leaves. Both share one life (``stored_or_fitted``): process 0 fits and writes a
layer's file before any process scores a pair; a resume reads it back and refuses one fitted over other languages;
the flag's value is in the store's manifest, so a resume with another value is refused before anything is read.

What a transform sees: every frame of every language of the run (``--langs``), labelled by language; never which
utterances are translations of each other, nor any score. It is fitted on the same utterances it is then applied
to, so it is transductive: a retrieval gain measures how much language identity (or a few dimensions) stood in the
way on this set, not a transform that was validated on held-out speech.

``--remove_language``, the language-subspace transform (``kernels.subspace``):

- ``none`` (default): states as stored.
- ``mean``: each language's mean state at the layer (over its done utterances' valid frames) subtracted.
- ``lda:K``: the top K directions that separate the run's languages (LDA on the layer's frames) projected out.

Stored as ``language_transform/layer-<L>.npz`` (NumPy's format, read with ``allow_pickle=False``, beside a SHA-256
file): ``kind``, ``k``, ``languages``, ``counts`` (frames per language), ``means`` (f64[languages, d]) and, for lda,
``basis`` (f64[d, K], orthonormal).

``--dimensions``, the per-dimension transform (``kernels.outliers``):

- ``none`` (default): states as stored (or as ``--remove_language`` leaves them).
- ``standardise``: each dimension's mean subtracted and the result divided by its standard deviation (divided by
  n), both over every valid frame of every language of the run at the layer (each frame weighs the same): the
  standardisation of Timkey and van Schijndel (2021), under which no dimension dominates a cosine by its scale. A
  dimension constant over the frames (standard deviation 0) is only centred: it becomes 0.
- ``drop:K``: the K dimensions of the largest mean magnitude (``mean |x_i|`` over the same frames: the outliers job's
  ``magnitude``, pooled over the run's languages) set to 0 in every state, so that every cosine is that of the
  other dimensions.

Stored as ``dimension_transform/layer-<L>.npz`` (the same format): ``kind``, ``k``, ``languages``, ``counts`` (frames
per language), ``mean``, ``scale`` (the standard deviation, 1 where it is 0), ``magnitude`` (each f64[d]) and
``dimensions`` (i64[K], the dropped ones; empty for standardise).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import ClassVar

import numpy as np

from engine.errors import DamageError
from engine.runtime.runs import process_zero_first
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.records import read_npz
from engine.stores.similarity import SimilarityMismatchError
from kernels import outliers, subspace

log = logging.getLogger(__name__)

BLOCK_SHARE = 4  # a fit reads a language in blocks of at most a quarter of the memory budget


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What both transforms store (module docstring): their kind and K, the languages they were fitted over and the
    frames of each, then the arrays a transform of its kind adds (``ARRAYS``, in the file's order; an array that is
    None is not stored, and only ``OPTIONAL`` ones may be None)."""

    kind: str
    k: int
    languages: tuple[str, ...]
    counts: np.ndarray  # i64[languages]: frames fitted on

    FOLDER: ClassVar[str] = ""  # in the similarity store
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def key(cls, layer: int) -> str:
        return f"{cls.FOLDER}layer-{layer}.npz"

    @property
    def described(self) -> tuple:
        """What a resume compares with what it asks: (kind, K, languages)."""
        return self.kind, self.k, self.languages

    @property
    def label(self) -> str:
        """How a refusal names it."""
        return f"{self.kind}:{self.k}"

    def to_bytes(self) -> bytes:
        arrays = {"kind": np.array(self.kind), "k": np.array(self.k), "languages": np.array(self.languages),
                  "counts": self.counts}  # fmt: skip
        arrays |= {name: getattr(self, name) for name in self.ARRAYS if getattr(self, name) is not None}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "transform", url: str = "", fix: str = ""):
        """A stored transform; one that is not an npz of numeric arrays, or lacks one of them, is a DamageError."""
        f = read_npz(data, key, url, fix)
        missing = sorted(set(cls.fields()) - set(cls.OPTIONAL) - set(f))
        if missing:
            raise DamageError(f"{key} in {url!r} lacks {missing}: it is not a transform babelgrid wrote. {fix}",
                              "not a transform")  # fmt: skip
        return cls(str(f["kind"]), int(f["k"]), tuple(str(x) for x in f["languages"]), f["counts"],
                   *(f.get(name) for name in cls.ARRAYS))  # fmt: skip

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the stored arrays, in the file's order."""
        return ("kind", "k", "languages", "counts", *cls.ARRAYS)


@dataclasses.dataclass(frozen=True)
class LayerTransform(Fitted):
    """One layer's fitted ``--remove_language`` transform (module docstring)."""

    means: np.ndarray  # f64[languages, d]
    basis: np.ndarray | None  # f64[d, k] for lda

    FOLDER: ClassVar[str] = "language_transform/"
    ARRAYS: ClassVar[tuple[str, ...]] = ("means", "basis")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("basis",)

    def function(self, lang: str):
        """The transform of ``lang``'s host states ``f[..., d]`` (``kernels.subspace``: NumPy, in float32, returned in
        their dtype), applied as they are read; the kernels mask padding, so padding is transformed too, unread."""
        if self.kind == "mean":
            mean = self.means[self.languages.index(lang)]
            return lambda states: subspace.remove_mean(states, mean)
        return lambda states: subspace.project_out(states, self.basis)


def blocks(reader, lang: str, layer: int, index, block_bytes: int):
    """(states f32[u, frames, d], lengths i32[u]) of the utterances ``index`` of ``lang`` at ``layer``, in blocks of
    at most ``block_bytes`` of float32 states (one utterance at least), each read up to its longest utterance."""
    index = np.asarray(index)
    lengths = np.asarray(reader.lengths(lang))[index]
    embed = reader.info.embed
    start = 0
    while start < len(index):
        stop = start + 1
        while stop < len(index) and (stop + 1 - start) * int(lengths[start : stop + 1].max()) * embed * 4 <= (
            block_bytes
        ):
            stop += 1
        frames = int(lengths[start:stop].max())
        yield reader.language_layer(lang, layer, utterances=index[start:stop], dtype=np.float32, frames=frames)
        start = stop


def fit_language(reader, langs, done_index, layer: int, kind: str, k: int, block_bytes: int) -> LayerTransform:
    """The transform of ``layer`` over ``langs``: their done utterances (``done_index[lang]``) read in blocks of at
    most ``block_bytes`` of float32 states."""
    sums = {}
    for lang in langs:
        total = subspace.FrameSums()
        for states, valid in blocks(reader, lang, layer, done_index[lang], block_bytes):
            total = subspace.add_block(total, states, valid, scatter=kind == "lda")
        if not total.count:
            raise SimilarityMismatchError(f"language {lang!r} has no done frames at layer {layer}: nothing to fit")
        sums[lang] = total
    langs = tuple(sorted(sums))
    basis = subspace.lda_basis(sums, k) if kind == "lda" else None
    return LayerTransform(kind, k, langs, np.array([sums[x].count for x in langs], np.int64),
                          np.stack([sums[x].mean for x in langs]), basis)  # fmt: skip


def layer_transforms(config, reader, request, budget_bytes: int) -> dict[int, LayerTransform] | None:
    """Layer -> its transform for this run (None for ``none``): read from the similarity store, or fitted and
    written there by process 0 first. A stored one fitted over other languages is refused."""
    kind, k = config.removal
    if kind == "none":
        return None
    langs = tuple(sorted(request.in_play))
    return stored_or_fitted(
        config, request, "transform", LayerTransform, config.remove_language, asked=(kind, k, langs),
        fit_layer=lambda layer: fit_language(reader, langs, request.done_index, layer, kind, k,
                                    max(budget_bytes // BLOCK_SHARE, 1)),
        said=lambda made: "",
    )  # fmt: skip


def stored_or_fitted(config, request, name: str, transform: type[Fitted], setting: str, *, asked: tuple, fit_layer,
                     said) -> dict:  # fmt: skip
    """Layer -> a per-layer transform of this run, a ``transform`` (``--remove_language``'s, ``--dimensions``':
    ``setting``, the flag's value): read from the similarity store at ``transform.key(layer)``, or fitted
    (``fit_layer(layer)``) and written there by process 0 first, the others reading what it wrote. One stored as other
    than ``asked`` (its ``described``: (kind, k, languages)) is refused: the transform must be the same for every pair
    of a store. ``said`` adds to the log line of a fit."""
    url = config.run.out
    _, kv = open_kvstore(url)
    fix = repair_hint(url, "seqsim")
    wanted = f"{setting} over {list(asked[-1])}"

    def fitted(layer: int):
        key = transform.key(layer)
        data = read_output(kv, key, url, fix=fix)
        if data is not None:
            stored = transform.from_bytes(data, key, url, fix)
            if stored.described != asked:
                raise SimilarityMismatchError(
                    f"{key} in {url!r} was fitted as {stored.label} over {list(stored.languages)}; this run "
                    f"asks {wanted}. The transform must be the same for every pair of a store: compute into a new "
                    "output folder, or rerun with the stored --langs"
                )
            return stored
        t = time.perf_counter()
        made = fit_layer(layer)
        write_outputs(kv, {key: made.to_bytes()}, url)
        log.info("fitted %s at layer %d over %d languages in %.1f s%s", setting, layer, len(asked[-1]),
                 time.perf_counter() - t, said(made))  # fmt: skip
        return made

    return process_zero_first(
        f"babelgrid-similarity-{name}", lambda: {layer: fitted(layer) for layer in request.layers}
    )


# -- --dimensions ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DimensionTransform(Fitted):
    """One layer's fitted ``--dimensions`` transform (module docstring)."""

    mean: np.ndarray  # f64[d]
    scale: np.ndarray  # f64[d]: the standard deviation, 1 where it is 0
    magnitude: np.ndarray  # f64[d]: mean |x_i|
    dimensions: np.ndarray  # i64[K]: dropped (drop), empty (standardise)

    FOLDER: ClassVar[str] = "dimension_transform/"
    ARRAYS: ClassVar[tuple[str, ...]] = ("mean", "scale", "magnitude", "dimensions")

    @property
    def label(self) -> str:
        return f"drop:{self.k}" if self.kind == "drop" else self.kind

    def function(self):
        """The transform of host states ``f[..., d]`` (``kernels.outliers``: NumPy in float32, returned in their
        dtype); padding is transformed too and left unread by the kernels' masks."""
        if self.kind == "standardise":
            return lambda states: outliers.standardise(states, self.mean, self.scale)
        return lambda states: outliers.zero_dimensions(states, self.dimensions)


DIMENSION_FIELDS = DimensionTransform.fields()


def fit_dimensions(reader, langs, done_index, layer: int, kind: str, k: int, block_bytes: int,
                   before=None) -> DimensionTransform:  # fmt: skip
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
    ``LayerTransform``), applied before the fit. A stored one fitted over other languages is refused."""
    kind, k = config.dimension_kind
    if kind == "none":
        return None
    langs = tuple(sorted(request.in_play))

    def fit_layer(layer: int) -> DimensionTransform:
        before = None if languages is None else languages[layer].function
        return fit_dimensions(reader, langs, request.done_index, layer, kind, k, max(budget_bytes // BLOCK_SHARE, 1),
                              before)  # fmt: skip

    return stored_or_fitted(
        config, request, "dimensions", DimensionTransform, config.dimensions, asked=(kind, k, langs),
        fit_layer=fit_layer, said=lambda made: f", dropped {made.dimensions.tolist()}" if kind == "drop" else "",
    )  # fmt: skip


def composed(first, second):
    """``second(first(states))``, either of them None for none (None when both are)."""
    if first is None or second is None:
        return first or second
    return lambda states: second(first(states))
