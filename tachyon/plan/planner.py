"""The capacity plan: model + scheme + machine + engine flags + workload -> memory, KV capacity, roofline
performance, fit, and the replicas a target needs. `tachyon plan` (cli.py) builds a `PlanConfig` and
calls `create_plan`; `report.py` renders the `Plan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tachyon.plan.catalog import GPUSpec, create_gpu
from tachyon.plan.memory import MemoryPlan, MemorySettings, plan_memory
from tachyon.plan.model_spec import ModelSpec, load_model_spec
from tachyon.plan.profile import MachineProfile, load_profile
from tachyon.plan.roofline import DEFAULT_EFFICIENCY, Efficiency, Roofline, create_roofline
from tachyon.plan.weights import PlanScheme, create_plan_scheme
from tachyon.plan.workload import LoadPoint, Sizing, Workload, size_for_target, sweep

__all__ = ["Plan", "PlanConfig", "create_plan"]

_FALLBACK_SCHEMES = ("bf16", "W8A16", "FP8_DYNAMIC", "W8A8", "W4A16")  # most precise first
_TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class PlanConfig:
    model: str | None = None
    scheme: str = "bf16"
    sparsity: str | None = None
    group_size: int | None = None
    gpu: str = "H100-SXM"
    gpu_overrides: dict = field(default_factory=dict)  # memory_gib, bandwidth_gbs, bf16_tflops, ...
    profile: str | None = None  # a calibrated profile's path
    num_gpus: int | None = None  # GPUs on hand: report what they serve
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    workload: Workload = field(default_factory=Workload)

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"--max-model-len must be at least 2, got {self.max_model_len}")
        if self.num_gpus is not None and self.num_gpus < 1:
            raise ValueError(f"--num-gpus must be at least 1, got {self.num_gpus}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("--max-num-seqs and --max-num-batched-tokens must be positive")


@dataclass(frozen=True)
class Plan:
    config: PlanConfig
    spec: ModelSpec
    scheme: PlanScheme
    gpu: GPUSpec
    on_cpu: bool
    settings: MemorySettings
    efficiency: Efficiency
    max_model_len: int
    memory: MemoryPlan
    fits: bool
    smallest_fit: str | None  # when it does not fit: the fewest GPUs (most precise scheme) that does
    roofline: Roofline
    compute_bound_batch: float | None  # at a near-empty context
    compute_bound_batch_workload: float | None  # at the workload's mean context
    max_concurrency: int  # the workload's sequences that fit the cache at once (<= max_num_seqs)
    points: list[LoadPoint]
    sizing: Sizing


def create_plan(config: PlanConfig) -> Plan:
    spec = load_model_spec(config.model)
    profile = _profile(config)
    gpu, efficiency, on_cpu = _machine(config, profile)
    settings = _settings(config, spec, on_cpu)
    scheme = create_plan_scheme(config.scheme, config.sparsity, config.group_size)
    memory = plan_memory(spec, scheme, gpu, settings, on_cpu)
    max_model_len = config.max_model_len or spec.max_position_embeddings
    workload = config.workload
    if workload.context_len > max_model_len:
        raise ValueError(f"--prompt-len + --output-len ({workload.context_len}) exceed max_model_len {max_model_len}")
    fits = _fits(memory, max_model_len, on_cpu)
    roofline = _roofline(spec, scheme, gpu, efficiency, settings, memory)
    max_concurrency = min(settings.max_num_seqs, memory.kv.max_sequences(workload.context_len))
    return Plan(
        config=config,
        spec=spec,
        scheme=scheme,
        gpu=gpu,
        on_cpu=on_cpu,
        settings=settings,
        efficiency=efficiency,
        max_model_len=max_model_len,
        memory=memory,
        fits=fits,
        smallest_fit=None if fits else _smallest_fit(spec, gpu, settings, max_model_len, on_cpu),
        roofline=roofline,
        compute_bound_batch=roofline.compute_bound_batch(1),
        compute_bound_batch_workload=roofline.compute_bound_batch(workload.prompt_len + workload.output_len / 2),
        max_concurrency=max_concurrency,
        points=sweep(roofline, workload, max_concurrency) if max_concurrency > 0 else [],
        sizing=size_for_target(roofline, workload, max_concurrency),
    )


def _profile(config: PlanConfig) -> MachineProfile | None:
    if config.profile is not None:
        return load_profile(config.profile)
    if config.gpu.lower() == "cpu":
        from tachyon.plan.profile import default_profile_path

        return load_profile(default_profile_path("cpu"))
    return None


def _machine(config: PlanConfig, profile: MachineProfile | None) -> tuple[GPUSpec, Efficiency, bool]:
    """The machine's figures and efficiency: a profile's (with overrides applied), or the catalog's with
    the uncalibrated defaults."""
    overrides = {k: v for k, v in config.gpu_overrides.items() if v is not None}
    if profile is not None:
        machine = dataclasses.replace(profile.machine, **overrides) if overrides else profile.machine
        return machine, profile.efficiency, profile.device == "cpu"
    return create_gpu(config.gpu, **overrides), DEFAULT_EFFICIENCY, False


def _settings(config: PlanConfig, spec: ModelSpec, on_cpu: bool) -> MemorySettings:
    """Engine flags, with --dtype auto resolved as the engine does: fp32 on CPU; on GPU the checkpoint's
    16-bit type, else bf16."""
    dtype = config.dtype
    if dtype == "auto":
        stored = spec.stored_dtype if spec.stored_dtype in ("float16", "bfloat16") else "bfloat16"
        dtype = "float32" if on_cpu else stored
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    return MemorySettings(
        dtype=aliases.get(dtype, dtype),
        kv_cache_dtype=config.kv_cache_dtype,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory=config.kv_cache_memory,
        block_size=config.block_size,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
    )


def _fits(memory: MemoryPlan, max_model_len: int, on_cpu: bool) -> bool:
    """One sequence of max_model_len fits the KV cache, and (on CPU, where the budget is a flag) the
    weights, activations and cache fit the machine's memory."""
    if memory.kv.max_sequences(max_model_len) < 1:
        return False
    used = memory.resident_bytes + memory.activation_bytes + memory.reserve_bytes + memory.kv_budget_bytes
    return used <= memory.device_bytes


def _roofline(spec, scheme, gpu, efficiency, settings, memory) -> Roofline:
    untied_embeddings = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size
    embedding_bytes = untied_embeddings * settings.dtype_bytes // settings.tensor_parallel_size
    return create_roofline(
        spec,
        gpu,
        efficiency,
        weight_bytes=memory.resident_bytes - embedding_bytes,  # embeddings are gathered, not streamed
        kv_bytes_per_token=memory.kv.bytes_per_token,
        matmul="bf16" if memory.dequantized_at_load else scheme.matmul,
        dtype_bytes=settings.dtype_bytes,
        tensor_parallel_size=settings.tensor_parallel_size,
        max_num_batched_tokens=settings.max_num_batched_tokens,
    )


def _smallest_fit(
    spec: ModelSpec, gpu: GPUSpec, settings: MemorySettings, max_model_len: int, on_cpu: bool
) -> str | None:
    """Fewest GPUs first, then the most precise scheme, then a 16-bit before an 8-bit KV cache."""
    for tp in (1,) if on_cpu else _TP_SIZES:
        for name in _FALLBACK_SCHEMES:
            for kv_dtype in dict.fromkeys((settings.kv_cache_dtype, "fp8")):
                trial = dataclasses.replace(settings, tensor_parallel_size=tp, kv_cache_dtype=kv_dtype)
                try:
                    memory = plan_memory(spec, create_plan_scheme(name), gpu, trial, on_cpu)
                except ValueError:  # a group size that does not divide this model's widths
                    continue
                if _fits(memory, max_model_len, on_cpu):
                    return f"{name} on {tp} x {gpu.name} (tensor parallel {tp}), KV cache {kv_dtype}"
    return None
