"""The accelerators ``--plan --plan_device`` estimates for: their published peak figures (no JAX here, so that a job's
flags can list them without loading it)."""

from __future__ import annotations

import dataclasses

ASSUMED_EFFICIENCY = 0.4  # of the peak FLOP/s, for the encoder and seqsim where no measurement says otherwise


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's published peak figures (dense, no sparsity), and what fraction of them babelgrid's stages reached
    where they were measured (``measured`` says where; elsewhere ``ASSUMED_EFFICIENCY``)."""

    name: str
    flops_bf16: float  # FLOP/s, bfloat16/float16 matmuls
    flops_f32: float  # FLOP/s, float32 matmuls at JAX's default precision (TF32 on NVIDIA, bf16 passes on TPU)
    bandwidth: float  # bytes/s of device memory
    memory: float  # bytes of device memory
    flops_f32_full: float = 0.0  # FLOP/s, full float32 (--matmul_precision highest, the jobs' default); 0: flops_f32
    encoder_efficiency: float = ASSUMED_EFFICIENCY  # model FLOP/s over peak: an encoder returning every layer
    seqsim_efficiency: float = ASSUMED_EFFICIENCY  # the seqsim XLA blocks' counted FLOP/s over peak
    host_link: float | None = None  # bytes/s copied device -> host as the encode job copies its states, if measured
    measured: str = ""  # where the figures above were measured ("" = assumed)
    # Per SeqSim path (blocks, packed, pallas, fp8): FLOP/s as that path computes them (padding included,
    # engine.pipelines.seqsim.computed) over the peak of its products (fp8: the e4m3 peak), where measured.
    seqsim_paths: dict = dataclasses.field(default_factory=dict)

    def seqsim_efficiency_of(self, path: str) -> float:
        """The fraction of peak ``path`` reached where measured; else the blocks' (``seqsim_efficiency``)."""
        return self.seqsim_paths.get(path, self.seqsim_efficiency)

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s of ``dtype`` products as the jobs run them: float32 at ``--matmul_precision highest`` (their
        default) is full float32, about a seventh of the TF32 rate on NVIDIA and six bf16 passes on TPUs. A run at
        ``default`` goes faster than planned."""
        if dtype != "float32":
            return self.flops_bf16
        return self.flops_f32_full or self.flops_f32

    def _seqsim_fractions(self) -> str:
        if not self.seqsim_paths:
            return f"{self.seqsim_efficiency:.0%}"
        return ", ".join(f"{eff:.0%} ({path})" for path, eff in self.seqsim_paths.items())

    def describe(self) -> str:
        head = (
            f"{self.name}: {self.flops_bf16 / 1e12:.0f} TFLOP/s bf16, {self.flops('float32') / 1e12:.0f} TFLOP/s f32 "
            f"(--matmul_precision highest; {self.flops_f32 / 1e12:.0f} at default), {self.bandwidth / 1e12:.2f} TB/s, "
            f"{self.memory / 2**30:.0f} GiB"
        )
        link = "" if self.host_link is None else f", states copied to the host at {self.host_link / 1e9:.1f} GB/s"
        return (
            f"{head}; encoder at {self.encoder_efficiency:.0%} and seqsim at {self._seqsim_fractions()} of peak"
            f"{link} ({self.measured or 'assumed, not measured'})"
        )


# Measured on lent devices (bench/RESULTS.md, "GPU: NVIDIA H100 and H200, 2026-11-28", and "GPU: NVIDIA H200",
# 2026-11-26), against published dense peaks of 989 TFLOP/s bf16 and 1979 e4m3 (JAX's own 8192-cube bf16 product
# reached 658 on the H100 and 645 on the H200, full float32 51 of 67):
# - large-v3's encoder in bf16 returning all 34 layers, with cuDNN's fused attention (the GPU default): 416 TFLOP/s
#   on the H100, 419 on the H200 (with einsum attention 198 and 221);
# - SeqSim at d 1280 on FLEURS-shaped lengths, per FLOP as each path computes them: the XLA blocks 183 TFLOP/s, packed
#   bins 95, the fused Pallas kernel 334, fp8 packed bins 117 (H100; the H200's run of them did not finish in its
#   step); the blocks reached 186 on the H200 on 400 x 400 utterances of 400-500 frames;
# - every layer copied into pinned host memory, the encode job's path: 20.6 GB/s (H100), 19.2 GB/s (H200).
# The two are the same chip (GH100) with different memory: the H200 takes the H100's SeqSim paths.
_H100_SEQSIM = {"blocks": 183 / 989, "packed": 95 / 989, "pallas": 334 / 989, "fp8": 117 / 1979}
_TPU_FULL_F32 = 1 / 6  # "highest" float32 on a TPU: six bf16 passes

DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM", 989e12, 494e12, 3.35e12, 80 * 2**30, 67e12, encoder_efficiency=416 / 989,
                   seqsim_efficiency=183 / 989, host_link=20.6e9, seqsim_paths=_H100_SEQSIM,
                   measured="measured on an H100, 2026-11-28"),
    "h200": Device("NVIDIA H200", 989e12, 494e12, 4.8e12, 141 * 2**30, 67e12, encoder_efficiency=419 / 989,
                   seqsim_efficiency=186 / 989, host_link=19.2e9, seqsim_paths={**_H100_SEQSIM, "blocks": 186 / 989},
                   measured="measured on an H200, 2026-11-26 and -28; packed, Pallas and fp8 SeqSim on an H100"),
    "a100": Device("NVIDIA A100 80GB", 312e12, 156e12, 2.04e12, 80 * 2**30, 19.5e12),
    "l4": Device("NVIDIA L4", 121e12, 60e12, 0.3e12, 24 * 2**30, 30.3e12),
    "tpu-v4": Device("TPU v4 (one chip)", 275e12, 275e12, 1.2e12, 32 * 2**30, 275e12 * _TPU_FULL_F32),
    "tpu-v5e": Device("TPU v5e (one chip)", 197e12, 197e12, 0.82e12, 16 * 2**30, 197e12 * _TPU_FULL_F32),
    "tpu-v5p": Device("TPU v5p (one chip)", 459e12, 459e12, 2.76e12, 95 * 2**30, 459e12 * _TPU_FULL_F32),
    "tpu-v6e": Device("TPU v6e (one chip)", 918e12, 918e12, 1.64e12, 32 * 2**30, 918e12 * _TPU_FULL_F32),
}  # fmt: skip


def get_device(name: str | None) -> Device | None:
    if name is None or name == "":
        return None
    if name.lower() not in DEVICES:
        raise ValueError(f"--plan_device must be one of {', '.join(DEVICES)}, got {name!r}")
    return DEVICES[name.lower()]
