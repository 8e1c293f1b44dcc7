"""Triton kernels for the decoder's elementwise layers on CUDA: RMSNorm with its residual add, rotary
embedding, SiLU-and-mul. One launch each, where PyTorch launches four to twelve small kernels; in a
batch-1 decode those launches, not bytes, are what the layers cost (even inside a CUDA graph every
kernel pays its scheduling latency).

They round where PyTorch (and HF transformers) round: to the dtype after every op a tensor op would
store, a * b + c as two roundings (launched with enable_fp_fusion=False). Rotary is therefore
bit-identical; RMSNorm's sum and SiLU's exp may differ in the last bits of a float32. The CPU
counterparts are in cpu_elementwise.cpp; tests run these on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tachyon.kernels import as_rows
from tachyon.kernels.triton_runtime import check_device

_SILU_BLOCK = 1024


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, stride_x, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    dtype = out_ptr.dtype.element_ty
    s = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = (s + tl.load(residual_ptr + row * hidden + offs, mask=mask, other=0.0).to(tl.float32)).to(dtype)
        tl.store(residual_out_ptr + row * hidden + offs, s, mask=mask)
        s = s.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt_rn(tl.sum(s * s, axis=0) / hidden + eps)
    y = (s * inv_rms).to(dtype).to(tl.float32)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * hidden + offs, (weight * y).to(dtype), mask=mask)


@triton.jit
def _rotate(x_ptr, out_ptr, stride_t, stride_h, t, c1, c2, s1, s2,
            NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr):  # fmt: skip
    """out[t] = x[t] * cos + rotate_half(x[t]) * sin over all heads, rounding like PyTorch's ops."""
    dtype = out_ptr.dtype.element_ty
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF_PAD)[None, :]
    mask = (h < NUM_HEADS) & (d < HALF)
    src = x_ptr + t * stride_t + h * stride_h + d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = (x1 * c1).to(dtype).to(tl.float32) + (-x2 * s1).to(dtype).to(tl.float32)
    o2 = (x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)
    dst = out_ptr + (t * NUM_HEADS + h) * (2 * HALF) + d
    tl.store(dst, o1.to(dtype), mask=mask)
    tl.store(dst + HALF, o2.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh,
    Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    dtype = q_out_ptr.dtype.element_ty
    d = tl.arange(0, HALF_PAD)[None, :]
    table = tl.load(positions_ptr + t).to(tl.int64) * (2 * HALF) + d
    # the float32 tables cast to the dtype first, as HF's cos.to(x.dtype)
    c1 = tl.load(cos_ptr + table, mask=d < HALF, other=0.0).to(dtype).to(tl.float32)
    c2 = tl.load(cos_ptr + table + HALF, mask=d < HALF, other=0.0).to(dtype).to(tl.float32)
    s1 = tl.load(sin_ptr + table, mask=d < HALF, other=0.0).to(dtype).to(tl.float32)
    s2 = tl.load(sin_ptr + table + HALF, mask=d < HALF, other=0.0).to(dtype).to(tl.float32)
    _rotate(q_ptr, q_out_ptr, stride_qt, stride_qh, t, c1, c2, s1, s2, Q_HEADS, Q_HEADS_PAD, HALF, HALF_PAD)
    _rotate(k_ptr, k_out_ptr, stride_kt, stride_kh, t, c1, c2, s1, s2, K_HEADS, K_HEADS_PAD, HALF, HALF_PAD)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, size, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < size
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + size + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * size + cols, (silu * up).to(dtype), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with `residual`, (norm(x + residual), x + residual)."""
    check_device(x, "the Triton RMSNorm")
    rows = as_rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out) if residual is not None else None
    if rows.shape[0]:
        block = triton.next_power_of_2(rows.shape[1])
        _rms_norm_kernel[(rows.shape[0],)](
            rows, residual.contiguous() if residual is not None else rows, weight, out,
            summed if summed is not None else out, rows.stride(0), rows.shape[1], eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_num_warps(block), enable_fp_fusion=False,
        )  # fmt: skip
    return out if residual is None else (out, summed)


def rotary(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k [T, H_kv, D] rotated by the float32 tables cos/sin [P, D] at `positions` [T]."""
    check_device(q, "the Triton rotary embedding")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.shape[0]:
        half = q.shape[-1] // 2
        _rotary_kernel[(q.shape[0],)](
            q, k, q_out, k_out, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            Q_HEADS=q.shape[1], K_HEADS=k.shape[1], Q_HEADS_PAD=triton.next_power_of_2(q.shape[1]),
            K_HEADS_PAD=triton.next_power_of_2(k.shape[1]), HALF=half, HALF_PAD=triton.next_power_of_2(half),
            enable_fp_fusion=False,
        )  # fmt: skip
    return q_out, k_out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2 * n] -> silu(first half) * second half, [..., n]"""
    check_device(gate_up, "the Triton SiLU-and-mul")
    rows = as_rows(gate_up)
    size = rows.shape[1] // 2
    out = torch.empty(*gate_up.shape[:-1], size, dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        grid = (rows.shape[0], triton.cdiv(size, _SILU_BLOCK))
        _silu_and_mul_kernel[grid](rows, out, rows.stride(0), size, BLOCK=_SILU_BLOCK, enable_fp_fusion=False)
    return out
