"""``--remove_language``: the language-subspace transform of a seqsim run (``kernels.subspace``), fitted once per
layer over the run's languages, stored in the similarity store, applied to every state a measure reads.

- ``none`` (default): states as stored.
- ``mean``: each language's mean state at the layer (over its done utterances' valid frames) subtracted.
- ``lda:K``: the top K directions that separate the run's languages (LDA on the layer's frames) projected out.

What the transform sees: every frame of every language of the run (``--langs``), labelled by language; never which
utterances are translations of each other, nor any score. It is fitted on the same utterances it is then applied
to, so it is transductive: a retrieval gain measures how much language identity stood in the way on this set, not a
transform that was validated on held-out speech.

Stored as ``language_transform/layer-<L>.npz`` (NumPy's format, read with ``allow_pickle=False``, beside a SHA-256
file): ``kind``, ``k``, ``languages``, ``counts`` (frames per language), ``means`` (f64[languages, d]) and, for lda,
``basis`` (f64[d, K], orthonormal). Process 0 fits and writes a layer's file before any process scores a pair; a
resume reads it back and refuses one fitted over other languages. The kind itself is in the store's manifest, so a
resume with another ``--remove_language`` is refused before anything is read.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time

import numpy as np

from engine.errors import DamageError
from engine.pipelines.seqsim.config import parse_kind
from engine.runtime.runs import process_zero_first
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.records import read_npz
from engine.stores.similarity import SimilarityMismatchError
from kernels import subspace

log = logging.getLogger(__name__)

FOLDER = "language_transform/"
BLOCK_SHARE = 4  # a fit reads a language in blocks of at most a quarter of the memory budget


@dataclasses.dataclass(frozen=True)
class LayerTransform:
    """One layer's fitted transform (module docstring)."""

    kind: str
    k: int
    languages: tuple[str, ...]
    counts: np.ndarray  # i64[languages]: frames fitted on
    means: np.ndarray  # f64[languages, d]
    basis: np.ndarray | None  # f64[d, k] for lda

    def function(self, lang: str):
        """The transform of ``lang``'s host states ``f[..., d]`` (``kernels.subspace``: NumPy, in float32, returned in
        their dtype), applied as they are read; the kernels mask padding, so padding is transformed too, unread."""
        if self.kind == "mean":
            mean = self.means[self.languages.index(lang)]
            return lambda states: subspace.remove_mean(states, mean)
        return lambda states: subspace.project_out(states, self.basis)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {"kind": np.array(self.kind), "k": np.array(self.k), "languages": np.array(self.languages),
                  "counts": self.counts, "means": self.means}  # fmt: skip
        np.savez(buffer, **arrays, **({} if self.basis is None else {"basis": self.basis}))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "transform", url: str = "", fix: str = "") -> LayerTransform:
        """A stored transform; one that is not an npz of numeric arrays, or lacks one of them, is a DamageError."""
        f = read_npz(data, key, url, fix)
        missing = sorted({"kind", "k", "languages", "counts", "means"} - set(f))
        if missing:
            raise DamageError(f"{key} in {url!r} lacks {missing}: it is not a transform babelgrid wrote. {fix}",
                              "not a transform")  # fmt: skip
        return cls(str(f["kind"]), int(f["k"]), tuple(str(x) for x in f["languages"]), f["counts"], f["means"],
                   f.get("basis"))  # fmt: skip


def key(layer: int) -> str:
    return f"{FOLDER}layer-{layer}.npz"


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


def fit(reader, langs, done_index, layer: int, kind: str, k: int, block_bytes: int) -> LayerTransform:
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
    kind, k = parse_kind(config.remove_language)
    if kind == "none":
        return None
    langs = tuple(sorted(request.in_play))
    return stored_or_fitted(
        config, request, "transform", key, LayerTransform.from_bytes, config.remove_language,
        asked=(kind, k, langs), described=lambda t: (t.kind, t.k, t.languages), label=lambda t: f"{t.kind}:{t.k}",
        fit_layer=lambda layer: fit(reader, langs, request.done_index, layer, kind, k,
                                    max(budget_bytes // BLOCK_SHARE, 1)),
        said=lambda made: "",
    )  # fmt: skip


def stored_or_fitted(config, request, name: str, key, load, setting: str, *, asked: tuple, described, label, fit_layer,
                     said) -> dict:  # fmt: skip
    """Layer -> a per-layer transform of this run (``--remove_language``'s, ``--dimensions``': ``setting``, the
    flag's value): read from the similarity store at ``key(layer)`` (``load(data, key, url, fix)``), or fitted
    (``fit_layer(layer)``) and written there by process 0 first, the others reading what it wrote. One stored as other
    than ``asked`` (``described``: its (kind, k, languages)) is refused: the transform must be the same for every pair
    of a store. ``label`` names a stored transform in that refusal, ``said`` adds to the log line of a fit."""
    url = config.run.out
    _, kv = open_kvstore(url)
    fix = repair_hint(url, "seqsim")
    wanted = f"{setting} over {list(asked[-1])}"

    def fitted(layer: int):
        data = read_output(kv, key(layer), url, fix=fix)
        if data is not None:
            stored = load(data, key(layer), url, fix)
            if described(stored) != asked:
                raise SimilarityMismatchError(
                    f"{key(layer)} in {url!r} was fitted as {label(stored)} over {list(stored.languages)}; this run "
                    f"asks {wanted}. The transform must be the same for every pair of a store: compute into a new "
                    "output folder, or rerun with the stored --langs"
                )
            return stored
        t = time.perf_counter()
        made = fit_layer(layer)
        write_outputs(kv, {key(layer): made.to_bytes()}, url)
        log.info("fitted %s at layer %d over %d languages in %.1f s%s", setting, layer, len(asked[-1]),
                 time.perf_counter() - t, said(made))  # fmt: skip
        return made

    return process_zero_first(
        f"babelgrid-similarity-{name}", lambda: {layer: fitted(layer) for layer in request.layers}
    )
