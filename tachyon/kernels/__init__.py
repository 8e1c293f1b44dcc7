"""Kernels: Triton (CUDA, or CPU under TRITON_INTERPRET=1) and native C++ (CPU), with their wrappers."""

import torch


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with unit stride along the last dim (a copy only when it must): the layout
    every row-wise kernel wrapper here hands its kernel."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()
