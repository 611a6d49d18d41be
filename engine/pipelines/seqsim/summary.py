"""What one process of a seqsim run did: its counts, the states it held against the budget, the summary line."""

from __future__ import annotations

import dataclasses

from engine.runtime.plan import size
from engine.runtime.runs import RunSummary


@dataclasses.dataclass
class SimilaritySummary(RunSummary):
    already_done: int = 0  # (pair, layer) whose every measure was complete and skipped
    pair_layers: int = 0  # (pair, layer) completed by this process: written whole, or committed from its blocks
    matrices: int = 0  # (measure, pair, layer) matrices written
    blocks: int = 0  # blocks of split pairs this process scored and staged
    seqsim_flops: float = 0.0  # 2 * sum(len_a) * sum(len_b) * embed per pair-layer
    seqsim_seconds: float = 0.0  # kernel time, device synchronised, compilation included
    ot_pairs: int = 0  # utterance pairs scored by the ot measure
    ot_nonconverged: int = 0  # of those, pairs whose Sinkhorn did not converge (NaN in the store)
    ot_fallback: int = 0  # of those, pairs finished in the log domain after kernel mode left float32 range
    budget: int = 0  # bytes of states this process may hold (engine.runtime.budget)
    budget_source: str = ""
    peak_held: int = 0  # the most bytes of states it held at once (its own count: tiling.tiles.HeldStates)
    reads: dict[str, float] = dataclasses.field(default_factory=dict)  # language -> reads of its whole size
    transform: str = ""  # --remove_language and --dimensions, those not none (run.transform_label)
    precision: str = ""  # --seqsim_precision fp8: its scale, and whether the device multiplies e4m3 or emulates it
    transform_seconds: float = 0.0  # fitting (or reading back) its per-layer transforms

    @property
    def gflops(self) -> float:
        return self.seqsim_flops / max(self.seqsim_seconds, 1e-9) / 1e9

    def report(self) -> str:
        line = (
            f"computed {self.pair_layers} pair-layers ({self.matrices} matrices) in {self.seconds:.1f} s; "
            f"{self.already_done} pair-layers already complete"
        )
        if self.blocks:
            line += f"; {self.blocks} blocks of split pairs"
        line += f"; busy {self.busy_seconds:.1f} s, {self.units} units"
        line += f", {self.taken_over} taken over from other processes (claims expired, or holder dead)"
        if self.compiles:
            line += (f"; kernels: {self.compile_seconds:.1f} s of the busy time tracing and compiling {self.compiles} "
                     f"({self.cache_hits} from the compilation cache)")  # fmt: skip
        if self.seqsim_flops:
            line += f"; seqsim {self.seqsim_flops / 1e9:.2f} GFLOP at {self.gflops:.2f} GFLOP/s"
            if self.precision:
                line += f" ({self.precision})"
        if self.budget:
            line += f"; states held: peak {size(self.peak_held)} of a {size(self.budget)} budget ({self.budget_source})"
        if self.reads:
            reads = list(self.reads.values())
            line += f", each language read {sum(reads) / len(reads):.2f} times on average (at most {max(reads):.2f})"
        if self.transform:
            line += f"; states transformed ({self.transform}; fitted in {self.transform_seconds:.1f} s)"
        if self.ot_nonconverged:
            line += (
                f"; ot: {self.ot_nonconverged} of {self.ot_pairs} pairs did not converge (NaN in the store, listed "
                "as 'nonconverged' in the done markers): raise --ot_iterations or --ot_epsilon, or --ot_threshold"
            )
        if self.ot_fallback:
            line += (
                f"; ot: {self.ot_fallback} of {self.ot_pairs} pairs left float32 range in kernel mode and were "
                "finished in the log domain (counted as 'fallback' in the done markers; their scores are valid)"
            )
        return line
