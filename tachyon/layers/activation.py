"""The SwiGLU gate: silu(gate) * up over the two halves of the fused gate_up projection's output."""

from __future__ import annotations

import torch
from torch import nn

from tachyon.layers.fused import fused_kernels


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2n] -> [..., n]; in half precision one fused kernel on CPU and CUDA (layers/fused.py)."""
    kernels = fused_kernels(gate_up, bit_exact=False)
    if kernels is not None:
        return kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up
