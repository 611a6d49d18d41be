"""The similarity measures of the seqsim job: one registry entry per measure, its kernel call, dtype policy and cost.

A ``Measure`` names its ``Kernel`` (the call that scores every utterance of one language against every utterance
of another at one layer), the dtype it reads the states in, whether it writes NaN for scores it could not measure,
and the settings that are part of the measure (recorded in its done markers). Measures that one call produces share
its ``Kernel``: ``seqsim``, ``seqsim_a2b`` and ``seqsim_b2a`` come from one ``kernels.seqsim`` call. A kernel's
``Cost`` is what ``--plan`` counts (``engine.pipelines.seqsim.plan``) and what the run's summary reports.

Adding a measure means adding its entry to ``MEASURES`` here, and its name to the similarity store's ``MEASURES``
(``engine.stores.similarity``: the names a store may hold, in the order a reader lists them, known to readers that
have no kernels); the two lists are checked against each other when this module is imported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np

from engine.pipelines.seqsim.config import FP8_SCALES
from engine.runtime.transfers import guarded_loop
from engine.stores import similarity as similarity_store
from kernels.dtw import dtw_similarity_matrix
from kernels.ot_matrix import ot_similarity_matrix
from kernels.pooling import duration_similarity_matrix, host_cosines, host_pools
from kernels.seqsim import (
    PackedSide,
    Packing,
    pack_states,
    packs_by_default,
    seqsim_matrix,
    seqsim_matrix_of_packed,
    seqsim_matrix_sharded,
)
from kernels.seqsim_fp8 import SCALES as KERNEL_FP8_SCALES
from kernels.seqsim_fp8 import seqsim_matrix_fp8
from kernels.seqsim_pallas import fastest_on
from kernels.settings import OtConfig


@dataclasses.dataclass(frozen=True)
class Side:
    """One language of a pair at one layer, done utterances only."""

    index: np.ndarray  # i64[done]: utterance indices in the layer store
    lengths: np.ndarray  # i32[done]: valid frames
    states: jax.Array | None  # f[done, frames, embed] on the device, in the run's dtype; None: lengths only
    packing: Packing | None = None  # some bins of the whole language's packing (a block of a split pair); None: its own

    @functools.cached_property
    def packed(self) -> PackedSide:
        """The states packed for the seqsim kernel (``kernels.seqsim.pack_states``), once for every pair this side
        is scored in at its layer: packing both sides for each pair took ~9% of the demo's seqsim kernel time."""
        return pack_states(self.states, self.lengths, self.packing)

    @functools.cached_property
    def means(self) -> np.ndarray:
        """f64[done, embed]: each utterance's mean valid frame (``kernels.pooling.host_pools``), once per side."""
        return host_pools(self.states, self.lengths)

    @functools.cached_property
    def centres(self) -> np.ndarray:
        """f64[done, embed]: each utterance's centre frame, once per side."""
        return host_pools(self.states, self.lengths, centre=True)


@dataclasses.dataclass(frozen=True)
class MeasureContext:
    """What a kernel call takes besides the two sides: the run's settings."""

    dtype: str  # the states' compute dtype (``SimilarityConfig.dtype``); scores are float32 whatever it is
    ot: OtConfig = OtConfig()  # Sinkhorn options of the ``ot`` measure
    mesh: jax.sharding.Mesh | None = None  # the local devices, when there are several (seqsim shards its rows)
    seqsim_kernel: str = "auto"  # SimilarityConfig.seqsim_kernel: the SeqSim path asked (seqsim_path resolves auto)
    seqsim_precision: str = "dtype"  # SimilarityConfig.seqsim_precision: "fp8" takes the fp8 path
    seqsim_fp8_scale: str = "tensor"  # SimilarityConfig.seqsim_fp8_scale: the fp8 path's scale

    @property
    def seqsim_path(self) -> str:
        return seqsim_path(self.seqsim_kernel, several_devices=self.mesh is not None, precision=self.seqsim_precision)


@dataclasses.dataclass(frozen=True)
class Scores:
    """One measure's f32[done_a, done_b], and for a measure that may fail on a pair (``Measure.nan_scores``) which
    pairs it could not measure (``failed``: bool[done_a, done_b]) and how many it finished by a fallback."""

    values: np.ndarray
    failed: np.ndarray | None = None
    fallback: int = 0


@dataclasses.dataclass(frozen=True)
class Cost:
    """How a kernel's work is counted, per language pair and layer of N x M utterances cropped to their longest
    (m and n frames) of width d: ``matmul``: ``2*N*M*m*n*d`` FLOPs, timed by the seqsim kernel's calibration;
    ``cells``: ``N*M*m*n`` cells whose time depends on the states (a wavefront, Sinkhorn's iterations), timed on a
    sample of the store's own states, FLOPs counting the cosine cost matrix only (``2*d`` a cell); ``negligible``:
    pooled vectors and lengths, counted as nothing beside the others."""

    kind: str  # matmul | cells | negligible

    def flops(self, n_a: int, n_b: int, m: int, n: int, d: int) -> float:
        """FLOPs of one pair at one layer, frames as computed (cropped to the longest)."""
        if self.kind == "negligible":
            return 0.0
        return 2.0 * n_a * n_b * m * n * d

    def useful_flops(self, lengths_a: np.ndarray, lengths_b: np.ndarray, d: int) -> float:
        """FLOPs on valid frames only (no padding): ``2 * sum(len_a) * sum(len_b) * d`` for every kind but
        negligible."""
        if self.kind == "negligible":
            return 0.0
        return 2.0 * float(np.sum(lengths_a)) * float(np.sum(lengths_b)) * d

    def unit_flops(self, lengths_a: np.ndarray, lengths_b: np.ndarray, d: int) -> float:
        """What a work unit of N x M utterances is sized by (``engine.pipelines.seqsim.tiling.tiles``): ``matmul``
        on valid frames (the packed kernel multiplies little padding), ``cells`` as computed (cropped to the
        longest), ``negligible`` as the ``2*N*M*d`` of one product of pooled vectors."""
        if self.kind == "matmul":
            return self.useful_flops(lengths_a, lengths_b, d)
        if self.kind == "cells":
            return self.flops(len(lengths_a), len(lengths_b), int(np.max(lengths_a)), int(np.max(lengths_b)), d)
        return 2.0 * len(lengths_a) * len(lengths_b) * d


COSTS = ("matmul", "cells", "negligible")  # the order of a plan's stages


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One call that scores a pair of sides at one layer: ``call(A, B, context, names) -> {measure: Scores}`` for
    the ``names`` of its measures that were asked (it may return more). ``exact_in_bins``: scored by packed sides
    (``kernels.seqsim_packed``), its block of some bins of each side is bit for bit the whole pair's there, so a
    large pair may be split into such blocks for balance (``engine.pipelines.seqsim.tiling.tiles``)."""

    name: str
    call: Callable[[Side, Side, MeasureContext, frozenset[str]], dict[str, Scores]]
    cost: Cost
    exact_in_bins: bool = False  # packed sides restricted to some bins score bit for bit as the whole pair does

    def score(self, A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
        """``call`` under the guard that refuses implicit host-to-device copies (``engine.runtime.transfers``): a
        kernel moves what it needs with ``jax.device_put``, once per side where it can (the sides' states are on
        the device already), so that an index or a length re-sent for every pair by accident is an error in every
        test of the job rather than an unseen copy per pair on an accelerator. The scores' copies back to the host
        are the result, and allowed."""
        with guarded_loop(f"seqsim's {self.name} kernel"):
            return self.call(A, B, context, names)


@dataclasses.dataclass(frozen=True)
class Measure:
    """A registry entry. ``dtype``: the dtype policy, ``"run"`` = reads the states in the run's compute dtype
    (``MeasureContext.dtype``), ``None`` = reads no states (lengths only). ``nan_scores``: writes NaN for the pairs
    it could not measure and lists them in its done markers (``nonconverged``, ``fallback``). ``settings(context)``:
    the done-marker fields that are part of the measure (a matrix computed with other settings is recomputed)."""

    name: str
    kernel: Kernel
    dtype: str | None = "run"
    nan_scores: bool = False
    settings: Callable[[MeasureContext], dict] | None = None

    @property
    def needs_states(self) -> bool:
        return self.dtype is not None

    def marker_settings(self, context: MeasureContext) -> dict:
        return {} if self.settings is None else self.settings(context)


# --- the kernel calls -----------------------------------------------------------------------------------------------


def seqsim_path(choice: str, *, several_devices: bool, precision: str = "dtype", device: str | None = None) -> str:
    """The key of ``SEQSIM_PATHS`` a run takes for ``choice`` (``SimilarityConfig.seqsim_kernel``): ``auto`` is
    the fused Pallas kernel on one GPU of a kind it was measured fastest on (``kernels.seqsim_pallas.fastest_on``),
    else packed bins on one device, whatever its platform (``kernels.seqsim.packs_by_default``), and blocks sharded
    by rows over several (the run's mesh); ``packed`` and ``pallas`` run on one device even where there are several.
    ``precision`` ``"fp8"`` (``SimilarityConfig.seqsim_precision``, which allows ``choice`` auto or packed only) is
    the fp8 path, ``kernels.seqsim_fp8``'s packed bins on one device. ``device``: the device kind the run takes
    (default: the first JAX device's; a plan names the device it plans for)."""
    if precision == "fp8":
        return "fp8"
    if choice != "auto":
        return choice
    if several_devices:
        return "blocks"
    device = jax.devices()[0].device_kind if device is None else device
    return "pallas" if fastest_on(device) else "packed" if packs_by_default() else "blocks"


def _seqsim_packed(A: Side, B: Side, context: MeasureContext, directional: bool):
    return seqsim_matrix_of_packed(A.packed, B.packed, directional=directional)


def _seqsim_blocks(A: Side, B: Side, context: MeasureContext, directional: bool):
    args = (A.states, A.lengths, B.states, B.lengths)
    if context.mesh is None:
        return seqsim_matrix(*args, directional=directional, packed=False)
    return seqsim_matrix_sharded(*args, context.mesh, directional=directional)


def _seqsim_pallas(A: Side, B: Side, context: MeasureContext, directional: bool):
    return seqsim_matrix(A.states, A.lengths, B.states, B.lengths, directional=directional, pallas=True)


def _seqsim_fp8(A: Side, B: Side, context: MeasureContext, directional: bool):
    """--seqsim_precision fp8: frames rounded to e4m3, float32 accumulation; on the e4m3 tensor cores of the devices
    ``kernels.seqsim_fp8.has_fp8`` names, emulated (same numerics, no speed-up) elsewhere, CPU included."""
    return seqsim_matrix_fp8(A.states, A.lengths, B.states, B.lengths, scale=context.seqsim_fp8_scale,
                             directional=directional)  # fmt: skip


# The SeqSim paths a run may take (SimilarityConfig.seqsim_kernel): the same scores up to the order of float32 sums,
# but for fp8 (SimilarityConfig.seqsim_precision: other scores, recorded in the manifest).
SEQSIM_PATHS: Mapping[str, Callable] = {"blocks": _seqsim_blocks, "packed": _seqsim_packed, "pallas": _seqsim_pallas,
                                        "fp8": _seqsim_fp8}  # fmt: skip


def _seqsim(A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
    directional = bool(names & {"seqsim_a2b", "seqsim_b2a"})  # the two directional terms, on request only
    result = jax.block_until_ready(SEQSIM_PATHS[context.seqsim_path](A, B, context, directional))
    if not directional:
        return {"seqsim": Scores(np.asarray(result))}
    return {name: Scores(np.asarray(x)) for name, x in zip(SEQSIM_MEASURES, result, strict=True)}


def _matrix(kernel) -> Callable:
    """The call of a kernel ``(states_a, lengths_a, states_b, lengths_b) -> f32[N_a, N_b]`` of one measure."""

    def call(A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
        (name,) = names
        return {name: Scores(np.asarray(kernel(A.states, A.lengths, B.states, B.lengths)))}

    return call


def _pooled(attribute: str) -> Callable:
    """The call of a pooled baseline: the cosines of the two sides' pooled vectors (``Side.means``, ``.centres``)."""

    def call(A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
        (name,) = names
        return {name: Scores(host_cosines(getattr(A, attribute), getattr(B, attribute)))}

    return call


def _duration(A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
    return {"duration": Scores(np.asarray(duration_similarity_matrix(*jax.device_put((A.lengths, B.lengths)))))}


def _ot(A: Side, B: Side, context: MeasureContext, names: frozenset[str]) -> dict[str, Scores]:
    result = ot_similarity_matrix(A.states, A.lengths, B.states, B.lengths, context.ot)
    fallback = 0 if result.fallback is None else int(np.asarray(result.fallback).sum())
    return {"ot": Scores(np.asarray(result.score), ~np.asarray(result.converged), fallback)}


SEQSIM = Kernel("seqsim", _seqsim, Cost("matmul"), exact_in_bins=True)
NEGLIGIBLE = Cost("negligible")
CELLS = Cost("cells")


def _registry(*measures: Measure) -> dict[str, Measure]:
    return {m.name: m for m in measures}


MEASURES: Mapping[str, Measure] = _registry(
    Measure("seqsim", SEQSIM),
    Measure("seqsim_a2b", SEQSIM),
    Measure("seqsim_b2a", SEQSIM),
    Measure("mean", Kernel("mean", _pooled("means"), NEGLIGIBLE)),
    Measure("centre", Kernel("centre", _pooled("centres"), NEGLIGIBLE)),
    Measure("duration", Kernel("duration", _duration, NEGLIGIBLE), dtype=None),
    Measure("dtw", Kernel("dtw", _matrix(dtw_similarity_matrix), CELLS)),
    # Other Sinkhorn options make another measure: the store records them (a run with others is refused), and so
    # does the done marker (a store written before the manifest recorded them: the matrix is recomputed).
    Measure("ot", Kernel("ot", _ot, CELLS), nan_scores=True, settings=lambda c: {"ot": dataclasses.asdict(c.ot)}),
)
SEQSIM_MEASURES = tuple(m.name for m in MEASURES.values() if m.kernel is SEQSIM)  # in the kernel's result order
NAN_MEASURES = frozenset(m.name for m in MEASURES.values() if m.nan_scores)  # may write NaN (not measured)

if tuple(MEASURES) != similarity_store.MEASURES:
    raise ImportError(
        f"the measure registry {tuple(MEASURES)} and the similarity store's names {similarity_store.MEASURES} differ: "
        "a measure is added in both (see this module's docstring)"
    )
if NAN_MEASURES != similarity_store.NAN_MEASURES:
    raise ImportError(f"the registry's nan_scores measures {sorted(NAN_MEASURES)} and the similarity store's "
                      f"NAN_MEASURES {sorted(similarity_store.NAN_MEASURES)} differ")  # fmt: skip


if tuple(sorted(FP8_SCALES)) != tuple(sorted(KERNEL_FP8_SCALES)):
    raise ImportError(f"--seqsim_fp8_scale's choices {FP8_SCALES} and kernels.seqsim_fp8.SCALES {KERNEL_FP8_SCALES} "
                      "differ")  # fmt: skip


def check_measure(name: str) -> Measure:
    """The registry entry of ``name``; ``SimilarityError`` naming the measures if there is none."""
    similarity_store.check_measure(name)
    return MEASURES[name]


def kernel_calls(names: Iterable[str]) -> list[tuple[Kernel, frozenset[str]]]:
    """The kernel calls that produce the measures ``names``, each once, with the names asked of it, in the order
    of ``names``."""
    calls: dict[str, tuple[Kernel, set[str]]] = {}
    for name in names:
        kernel = MEASURES[name].kernel
        calls.setdefault(kernel.name, (kernel, set()))[1].add(name)
    return [(kernel, frozenset(asked)) for kernel, asked in calls.values()]


def unscored(A: Side, B: Side, names: Iterable[str]) -> dict[str, Scores]:
    """Zeros of every measure of ``names`` for a pair with no done utterance on one side (nothing to score)."""
    shape = (len(A.index), len(B.index))
    return {
        name: Scores(np.zeros(shape, np.float32), np.zeros(shape, bool) if MEASURES[name].nan_scores else None)
        for name in names
    }


def nan_marker(measure: Measure, context: MeasureContext, scores: Scores, rows, cols) -> dict:
    """Done-marker fields of a ``nan_scores`` measure's matrix: its settings, ``nonconverged``, the [row, col]
    layer-store utterance indices of the pairs it could not measure (NaN in the matrix), and ``fallback``, how many
    pairs were finished by a fallback (``ot``: left float32 range in kernel mode, finished in the log domain; valid
    scores). ``rows``, ``cols``: the layer-store indices of the done utterances."""
    i, j = np.nonzero(scores.failed)
    return {
        **measure.marker_settings(context),
        "nonconverged": [[int(rows[a]), int(cols[b])] for a, b in zip(i, j, strict=True)],
        "fallback": int(scores.fallback),
    }
