"""Where this package's Triton kernels run: CUDA, or CPU tensors in Triton's interpreter (the tests)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _probe():
    pass


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter on CPU tensors.

    Fixed when triton is first imported: TRITON_INTERPRET=1 must be set before then, since
    triton.language's own helpers (tl.zeros, tl.sum, ...) are compiled-or-interpreted from that point.
    """
    jit = triton.runtime.JITFunction
    return not isinstance(tl.zeros, jit) and not isinstance(_probe, jit)


def check_device(t: torch.Tensor, kernel: str) -> None:
    """A clear error for tensors the Triton kernel `kernel` cannot run on here."""
    if t.device.type != "cuda" and not interpreted():
        raise RuntimeError(
            f"{kernel} got {t.device} tensors: it needs CUDA, or TRITON_INTERPRET=1 set before triton is first imported"
        )
