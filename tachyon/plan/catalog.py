"""The accelerators `tachyon plan` knows by name: memory, HBM bandwidth, dense (no 2:4 sparsity) peak
matmul rates and the GPU-to-GPU link, each from its vendor datasheet (`source`). `create_gpu` picks one
by name and applies the user's overrides (`--memory-gib`, `--bandwidth-gbs`, ...); the planner and the
roofline read the result.

`memory_gib` is the total the driver reports (what the engine's `--gpu-memory-utilization` takes a share
of), a little below the datasheet's nominal figure (`nominal`): ECC and firmware keep the rest.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

__all__ = ["GPU_CATALOG", "GPUSpec", "create_gpu", "known_gpus"]

_H100 = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_A100 = (
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
)
_L40S = "https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413"
_L4 = "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet"
_A10 = (
    "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/datasheet-new/nvidia-a10-datasheet.pdf"
    " (A10G: AWS's A10 variant, https://aws.amazon.com/ec2/instance-types/g5/ ; no separate datasheet)"
)
_MI300X = (
    "https://www.amd.com/content/dam/amd/en/documents/instinct-tech-docs/data-sheets/amd-instinct-mi300x-data-sheet.pdf"
)
_B200 = "https://resources.nvidia.com/en-us-dgx-systems/dgx-b200-datasheet (per GPU: system figures / 8)"


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator. Rates are dense peaks in TFLOP/s (TOP/s for int8); 0 means no such tensor core
    (fp8 on Ampere): the planner then runs that scheme the way the engine does there."""

    name: str
    memory_gib: float  # total as reported by the driver
    bandwidth_gbs: float  # memory bandwidth, GB/s (1e9 bytes)
    bf16_tflops: float  # also fp16; on a measured CPU profile: the model dtype's matmul rate
    fp8_tflops: float = 0.0
    int8_tops: float = 0.0
    link_gbs: float = 0.0  # GPU-to-GPU bandwidth per direction used by all-reduce; 0: none (PCIe only)
    nominal: str = ""  # the datasheet's memory line
    source: str = ""  # where the figures come from

    def __post_init__(self) -> None:
        for name in ("memory_gib", "bandwidth_gbs", "bf16_tflops"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GPU {self.name}: {name} must be positive, got {getattr(self, name)}")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    @property
    def has_fp8(self) -> bool:
        return self.fp8_tflops > 0

    def peak_flops(self, matmul: str) -> float:
        """FLOP/s of the matmul kind a scheme runs ("bf16", "fp8" or "int8"); falls back to bf16."""
        rate = {"fp8": self.fp8_tflops, "int8": self.int8_tops}.get(matmul, 0.0) or self.bf16_tflops
        return rate * 1e12


GPU_CATALOG: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("H100-SXM", 79.6, 3350, 989.5, 1979, 1979, 450, "80 GB HBM3", _H100),
        GPUSpec("H100-PCIe", 79.6, 2000, 756.5, 1513, 1513, 300, "80 GB HBM2e (NVLink bridge 600 GB/s)", _H100),
        GPUSpec("H200", 140.4, 4800, 989.5, 1979, 1979, 450, "141 GB HBM3e", _H200),
        GPUSpec("A100-40GB", 39.4, 1555, 312, 0, 624, 300, "40 GB HBM2 (SXM)", _A100),
        GPUSpec("A100-80GB", 79.2, 2039, 312, 0, 624, 300, "80 GB HBM2e (SXM)", _A100),
        GPUSpec("L40S", 45.0, 864, 362.05, 733, 733, 0, "48 GB GDDR6 with ECC", _L40S),
        GPUSpec("L4", 22.5, 300, 121, 242.5, 242.5, 0, "24 GB GDDR6", _L4),
        GPUSpec("A10G", 22.5, 600, 125, 0, 250, 0, "24 GB GDDR6", _A10),
        GPUSpec("MI300X", 191.7, 5300, 1307.4, 2614.9, 2614.9, 448, "192 GB HBM3", _MI300X),
        GPUSpec("B200", 179.1, 8000, 2250, 4500, 4500, 900, "180 GB HBM3e", _B200),
    )
}


def known_gpus() -> list[str]:
    return list(GPU_CATALOG)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def create_gpu(name: str, **overrides: float | None) -> GPUSpec:
    """The catalog entry `name` (case, dashes and spaces ignored: "h100 sxm" works) with the given
    figures replaced (None: keep). `name` "custom" starts from nothing, so memory_gib, bandwidth_gbs and
    bf16_tflops must all be given."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if _key(name) == "custom":
        missing = [f for f in ("memory_gib", "bandwidth_gbs", "bf16_tflops") if f not in given]
        if missing:
            flags = ", ".join("--" + f.replace("_", "-").replace("bf16-", "") for f in missing)
            raise ValueError(f"--gpu custom needs {flags}")
        return GPUSpec(name="custom", source="user figures", **given)
    match = next((g for key, g in GPU_CATALOG.items() if _key(key) == _key(name)), None)
    if match is None:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPU_CATALOG)}, cpu (a calibrated profile), custom")
    return dataclasses.replace(match, **given) if given else match
