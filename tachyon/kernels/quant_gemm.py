"""Triton weight-only integer GEMM (W4A16, W8A16): y = x @ dequant(W).T with W kept packed in memory.

Called by `WeightOnlyIntMethod` (tachyon.layers.quantized_linear) on CUDA; also runs on CPU tensors under
Triton's interpreter (TRITON_INTERPRET=1), which the tests use. Decode (a handful of rows) reads the weights
once and is memory-bound, so 4-bit weights move a quarter of bf16's bytes.

Layout (`kernel_layout`): the checkpoint's pack-quantized words [N, K/P] (P = 32 // bits values per int32,
value k of a row at bits (k % P) * bits of word k // P, offset by 2^(bits-1)) are transposed to [K/P, N],
so that a tile's loads run along N and coalesce; scales and zero points become [groups, N].

    words [K/P, N]              one program: rows pid_m, columns pid_n, K tiles of split pid_k
      w(0,0) w(0,1) ...  ->     [BLOCK_K/P, BLOCK_N] words --shift, mask--> [BLOCK_K/P, P, BLOCK_N]
      w(1,0) w(1,1) ...         --reshape--> [BLOCK_K, BLOCK_N] integers q - 2^(bits-1) - zero
A K tile never crosses a group (BLOCK_K divides the group size), so the group's scale multiplies the tile's
dot product once: acc += (x @ (q - offset)) * scale[n]. The integers are exact in bf16/fp16, accumulation is
float32. Small M pads the row tile to 16 (tl.dot's minimum) and splits K across programs to fill the GPU;
the float32 partial sums of the splits are added afterwards.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from tachyon.kernels.triton_runtime import check_device, interpreted

_MIN_BLOCK = 16  # tl.dot's smallest tile side
_MAX_BLOCK_K = 128
_INTERPRETER_PROGRAMS = 4  # the interpreter has no SMs: a small target still exercises split-K in tests
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _quant_gemm_kernel(
    out_ptr,  # [SPLIT_K, M, N] float32 partial sums, or [M, N] in x's dtype when there is one split
    x_ptr,  # [M, K]
    w_ptr,  # [num_words, N] int32, num_words = ceil(K / P)
    scale_ptr,  # [groups, N] float32
    zero_ptr,  # [groups, N] int8 (unused without HAS_ZERO)
    M,
    N,
    K,
    num_words,
    stride_xm,
    stride_xk,
    group_size,  # K for per-channel scales
    k_tiles_per_split,
    BITS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,  # x's dtype on GPU; float32 in the interpreter, whose dot misreads bfloat16
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 (no TF32 rounding), None = default
):
    PACK: tl.constexpr = 32 // BITS
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    shifts = tl.arange(0, PACK) * BITS  # [P] bit offset of each value in its word
    first = pid_k * k_tiles_per_split
    last = tl.minimum(first + k_tiles_per_split, (K + BLOCK_K - 1) // BLOCK_K)  # no tl.cdiv: a nested jit fn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tile in range(first, last):
        offs_k = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        x_mask = m_ok[:, None] & (offs_k < K)[None, :]  # zero columns past K cancel the padded words
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=x_mask, other=0.0)
        rows = tile * (BLOCK_K // PACK) + tl.arange(0, BLOCK_K // PACK)
        w_mask = (rows < num_words)[:, None] & n_ok[None, :]
        words = tl.load(w_ptr + rows[:, None] * N + offs_n[None, :], mask=w_mask, other=0)  # [BK/P, BN]
        q = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)  # [BK/P, P, BN] unsigned
        q = tl.reshape(q, (BLOCK_K, BLOCK_N))  # row r * P + j is value k = r * P + j
        group = (tile * BLOCK_K) // group_size
        offset = tl.full([BLOCK_N], 1 << (BITS - 1), tl.int32)
        if HAS_ZERO:
            offset += tl.load(zero_ptr + group * N + offs_n, mask=n_ok, other=0).to(tl.int32)
        w = (q - offset[None, :]).to(DOT_DTYPE)  # exact: |q - offset| <= 255
        scale = tl.load(scale_ptr + group * N + offs_n, mask=n_ok, other=0.0)
        acc += tl.dot(x.to(DOT_DTYPE), w, input_precision=DOT_PRECISION) * scale[None, :]
    out_ptrs = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def can_run(num_bits: int, group_size: int | None) -> bool:
    """Whether the kernel covers these weights: whole values per int32 word, and a group (None = per
    channel) that K tiles of at least 16 columns divide."""
    return num_bits in (4, 8) and (group_size is None or group_size % _MIN_BLOCK == 0)


def kernel_layout(
    packed: torch.Tensor,  # [N, ceil(K / P)] int32, the checkpoint's weight_packed
    scale: torch.Tensor,  # [N, groups]
    zero_point: torch.Tensor | None,  # [N, groups] int8, unpacked
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The checkpoint's tensors transposed so that the kernel's loads run along N: words [ceil(K/P), N],
    float32 scales [groups, N], int8 zero points [groups, N]."""
    zero_t = None if zero_point is None else zero_point.to(torch.int8).t().contiguous()
    return packed.t().contiguous(), scale.float().t().contiguous(), zero_t


def quant_gemm(
    x: torch.Tensor,  # [M, K] float32 / bfloat16 / float16
    words: torch.Tensor,  # [ceil(K / P), N] int32 (kernel_layout)
    scale: torch.Tensor,  # [groups, N] float32
    zero_point: torch.Tensor | None,  # [groups, N] int8, None for symmetric weights
    num_bits: int,
    group_size: int | None,  # None = one scale per output channel
) -> torch.Tensor:  # [M, N] in x's dtype
    """y = x @ dequant(W).T, W = (q - zero_point) * scale per group of `group_size` input columns."""
    check_device(x, "the Triton quantized GEMM")
    num_rows, in_features = x.shape
    out_features = words.shape[1]
    assert words.is_contiguous() and scale.is_contiguous(), "kernel_layout gives row-major words and scales"
    assert zero_point is None or zero_point.is_contiguous()
    assert words.shape[0] == -(-in_features * num_bits // 32), f"{tuple(words.shape)} words for K={in_features}"
    if num_rows == 0:
        return x.new_empty(0, out_features)
    block_m, block_n, block_k = _blocks(num_rows, group_size)
    grid_m, grid_n = triton.cdiv(num_rows, block_m), triton.cdiv(out_features, block_n)
    k_tiles_per_split, split_k = _split_k(triton.cdiv(in_features, block_k), grid_m * grid_n, x.device)
    out_dtype = x.dtype if split_k == 1 else torch.float32
    out = torch.empty(split_k, num_rows, out_features, dtype=out_dtype, device=x.device)
    fp32 = x.dtype == torch.float32
    _quant_gemm_kernel[(grid_m, grid_n, split_k)](
        out, x, words, scale, scale if zero_point is None else zero_point,
        num_rows, out_features, in_features, words.shape[0], x.stride(0), x.stride(1),
        group_size or in_features, k_tiles_per_split,
        BITS=num_bits, HAS_ZERO=zero_point is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_DTYPE=tl.float32 if fp32 or interpreted() else _TL_DTYPES[x.dtype],
        DOT_PRECISION="ieee" if fp32 else None,
        num_warps=4, num_stages=4 if num_rows <= 16 else 3,
    )  # fmt: skip
    return out[0] if split_k == 1 else out.sum(0).to(x.dtype)


def _blocks(num_rows: int, group_size: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) by M: a 16-row tile for decode, wider tiles as the batch grows; BLOCK_K
    the largest power of two up to 128 that divides the group, so a K tile has one scale per column."""
    block_m = max(_MIN_BLOCK, min(64, triton.next_power_of_2(num_rows)))
    block_n = 64 if num_rows <= 32 else 128
    block_k = _MAX_BLOCK_K if group_size is None else min(_MAX_BLOCK_K, group_size & -group_size)
    return block_m, block_n, block_k


def _split_k(k_tiles: int, num_tiles: int, device: torch.device) -> tuple[int, int]:
    """(K tiles per split, number of splits): split K until the output tiles times the splits make two
    waves over the GPU's SMs, since a decode has too few output tiles to keep them busy alone."""
    target = 2 * _num_sms(device.index) if device.type == "cuda" else _INTERPRETER_PROGRAMS
    per_split = triton.cdiv(k_tiles, min(k_tiles, triton.cdiv(target, num_tiles)))
    return per_split, triton.cdiv(k_tiles, per_split)


@functools.cache
def _num_sms(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
