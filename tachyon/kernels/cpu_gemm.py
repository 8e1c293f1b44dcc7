"""The native bf16 GEMM of cpu_gemm.cpp, for dense layers on CPUs with AVX512_BF16.

`pack` reorders a [out, in] weight once at load; `linear` then runs x @ W.T (+ bias) on it. Where the
library did not build or the CPU lacks AVX512_BF16, `supported()` is False and the dense layers keep
oneDNN (tachyon/layers/linear.py).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from tachyon.kernels.native import load_native_library

_SOURCE = "cpu_gemm.cpp"


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = load_native_library(_SOURCE)
    if lib is not None:
        ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        lib.tachyon_gemm_supported.argtypes, lib.tachyon_gemm_supported.restype = [], i32
        lib.tachyon_gemm_packed_size.argtypes, lib.tachyon_gemm_packed_size.restype = [i64, i64], i64
        lib.tachyon_gemm_pack.argtypes, lib.tachyon_gemm_pack.restype = [ptr, i64, i64, ptr], None
        lib.tachyon_gemm.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, i32]
        lib.tachyon_gemm.restype = None
    return lib


def supported() -> bool:
    """Whether this machine runs the kernel (it built, and the CPU has AVX512_BF16)."""
    lib = _library()
    return lib is not None and bool(lib.tachyon_gemm_supported())


@dataclass(frozen=True)
class PackedWeight:
    data: torch.Tensor  # bf16, the kernel's panel layout (cpu_gemm.cpp)
    out_features: int
    in_features: int


def pack(weight: torch.Tensor) -> PackedWeight:
    """A bf16 CPU weight [out, in] in the kernel's layout (a copy; the caller may drop the original)."""
    weight = weight.detach().contiguous()
    n, k = weight.shape
    lib = _library()
    data = torch.empty(lib.tachyon_gemm_packed_size(n, k), dtype=torch.bfloat16)
    lib.tachyon_gemm_pack(weight.data_ptr(), n, k, data.data_ptr())
    return PackedWeight(data, n, k)


def linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] bf16 -> [..., out] bf16. Each row's result is the same bits whatever the batch."""
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer takes {weight.in_features}")
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(*x.shape[:-1], weight.out_features, dtype=torch.bfloat16)
    bias_ptr = None if bias is None else bias.contiguous().data_ptr()
    _library().tachyon_gemm(
        rows.data_ptr(), rows.stride(0), weight.data.data_ptr(), bias_ptr, out.data_ptr(), weight.out_features,
        rows.shape[0], weight.out_features, weight.in_features, torch.get_num_threads(),
    )  # fmt: skip
    return out
