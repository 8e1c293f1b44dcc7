"""Which fused elementwise kernels (RMSNorm + residual, rotary, SiLU-and-mul) serve a tensor: the native
ones on CPU (kernels/cpu_elementwise), the Triton ones on CUDA (kernels/fused_elementwise), or none, and
then the layers run their PyTorch ops (other devices or dtypes, no C++ compiler, no triton).

float32 is the reference precision: there every layer must compute exactly as HF transformers does, so
kernels that sum or approximate in another order than PyTorch (RMSNorm's sum of squares, SiLU's exp:
last-bit differences, which 8-bit activation quantization turns into whole-step flips) serve only
half-precision tensors. Rotary rounds exactly as PyTorch does and serves float32 too."""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch

from tachyon.kernels import cpu_elementwise

logger = logging.getLogger(__name__)


@functools.cache
def _triton_kernels() -> ModuleType | None:
    try:
        from tachyon.kernels import fused_elementwise
    except ImportError as e:
        logger.warning("no fused elementwise kernels on CUDA (%s): norms, rotary and SiLU run as PyTorch ops", e)
        return None
    return fused_elementwise


def fused_kernels(x: torch.Tensor, bit_exact: bool) -> ModuleType | None:
    """The kernels for x, or None for PyTorch ops. `bit_exact`: whether the kernel the caller wants rounds
    exactly as PyTorch does (else it is not used for float32)."""
    if not bit_exact and x.dtype == torch.float32:
        return None
    if x.is_cuda:
        return _triton_kernels()
    return cpu_elementwise if cpu_elementwise.supports(x) else None


def describe(dtype: torch.dtype, device: torch.device) -> str:
    """For the start-up log: what runs RMSNorm / SiLU-and-mul and rotary for this dtype and device."""
    probe = torch.empty(0, dtype=dtype, device=device)

    def name(kernels: ModuleType | None) -> str:
        return {cpu_elementwise: "native kernel", None: "PyTorch ops"}.get(kernels, "Triton kernel")

    return (
        f"RMSNorm and SiLU-and-mul: {name(fused_kernels(probe, bit_exact=False))}; "
        f"rotary: {name(fused_kernels(probe, bit_exact=True))}"
        + (" (float32: only bit-exact kernels)" if dtype == torch.float32 else "")
    )
