"""Device memory of one replica: weights per GPU, the run-time reserve, what is left for the KV cache,
and how many tokens and sequences that cache holds. The planner calls `plan_memory`; the KV figures
follow the engine's own rules (`LLMEngine`: blocks = budget // bytes per block), so a given budget gives
the same block count the engine logs at start-up.

KV bytes per token = 2 (K and V) x layers x KV heads x (head_dim x dtype bytes [+ 4: the fp32 scale per
token and head of an 8-bit cache]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tachyon.plan.catalog import GPUSpec
from tachyon.plan.model_spec import ModelSpec
from tachyon.plan.weights import PlanScheme, WeightGroup, weight_breakdown

__all__ = [
    "DTYPE_BYTES",
    "KV_DTYPES",
    "RUNTIME_RESERVE_BYTES",
    "KVCapacity",
    "MemoryPlan",
    "MemorySettings",
    "kv_bytes_per_token",
    "kv_capacity",
    "plan_memory",
]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_DTYPES = ("auto", "fp8", "int8")
_KV_SCALE_BYTES = 4  # float32 scale per (token, KV head) of an 8-bit cache
RUNTIME_RESERVE_BYTES = 3 << 28  # 0.75 GiB: CUDA context, cuBLAS/Triton workspaces (an estimate)
DEFAULT_CPU_KV_CACHE_BYTES = 2 << 30  # the engine's default --kv-cache-memory on CPU


@dataclass(frozen=True)
class MemorySettings:
    """The engine flags that size memory, with the engine's defaults."""

    dtype: str = "bfloat16"  # model dtype at run time
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None  # bytes; given: the KV budget itself, as the engine's flag
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_DTYPES:
            raise ValueError(f"--kv-cache-dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.tensor_parallel_size < 1 or self.tensor_parallel_size & (self.tensor_parallel_size - 1):
            raise ValueError(f"--tensor-parallel-size must be a power of two, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"--block-size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"--kv-cache-memory must be positive, got {self.kv_cache_memory}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class KVCapacity:
    bytes_per_token: int  # per GPU
    num_blocks: int
    block_size: int

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def max_concurrency(self, context_len: int) -> float:
        """The engine's start-up figure: cache tokens / context length."""
        return self.num_tokens / context_len

    def max_sequences(self, context_len: int) -> int:
        """Sequences of `context_len` tokens that fit at once, whole blocks each."""
        return self.num_blocks // math.ceil(context_len / self.block_size)


@dataclass(frozen=True)
class MemoryPlan:
    """Per GPU of one replica (tensor-parallel group). `stored` is the checkpoint on disk; `resident`
    what the engine keeps on the device (weight-only and FP8 schemes are dequantized at load where no
    kernel runs them as stored)."""

    device_bytes: int
    stored: list[WeightGroup]
    resident_bytes: int  # weights per GPU
    dequantized_at_load: bool
    activation_bytes: int
    reserve_bytes: int
    kv_budget_bytes: int
    kv: KVCapacity

    @property
    def stored_bytes(self) -> int:
        return sum(g.num_bytes for g in self.stored)

    @property
    def fits(self) -> bool:
        return self.kv.num_blocks > 0 and self.kv_budget_bytes > 0


def kv_bytes_per_token(spec: ModelSpec, settings: MemorySettings) -> int:
    """Bytes one token's keys and values take in one GPU's pool (KV heads split over tensor-parallel ranks,
    replicated when there are fewer heads than ranks)."""
    heads = math.ceil(spec.num_kv_heads / settings.tensor_parallel_size)
    if settings.kv_cache_dtype == "auto":
        per_head = spec.head_dim * settings.dtype_bytes
    else:
        per_head = spec.head_dim + _KV_SCALE_BYTES
    return 2 * spec.num_layers * heads * per_head


def kv_capacity(budget_bytes: int, bytes_per_token: int, block_size: int) -> KVCapacity:
    """The engine's sizing: as many whole blocks as the budget holds."""
    return KVCapacity(bytes_per_token, max(budget_bytes, 0) // (bytes_per_token * block_size), block_size)


def plan_memory(
    spec: ModelSpec, scheme: PlanScheme, gpu: GPUSpec, settings: MemorySettings, on_cpu: bool
) -> MemoryPlan:
    """Weights, reserve and KV cache of one GPU (or the CPU) under the engine flags in `settings`."""
    stored_dtype = spec.stored_dtype if spec.stored_dtype in DTYPE_BYTES else "bfloat16"
    stored = weight_breakdown(spec, scheme, DTYPE_BYTES[stored_dtype])
    dequantize = _dequantized_at_load(scheme, gpu, on_cpu)
    resident = weight_breakdown(spec, PlanScheme(None) if dequantize else scheme, settings.dtype_bytes)
    tp = settings.tensor_parallel_size
    norms = sum(g.num_bytes for g in resident if g.name == "norms")
    resident_bytes = (sum(g.num_bytes for g in resident) - norms) // tp + norms
    activations = _activation_bytes(spec, settings)
    device = gpu.memory_bytes
    if settings.kv_cache_memory is not None or on_cpu:
        budget = settings.kv_cache_memory or DEFAULT_CPU_KV_CACHE_BYTES
        reserve = 0 if on_cpu else RUNTIME_RESERVE_BYTES
    else:
        reserve = RUNTIME_RESERVE_BYTES
        budget = int(device * settings.gpu_memory_utilization) - resident_bytes - activations - reserve
    kv = kv_capacity(budget, kv_bytes_per_token(spec, settings), settings.block_size)
    return MemoryPlan(device, stored, resident_bytes, dequantize, activations, reserve, budget, kv)


def _dequantized_at_load(scheme: PlanScheme, gpu: GPUSpec, on_cpu: bool) -> bool:
    """The engine's kernels: W8A8 runs int8 everywhere; weight-only ints stay packed only on GPUs; FP8
    needs fp8 tensor cores; elsewhere the weights are dequantized once at load."""
    if scheme.quant is None or scheme.matmul == "int8":
        return False
    if scheme.weight_only:
        return on_cpu
    return on_cpu or not gpu.has_fp8


def _activation_bytes(spec: ModelSpec, settings: MemorySettings) -> int:
    """The largest step's transient tensors (an estimate): per token the residual stream, q/k/v, attention
    output, gate/up and the MLP activation; plus fp32 logits and their softmax for every sequence."""
    tp = settings.tensor_parallel_size
    per_token = 4 * spec.hidden_size + (2 * spec.q_size + 2 * spec.kv_size + 3 * spec.intermediate_size) // tp
    num_tokens = settings.max_num_batched_tokens + settings.max_num_seqs  # + the decode graphs' pool
    logits = 2 * settings.max_num_seqs * spec.vocab_size * 4
    return num_tokens * per_token * settings.dtype_bytes + logits
