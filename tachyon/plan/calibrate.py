"""`tachyon plan calibrate`: measure this machine (memory bandwidth by a tensor copy, matmul rate by a
GEMM), run the real engine (offline `tachyon.LLM`, greedy, ignore_eos) at a few decode batch sizes, and
fit the roofline's efficiency factors to the measured decode speed. The CLI calls `calibrate`;
`benchmarks/plan_accuracy.py` reuses `measure_decode` and `profile_roofline` to check a saved profile.

The fit: step time t(B) = overhead + max(memory(B) / eff_bw, compute(B) / eff_compute), with memory and
compute the roofline's times at the measured peaks; a log-spaced grid search minimizes the squared
relative error of the predicted tokens/s over the batch sizes.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from tachyon.hardware import cpu_name
from tachyon.plan.catalog import GPUSpec, create_gpu
from tachyon.plan.memory import MemorySettings, plan_memory
from tachyon.plan.model_spec import ModelSpec, load_model_spec
from tachyon.plan.profile import MachineProfile, Measurement
from tachyon.plan.roofline import Efficiency, Roofline, create_roofline
from tachyon.plan.weights import PlanScheme

__all__ = ["CalibrationConfig", "calibrate", "measure_decode", "measure_machine", "profile_roofline"]

logger = logging.getLogger(__name__)

_CALIBRATION_KV_BYTES = 256 << 20  # CPU: room for 32 sequences of the default model at short contexts
# Fractions of the measured copy bandwidth / GEMM rate. Above 1 is possible: a decode step streams
# read-only weights, which can beat a copy's read + write.
_MIN_EFFICIENCY, _MAX_EFFICIENCY = 0.02, 4.0


@dataclass(frozen=True)
class CalibrationConfig:
    model: str | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32)
    prompt_len: int = 32
    output_len: int = 24
    gpu: str | None = None  # a catalog GPU whose datasheet figures to fit against (CUDA); None: measure
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (None: torch's default, one per core)

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be positive, got {self.threads}")
        if self.prompt_len < 1 or self.output_len < 4:
            raise ValueError("--prompt-len must be >= 1 and --output-len >= 4 (the first decode steps are warm-up)")


def calibrate(config: CalibrationConfig) -> MachineProfile:
    """Measure, run the engine, fit; returns the profile (measurements carry the fitted predictions)."""
    from tachyon import LLM
    from tachyon.config import EngineConfig, parse_dtype

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    load_before = os.getloadavg()[0]
    spec = load_model_spec(config.model)
    device = EngineConfig(device=config.device).resolve_device()
    dtype = _engine_dtype(spec, device)
    llm = LLM(config.model, device=config.device, dtype=dtype, kv_cache_memory=_CALIBRATION_KV_BYTES)
    machine = create_gpu(config.gpu) if config.gpu else measure_machine(device, parse_dtype(dtype))
    measure_decode(llm, 2, config.prompt_len, 4)  # warm-up: first calls allocate and pick kernels
    runs = [measure_decode(llm, b, config.prompt_len, config.output_len) for b in config.batch_sizes]
    unit = Efficiency(1.0, 1.0, 0.0, calibrated=True)
    efficiency = fit_efficiency(profile_roofline(spec, machine, unit, dtype, device.type == "cpu"), runs)
    fitted = profile_roofline(spec, machine, efficiency, dtype, device.type == "cpu")
    runs = [_with_prediction(m, fitted) for m in runs]
    meta = {
        "host": cpu_name(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prompt_len": config.prompt_len,
        "output_len": config.output_len,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "num_cpus": os.cpu_count(),
    }
    return MachineProfile(machine, efficiency, device.type, dtype, spec.name, runs, meta)


def profile_roofline(spec: ModelSpec, machine: GPUSpec, efficiency: Efficiency, dtype: str, on_cpu: bool) -> Roofline:
    """The roofline of `spec` run dense in `dtype` on `machine` (what calibration runs)."""
    settings = MemorySettings(dtype=dtype, kv_cache_memory=_CALIBRATION_KV_BYTES)
    memory = plan_memory(spec, PlanScheme(None), machine, settings, on_cpu)
    untied = 0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size * settings.dtype_bytes
    return create_roofline(
        spec,
        machine,
        efficiency,
        weight_bytes=memory.resident_bytes - untied,
        kv_bytes_per_token=memory.kv.bytes_per_token,
        matmul="bf16",
        dtype_bytes=settings.dtype_bytes,
    )


def measure_decode(llm, batch: int, prompt_len: int, output_len: int) -> Measurement:
    """Decode tokens/s of `batch` greedy sequences: the median step time over the pure-decode steps (after
    the prefill step and one more), so a stray slow step of a shared machine does not skew it."""
    from tachyon import SamplingParams

    engine = llm.engine
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i in range(batch):  # distinct prompts: no prefix-cache sharing between sequences
        engine.add_request([100 + (i * 131 + j * 7) % 20000 for j in range(prompt_len)], params)
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[2:])
    return Measurement(batch, prompt_len + output_len / 2, batch / step)


def measure_machine(device: torch.device, dtype: torch.dtype) -> GPUSpec:
    """This machine's figures: copy bandwidth, GEMM rate in `dtype`, and its memory."""
    name = f"{device.type}: {cpu_name()}, {torch.get_num_threads()} threads"
    return GPUSpec(
        name=name,
        memory_gib=_memory_bytes(device) / 2**30,
        bandwidth_gbs=_copy_bandwidth(device) / 1e9,
        bf16_tflops=_matmul_flops(device, dtype) / 1e12,
        source="measured by tachyon plan calibrate (torch copy, torch matmul)",
    )


def fit_efficiency(roofline: Roofline, runs: list[Measurement]) -> Efficiency:
    """The (bandwidth, compute, overhead) that best predict the measured tokens/s (relative error): a coarse
    log-spaced grid, then a finer one around its best point."""
    parts = np.array([roofline.decode_times(m.batch, m.context_len) for m in runs])  # [N, 2] at peak
    batch = np.array([m.batch for m in runs], dtype=float)
    measured = np.array([m.measured_tok_s for m in runs])
    max_overhead = 0.95 * (batch / measured).min()
    coarse = np.geomspace(_MIN_EFFICIENCY, _MAX_EFFICIENCY, 100)
    grid = (coarse, coarse, np.linspace(0.0, max_overhead, 50))
    _, bw, comp, overhead = _grid_search(parts, batch, measured, *grid)
    for _ in range(3):
        fine = [np.clip(x * np.geomspace(0.9, 1.1, 41), _MIN_EFFICIENCY, _MAX_EFFICIENCY) for x in (bw, comp)]
        step = max_overhead / 50
        overheads = np.clip(np.linspace(overhead - step, overhead + step, 21), 0.0, max_overhead)
        _, bw, comp, overhead = _grid_search(parts, batch, measured, *fine, overheads)
    return Efficiency(float(bw), float(comp), float(overhead), calibrated=True)


def _grid_search(parts, batch, measured, bws, comps, overheads) -> tuple[float, float, float, float]:
    """(error, bandwidth, compute, overhead) of the grid point with the least squared relative error."""
    best = (np.inf, 1.0, 1.0, 0.0)
    for overhead in overheads:
        t = overhead + np.maximum(parts[:, 0, None, None] / bws[None, :, None], parts[:, 1, None, None] / comps)
        err = (((batch[:, None, None] / t) - measured[:, None, None]) / measured[:, None, None]) ** 2
        total = err.sum(axis=0)
        i, j = np.unravel_index(total.argmin(), total.shape)
        if total[i, j] < best[0]:
            best = (float(total[i, j]), float(bws[i]), float(comps[j]), float(overhead))
    return best


def _engine_dtype(spec: ModelSpec, device: torch.device) -> str:
    """The engine's --dtype auto: float32 on CPU; on GPU the checkpoint's 16-bit type, else bfloat16."""
    if device.type == "cpu":
        return "float32"
    return spec.stored_dtype if spec.stored_dtype in ("float16", "bfloat16") else "bfloat16"


def _with_prediction(m: Measurement, roofline: Roofline) -> Measurement:
    return Measurement(
        m.batch, m.context_len, m.measured_tok_s, m.batch / roofline.decode_step_s(m.batch, m.context_len)
    )


def _copy_bandwidth(device: torch.device, num_bytes: int = 128 << 20) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once); best of 5."""
    src = torch.ones(num_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * num_bytes / _best_time(lambda: dst.copy_(src), device, repeats=4)


def _matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1536) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _best_time(lambda: a @ a, device)


def _best_time(fn, device: torch.device, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
