"""The seqsim job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses
import re

from engine.runtime.options import RunOptions, option, validate
from engine.stores.similarity import MEASURES, SimilarityError, check_measure
from kernels.settings import OtConfig

DEFAULT_MEASURES = ("seqsim", "mean", "centre", "duration")


def parse_kind(text: str) -> tuple[str, int]:
    """``--remove_language``: ``none`` | ``mean`` | ``lda:K`` -> (kind, K), K 0 but for lda; a ValueError says what is
    accepted."""
    match = re.fullmatch(r"(none|mean)|lda:([1-9][0-9]*)", text.strip())
    if not match:
        raise ValueError(f"remove_language is none, mean or lda:K with K >= 1 directions, got {text!r}")
    return (match.group(1), 0) if match.group(1) else ("lda", int(match.group(2)))


def parse_dimensions(text: str) -> tuple[str, int]:
    """``--dimensions``: ``none`` | ``standardise`` | ``drop:K`` -> (kind, K), K 0 but for drop; a ValueError says what
    is accepted."""
    match = re.fullmatch(r"(none|standardise)|drop:([1-9][0-9]*)", text.strip())
    if not match:
        raise ValueError(f"dimensions is none, standardise or drop:K with K >= 1 dimensions, got {text!r}")
    return (match.group(1), 0) if match.group(1) else ("drop", int(match.group(2)))


COMPUTE_DTYPES = ("float32", "bfloat16")
# How SeqSim is computed (engine.pipelines.seqsim.measures.SEQSIM_PATHS): auto = packed bins on one device (every
# platform), blocks over the devices when there are several. The paths differ in the order of float32 sums only.
SEQSIM_KERNELS = ("auto", "blocks", "packed", "pallas")
# What SeqSim's frame-similarity GEMM multiplies (issue 80, item 3): "dtype" = the states in the run's --dtype
# (float32 or bfloat16, as before the option), "fp8" = unit frames rounded once to float8 e4m3, multiplied with float32
# accumulation (kernels.seqsim_fp8: an opt-in, never the default). Its own option, neither a --seqsim_kernel nor a
# --dtype: the kernels are not recorded (they differ in the last bits only, and a resume may switch), while fp8 moves
# scores by up to 0.0035 and is recorded in the manifest; --dtype is what every measure reads and holds the states in
# (mean, centre, dtw, ot too), while fp8 changes SeqSim's products only, from frames read in --dtype.
SEQSIM_PRECISIONS = ("dtype", "fp8")
# kernels.seqsim_fp8.SCALES (checked against it in engine.pipelines.seqsim.measures: this module loads no JAX)
FP8_SCALES = ("tensor", "frame", "none")


@dataclasses.dataclass(frozen=True)
class SimilarityConfig:
    """``run.out``: the similarity store to write (``engine.runtime.options.RunOptions``). ``seqsim_precision`` and
    ``seqsim_fp8_scale``: the 8-bit SeqSim opt-in, an option of its own (``SEQSIM_PRECISIONS`` says why)."""

    store: str = option(help="layer store written by the encode job: local path or TensorStore kvstore URL",
                        required=True, reads=True)  # fmt: skip
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the layer store, or 'all'", parse="list"
    )
    layers: tuple[int, ...] | None = option(
        None, "layers to compare: 'all' stored, a list '0,3,7' or ranges '1-4'", parse="layers"
    )
    pairs: str = option("unordered", "unordered | ordered | list of a:b with '*' for every other language")
    measures: tuple[str, ...] = option(
        DEFAULT_MEASURES, f"comma list of {', '.join(MEASURES)}", parse="list", flag="measure"
    )
    dtype: str = option("float32", "dtype the states are compared in", choices=COMPUTE_DTYPES)
    seqsim_kernel: str = option(
        "auto", "how SeqSim is computed: auto (the fused Pallas kernel on one H100/H200, where it measured 3x "
        "packed; packed bins of valid frames on any other single device; blocks sharded over several), blocks "
        "(padded to each language's longest), packed, pallas (the fused kernel; interpret mode on CPU, slow). "
        "Scores differ in the last bits only",
        choices=SEQSIM_KERNELS,
    )  # fmt: skip
    seqsim_precision: str = option(
        "dtype", "what SeqSim multiplies: dtype (the states in --dtype, the default) or fp8 (unit frames rounded to "
        "float8 e4m3, float32 accumulation; opt-in: on H100/H200 tensor cores 1.2x the bf16 packed bins as "
        "measured, emulated with no speed-up elsewhere, CPU included; changes the top-1 of 12 of 1,600 queries "
        "against bf16 on real states, bench/RESULTS.md). Recorded in the output: a resume must give the same",
        choices=SEQSIM_PRECISIONS,
    )  # fmt: skip
    seqsim_fp8_scale: str = option(
        "tensor", "with --seqsim_precision fp8: the power of two unit frames are scaled by before rounding: tensor "
        "(a fixed 2**8), frame (each frame's largest component into (224, 448]) or none (kernels/seqsim_fp8.py); "
        "recorded with it",
        choices=FP8_SCALES,
    )  # fmt: skip
    allow_partial: bool = option(False, "score a partly encoded layer store (done utterances only)")
    unit_gflops: float | None = option(
        None,
        "GFLOP a work unit aims at: smaller pairs are grouped up to it, larger SeqSim pairs split into blocks of "
        "utterances (default: the run's FLOPs over a few dozen units per process, "
        "engine.pipelines.seqsim.tiling.tiles)",
        positive=True,
    )
    remove_language: str = option(
        "none", "none | mean | lda:K: each language's mean state, or the top K directions separating the languages, "
        "removed before every measure (fitted per layer over the run's languages; docs/similarity.md)",
    )  # fmt: skip
    dimensions: str = option(
        "none", "none | standardise | drop:K: every dimension standardised (its mean subtracted, divided by its "
        "standard deviation), or the K dimensions of the largest mean magnitude set to 0, before every measure "
        "(fitted per layer over the run's languages, after --remove_language; docs/outliers.md)",
    )  # fmt: skip
    ot: OtConfig = OtConfig()  # Sinkhorn options of the ``ot`` measure (epsilon in units of 1 - cos): --ot_* flags
    run: RunOptions = RunOptions()

    @property
    def removal(self) -> tuple[str, int]:
        """``--remove_language`` as (kind, K), K 0 but for lda (``parse_kind``)."""
        return parse_kind(self.remove_language)

    @property
    def dimension_kind(self) -> tuple[str, int]:
        """``--dimensions`` as (kind, K), K 0 but for drop (``parse_dimensions``)."""
        return parse_dimensions(self.dimensions)

    def __post_init__(self):
        validate(self)
        if not self.measures:
            raise SimilarityError(f"measures must name at least one of {', '.join(MEASURES)}")
        for m in self.measures:
            check_measure(m)
        if not self.run.out:
            raise SimilarityError("seqsim needs a similarity store to write: run.out (--out)")
        try:
            kind, k = parse_kind(self.remove_language)
            dims, n_dims = parse_dimensions(self.dimensions)
        except ValueError as e:
            raise SimilarityError(str(e)) from None
        if self.seqsim_precision == "fp8" and self.seqsim_kernel not in ("auto", "packed"):
            raise SimilarityError(
                f"--seqsim_precision fp8 scores by its own packed bins (kernels/seqsim_fp8.py), not by the "
                f"{self.seqsim_kernel} kernel: leave --seqsim_kernel at auto (or packed)"
            )
        if self.seqsim_precision != "fp8" and self.seqsim_fp8_scale != FP8_SCALES[0]:
            raise SimilarityError(
                f"--seqsim_fp8_scale {self.seqsim_fp8_scale} scales fp8 frames: it applies with --seqsim_precision fp8 "
                "only (this run multiplies in --dtype)"
            )
        # As the store records it: " mean" and "lda:03" are "mean" and "lda:3" (a resume that gives them otherwise
        # is the same run)
        object.__setattr__(self, "remove_language", f"lda:{k}" if kind == "lda" else kind)
        object.__setattr__(self, "dimensions", f"drop:{n_dims}" if dims == "drop" else dims)
