"""The accelerators ``--plan --plan_device`` estimates for: their published peak figures (no JAX here, so that a job's
flags can list them without loading it)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's published peak figures (dense, no sparsity)."""

    name: str
    flops_bf16: float  # FLOP/s, bfloat16/float16 matmuls
    flops_f32: float  # FLOP/s, float32 matmuls at JAX's default precision (TF32 on NVIDIA, bf16 passes on TPU)
    bandwidth: float  # bytes/s of device memory
    memory: float  # bytes of device memory

    def flops(self, dtype: str) -> float:
        return self.flops_f32 if dtype == "float32" else self.flops_bf16

    def describe(self) -> str:
        return (
            f"{self.name}: {self.flops_bf16 / 1e12:.0f} TFLOP/s bf16, {self.flops_f32 / 1e12:.0f} TFLOP/s f32 "
            f"(JAX default precision), {self.bandwidth / 1e12:.2f} TB/s, {self.memory / 2**30:.0f} GiB"
        )


DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM", 989e12, 494e12, 3.35e12, 80 * 2**30),
    "h200": Device("NVIDIA H200", 989e12, 494e12, 4.8e12, 141 * 2**30),
    "a100": Device("NVIDIA A100 80GB", 312e12, 156e12, 2.04e12, 80 * 2**30),
    "l4": Device("NVIDIA L4", 121e12, 60e12, 0.3e12, 24 * 2**30),
    "tpu-v4": Device("TPU v4 (one chip)", 275e12, 275e12, 1.2e12, 32 * 2**30),
    "tpu-v5e": Device("TPU v5e (one chip)", 197e12, 197e12, 0.82e12, 16 * 2**30),
    "tpu-v5p": Device("TPU v5p (one chip)", 459e12, 459e12, 2.76e12, 95 * 2**30),
    "tpu-v6e": Device("TPU v6e (one chip)", 918e12, 918e12, 1.64e12, 32 * 2**30),
}


def get_device(name: str | None) -> Device | None:
    if name is None or name == "":
        return None
    if name.lower() not in DEVICES:
        raise ValueError(f"--plan_device must be one of {', '.join(DEVICES)}, got {name!r}")
    return DEVICES[name.lower()]
