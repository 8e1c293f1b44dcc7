"""The fused CPU elementwise layers of cpu_elementwise.cpp: RMSNorm (+ residual), rotary, SiLU-and-mul;
and the greedy argmax over logit rows.

The layers call `supports(x)` and take these for float32/bfloat16 CPU tensors when the library built,
PyTorch otherwise (other devices and dtypes, or no compiler: native.py has said why).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from tachyon.kernels import as_rows
from tachyon.kernels.native import DTYPE_FLAGS, load_native_library

_SOURCE = "cpu_elementwise.cpp"


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = load_native_library(_SOURCE, ("-ffp-contract=off",))
    if lib is not None:
        ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
        lib.tachyon_rms_norm.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i32, f32, i32, i32]
        lib.tachyon_silu_and_mul.argtypes = [ptr, i64, ptr, i64, i32, ptr, i32, i32]
        lib.tachyon_rotary.argtypes = [ptr, i64, ptr, i32, ptr, i64, ptr, i32, ptr, ptr, ptr, i64, i32, i32, i32]
        lib.tachyon_argmax.argtypes = [ptr, i64, ptr, i64, i64, i32, i32]
        for fn in (lib.tachyon_rms_norm, lib.tachyon_silu_and_mul, lib.tachyon_rotary, lib.tachyon_argmax):
            fn.restype = None
    return lib


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in DTYPE_FLAGS and _library() is not None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with `residual`, (norm(x + residual), x + residual)."""
    rows = as_rows(x)
    out = torch.empty(x.shape, dtype=x.dtype)
    summed = None
    if residual is not None:
        residual = residual.contiguous()
        summed = torch.empty(x.shape, dtype=x.dtype)
    _library().tachyon_rms_norm(
        rows.data_ptr(), rows.stride(0), None if residual is None else residual.data_ptr(),
        weight.contiguous().data_ptr(), out.data_ptr(), None if summed is None else summed.data_ptr(),
        rows.shape[0], rows.shape[1], eps, DTYPE_FLAGS[x.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out if residual is None else (out, summed)


@functools.cache
def silu_table() -> torch.Tensor:
    """PyTorch's silu of every bf16 value, indexed by its bits: the bf16 kernel looks silu up here."""
    every_bf16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)
    return torch.nn.functional.silu(every_bf16)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2 * n] -> silu(first half) * second half, [..., n]"""
    rows = as_rows(gate_up)
    size = rows.shape[1] // 2
    out = torch.empty(*gate_up.shape[:-1], size, dtype=gate_up.dtype)
    table = silu_table().data_ptr() if gate_up.dtype == torch.bfloat16 else None
    _library().tachyon_silu_and_mul(
        rows.data_ptr(), rows.stride(0), out.data_ptr(), rows.shape[0], size, table, DTYPE_FLAGS[gate_up.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def rotary(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k [T, H_kv, D] rotated by the float32 tables cos/sin [P, D] at `positions` [T]."""
    if q.stride(-1) != 1 or q.stride(1) != q.shape[-1]:
        q = q.contiguous()
    if k.stride(-1) != 1 or k.stride(1) != k.shape[-1]:
        k = k.contiguous()
    positions = positions.to(torch.int64).contiguous()
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype), torch.empty(k.shape, dtype=k.dtype)
    _library().tachyon_rotary(
        q.data_ptr(), q.stride(0), q_out.data_ptr(), q.shape[1], k.data_ptr(), k.stride(0), k_out.data_ptr(),
        k.shape[1], positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.shape[0], q.shape[2],
        DTYPE_FLAGS[q.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return q_out, k_out


def argmax(x: torch.Tensor) -> torch.Tensor:
    """[rows, n] -> int64 [rows]: the first maximum of each row (a NaN counts as the maximum), as
    torch.argmax(-1) returns it."""
    rows = as_rows(x)
    out = torch.empty(rows.shape[0], dtype=torch.int64)
    _library().tachyon_argmax(
        rows.data_ptr(), rows.stride(0), out.data_ptr(), rows.shape[0], rows.shape[1], DTYPE_FLAGS[x.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    return out
