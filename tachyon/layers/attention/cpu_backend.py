"""CPU attention: a native kernel for query rows, PyTorch SDPA for long prefill chunks over long contexts.

Decodes and speculative verifications are memory-bound: every step reads each sequence's whole KV
history for a handful of query rows. The native kernel (tachyon/kernels/cpu_paged_attention.cpp) reads
it once, in place through the block table, where the PyTorch path gathers it into padded tensors and
reads it twice more. The kernel attends rows in tiles of up to 8 (each row still computed alone, in
one fixed order), so a prefill chunk re-reads its keys once per tile; that stays cheaper than SDPA's
gather and padding up to a few thousand positions, and at any length in bf16 on CPUs with AVX512_BF16
(measured on one 8000-token prompt: bf16 on `vdpbf16ps` 20% faster than SDPA, float32 on par, bf16
widened to float32 on CPUs without AVX512_BF16 17% slower). So, except in that first case, chunks of
more than `NATIVE_MAX_QUERY_LEN` tokens over more than `NATIVE_MAX_CONTEXT` positions take SDPA.

The same native call first writes the step's new keys and values into their cache slots (the
PyTorch backends' `write_kv_cache`, without its two index_copy_ dispatches per layer).

Each row r of the kernel's work is one new token: it attends to the first `row_ctx[r]` positions of
sequence `row_seq[r]` (its cached prefix plus the new tokens up to itself), which is the causal mask.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass

import torch

from tachyon.kernels.native import DTYPE_FLAGS, load_native_library
from tachyon.layers.attention.backend import AttentionBackend, register_backend
from tachyon.layers.attention.metadata import AttentionMetadata
from tachyon.layers.attention.torch_backend import _Group, attend_groups, build_plan

NATIVE_MAX_QUERY_LEN = 16
NATIVE_MAX_CONTEXT = 4096
_SOURCE = "cpu_paged_attention.cpp"


def _library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    lib = load_native_library(_SOURCE, extra_flags)
    if lib is not None and not getattr(lib, "_tachyon_typed", False):
        i32, f32 = ctypes.c_int, ctypes.c_float
        lib.tachyon_supports.argtypes = [i32, i32]
        lib.tachyon_supports.restype = i32
        lib.tachyon_fast_bf16.argtypes = []
        lib.tachyon_fast_bf16.restype = i32
        fn = lib.tachyon_paged_attention
        ptr, long = ctypes.c_void_p, ctypes.c_long  # int32/int64 arrays go as plain addresses
        fn.argtypes = [ptr, long, ptr, long, ptr, long, ptr, i32, ptr, long, ptr]
        fn.argtypes += [ptr, i32, ptr, ptr, ptr, i32, i32, i32, i32, i32, i32, f32, i32, i32]
        fn.restype = i32
        lib._tachyon_typed = True
    return lib


def unsupported_reason(dtype: torch.dtype, group: int, head_dim: int) -> str | None:
    """Why the native kernel cannot run this model here, or None when it can."""
    if dtype not in DTYPE_FLAGS:
        return f"the native CPU kernel has no {dtype} path (float32 and bfloat16 only)"
    lib = _library()
    if lib is None:
        return f"{_SOURCE} could not be built (see the warning above)"
    if not lib.tachyon_supports(group, head_dim):
        return f"the native CPU kernel has no build for {group} query heads per KV head of {head_dim} dims"
    return None


@dataclass
class _Plan:
    rows: torch.Tensor  # [R] int32: flat-batch rows the kernel computes
    row_seq: torch.Tensor  # [R] int32: each row's sequence
    row_ctx: torch.Tensor  # [R] int32: how many positions each row attends to
    max_ctx: int
    groups: list[_Group]  # the longer chunks, for the PyTorch path


def _build_plan(meta: AttentionMetadata, device: torch.device, all_rows_native: bool) -> _Plan:
    rows, row_seq, row_ctx, long_seqs = [], [], [], []
    starts = itertools.accumulate(meta.query_lens_cpu, initial=0)
    for b, (start, q_len, seq_len) in enumerate(zip(starts, meta.query_lens_cpu, meta.seq_lens_cpu)):
        if not all_rows_native and q_len > NATIVE_MAX_QUERY_LEN and seq_len > NATIVE_MAX_CONTEXT:
            long_seqs.append(b)
            continue
        rows += range(start, start + q_len)
        row_seq += [b] * q_len
        row_ctx += range(seq_len - q_len + 1, seq_len + 1)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    groups = build_plan(meta, device, long_seqs) if long_seqs else []
    return _Plan(as_tensor(rows), as_tensor(row_seq), as_tensor(row_ctx), max(row_ctx, default=0), groups)


@register_backend("cpu")
class CpuAttentionBackend(AttentionBackend):
    """`batch_invariant` sends every row to the kernel, long chunks too: a row's result then never depends
    on how its prompt was chunked or what it was batched with, since each row is reduced in one fixed order."""

    name = "cpu"

    def __init__(self, extra_flags: tuple[str, ...] = ()) -> None:
        self.lib = _library(extra_flags)
        if self.lib is None:
            raise RuntimeError(f"the cpu attention backend needs {_SOURCE} built; see the warning above")
        self.fast_bf16 = bool(self.lib.tachyon_fast_bf16())
        self.batch_invariant = False

    def forward(self, query, key, value, kv_cache, meta, scale, kv_scales=None):
        if kv_scales is not None:
            raise NotImplementedError("the cpu backend has no 8-bit KV cache; the runner picks torch for it")
        if meta.plan is None:
            fast_bf16 = self.fast_bf16 and query.dtype == torch.bfloat16
            meta.plan = _build_plan(meta, query.device, self.batch_invariant or fast_bf16)
        plan: _Plan = meta.plan
        if not kv_cache.is_contiguous() or not meta.block_tables.is_contiguous():
            raise ValueError("the cpu attention backend reads a contiguous KV cache and block table")
        query, key, value = (x if x.stride(-1) == 1 and x.stride(1) == x.shape[-1] else x.contiguous()
                             for x in (query, key, value))  # fmt: skip
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
        tables, slots = meta.block_tables, meta.slot_mapping
        failed = self.lib.tachyon_paged_attention(
            query.data_ptr(), query.stride(0), key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0),
            slots.data_ptr(), slots.numel(), kv_cache.data_ptr(), num_blocks * block_size, out.data_ptr(),
            tables.data_ptr(), tables.shape[1], plan.rows.data_ptr(), plan.row_seq.data_ptr(),
            plan.row_ctx.data_ptr(), plan.rows.numel(), plan.max_ctx,
            query.shape[1], num_kv_heads, head_dim, block_size, scale, DTYPE_FLAGS[query.dtype],
            torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise ValueError(f"no native CPU kernel for {query.shape[1]}/{num_kv_heads} heads of {head_dim} dims")
        attend_groups(query, kv_cache, plan.groups, scale, out)
        return out
