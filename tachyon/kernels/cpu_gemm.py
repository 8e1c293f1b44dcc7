"""The native GEMM of cpu_gemm.cpp for dense layers on AVX-512 CPUs: bf16 (with AVX512_BF16) and float32.

`pack` reorders a [out, in] weight once at load; `linear` then runs x @ W.T (+ bias) on it, in the
weight's dtype. Where the library did not build or the CPU lacks the instructions, `supports(dtype)` is
False and the dense layers keep oneDNN (tachyon/layers/linear.py).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from tachyon.kernels import as_rows
from tachyon.kernels.native import DTYPE_FLAGS, load_native_library

_SOURCE = "cpu_gemm.cpp"


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = load_native_library(_SOURCE)
    if lib is not None:
        ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        lib.tachyon_gemm_supports.argtypes, lib.tachyon_gemm_supports.restype = [i32], i32
        lib.tachyon_gemm_packed_size.argtypes, lib.tachyon_gemm_packed_size.restype = [i64, i64, i32], i64
        lib.tachyon_gemm_pack.argtypes, lib.tachyon_gemm_pack.restype = [ptr, i64, i64, i32, ptr], None
        lib.tachyon_gemm.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i32, i32]
        lib.tachyon_gemm.restype = None
    return lib


def supports(dtype: torch.dtype) -> bool:
    """Whether this machine runs the kernel for `dtype` (it built, and the CPU has the instructions)."""
    lib = _library()
    return dtype in DTYPE_FLAGS and lib is not None and bool(lib.tachyon_gemm_supports(DTYPE_FLAGS[dtype]))


@dataclass(frozen=True)
class PackedWeight:
    data: torch.Tensor  # the kernel's panel layout (cpu_gemm.cpp), in the weight's dtype
    out_features: int
    in_features: int


def pack(weight: torch.Tensor) -> PackedWeight:
    """A bf16 or float32 CPU weight [out, in] in the kernel's layout (a copy; the caller may drop the original)."""
    weight = weight.detach().contiguous()
    n, k = weight.shape
    lib, flag = _library(), DTYPE_FLAGS[weight.dtype]
    data = torch.empty(lib.tachyon_gemm_packed_size(n, k, flag), dtype=weight.dtype)
    lib.tachyon_gemm_pack(weight.data_ptr(), n, k, flag, data.data_ptr())
    return PackedWeight(data, n, k)


def linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] -> [..., out] in the weight's dtype. Each row's result is the same bits whatever the batch."""
    dtype = weight.data.dtype
    if x.shape[-1] != weight.in_features or x.dtype != dtype:
        raise ValueError(
            f"input {x.dtype} with {x.shape[-1]} features; the layer takes {dtype} with {weight.in_features}"
        )
    rows = as_rows(x)
    out = torch.empty(*x.shape[:-1], weight.out_features, dtype=dtype)
    bias_ptr = None if bias is None else bias.contiguous().data_ptr()
    _library().tachyon_gemm(
        rows.data_ptr(), rows.stride(0), weight.data.data_ptr(), bias_ptr, out.data_ptr(), weight.out_features,
        rows.shape[0], weight.out_features, weight.in_features, DTYPE_FLAGS[dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out
