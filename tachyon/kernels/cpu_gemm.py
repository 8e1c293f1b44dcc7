"""The native GEMM of cpu_gemm.cpp for dense layers on AVX-512 CPUs: bf16 (with AVX512_BF16, on the AMX
tile unit where the CPU has one) and float32.

`pack` reorders a [out, in] weight once at load; `linear` then runs x @ W.T (+ bias) on it, in the
weight's dtype. Where the library did not build or the CPU lacks the instructions, `supports(dtype)` is
False and the dense layers keep oneDNN (tachyon/layers/linear.py). `extra_flags` build a variant (tests
take the vector path on an AMX CPU with -mno-amx-tile); a packed weight remembers the build it is for.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from tachyon.kernels import as_rows
from tachyon.kernels.cpu_elementwise import silu_table
from tachyon.kernels.native import DTYPE_FLAGS, load_native_library

_SOURCE = "cpu_gemm.cpp"


@functools.cache
def _library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    lib = load_native_library(_SOURCE, extra_flags)
    if lib is not None:
        ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        lib.tachyon_gemm_supports.argtypes, lib.tachyon_gemm_supports.restype = [i32], i32
        lib.tachyon_gemm_packed_size.argtypes, lib.tachyon_gemm_packed_size.restype = [i64, i64, i32], i64
        lib.tachyon_gemm_pack.argtypes, lib.tachyon_gemm_pack.restype = [ptr, i64, i64, i32, ptr], None
        lib.tachyon_gemm.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i32, i32]
        lib.tachyon_gemm.restype = None
        lib.tachyon_gemm_uses_amx.argtypes, lib.tachyon_gemm_uses_amx.restype = [], i32
        lib.tachyon_gemm_pack_halves.argtypes, lib.tachyon_gemm_pack_halves.restype = [ptr, i64, i64, ptr], i32
        lib.tachyon_gemm_halves.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, ptr, i32]
        lib.tachyon_gemm_halves.restype = None
    return lib


def supports(dtype: torch.dtype, extra_flags: tuple[str, ...] = ()) -> bool:
    """Whether this machine runs the kernel for `dtype` (it built, and the CPU has the instructions)."""
    lib = _library(extra_flags)
    return dtype in DTYPE_FLAGS and lib is not None and bool(lib.tachyon_gemm_supports(DTYPE_FLAGS[dtype]))


def uses_amx(dtype: torch.dtype, extra_flags: tuple[str, ...] = ()) -> bool:
    """Whether `dtype` runs on the AMX tile unit (bf16 on CPUs that have it), for the start-up log."""
    if dtype != torch.bfloat16 or not supports(dtype, extra_flags):
        return False
    return bool(_library(extra_flags).tachyon_gemm_uses_amx())


@dataclass(frozen=True)
class PackedWeight:
    data: torch.Tensor  # the kernel's panel layout (cpu_gemm.cpp), in the weight's dtype
    out_features: int
    in_features: int
    lib: ctypes.CDLL  # the build that packed it (the AMX and vector layouts differ)
    halves: bool = False  # gate and up paired panel by panel (`pack_halves`)


def pack(weight: torch.Tensor, extra_flags: tuple[str, ...] = ()) -> PackedWeight:
    """A bf16 or float32 CPU weight [out, in] in the kernel's layout (a copy; the caller may drop the original)."""
    weight = weight.detach().contiguous()
    n, k = weight.shape
    lib, flag = _library(extra_flags), DTYPE_FLAGS[weight.dtype]
    data = torch.empty(lib.tachyon_gemm_packed_size(n, k, flag), dtype=weight.dtype)
    lib.tachyon_gemm_pack(weight.data_ptr(), n, k, flag, data.data_ptr())
    return PackedWeight(data, n, k, lib)


def pack_halves(weight: torch.Tensor, extra_flags: tuple[str, ...] = ()) -> PackedWeight | None:
    """A bf16 gate/up weight [2 n, in] with gate and up columns paired in each panel, so that `silu_and_mul`
    is one pass; None where bf16 does not run on AMX or n is not a multiple of 16."""
    weight = weight.detach().contiguous()
    n, k = weight.shape
    if weight.dtype != torch.bfloat16 or n % 32 or not uses_amx(weight.dtype, extra_flags):
        return None
    lib = _library(extra_flags)
    data = torch.empty(lib.tachyon_gemm_packed_size(n, k, 1), dtype=weight.dtype)
    if not lib.tachyon_gemm_pack_halves(weight.data_ptr(), n // 2, k, data.data_ptr()):
        return None
    return PackedWeight(data, n, k, lib, halves=True)


def linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] -> [..., out] in the weight's dtype. Each row's result is the same bits whatever the batch."""
    rows = _rows(x, weight)
    out = torch.empty(*x.shape[:-1], weight.out_features, dtype=weight.data.dtype)
    if weight.halves:
        _halves(rows, weight, bias, out, None)
        return out
    weight.lib.tachyon_gemm(
        rows.data_ptr(), rows.stride(0), weight.data.data_ptr(), _address(bias), out.data_ptr(), weight.out_features,
        rows.shape[0], weight.out_features, weight.in_features, DTYPE_FLAGS[weight.data.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def silu_and_mul(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] -> SiLU(gate) * up [..., out / 2] on a `pack_halves` weight: the same bits as
    kernels.cpu_elementwise.silu_and_mul of `linear`'s output, without writing and reading that output."""
    rows = _rows(x, weight)
    out = torch.empty(*x.shape[:-1], weight.out_features // 2, dtype=weight.data.dtype)
    _halves(rows, weight, bias, out, _silu_floats())
    return out


def _rows(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    dtype = weight.data.dtype
    if x.shape[-1] != weight.in_features or x.dtype != dtype:
        raise ValueError(
            f"input {x.dtype} with {x.shape[-1]} features; the layer takes {dtype} with {weight.in_features}"
        )
    return as_rows(x)


def _address(bias: torch.Tensor | None) -> int | None:
    return None if bias is None else bias.contiguous().data_ptr()


def _halves(rows, weight: PackedWeight, bias, out: torch.Tensor, silu: torch.Tensor | None) -> None:
    weight.lib.tachyon_gemm_halves(
        rows.data_ptr(), rows.stride(0), weight.data.data_ptr(), _address(bias), out.data_ptr(), out.shape[-1],
        rows.shape[0], weight.out_features // 2, weight.in_features, None if silu is None else silu.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip


@functools.cache
def _silu_floats() -> torch.Tensor:
    """cpu_elementwise's SiLU table widened to float32, which the kernel gathers."""
    return silu_table().float()
