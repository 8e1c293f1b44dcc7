"""Step times from a roofline: a step takes the longer of (bytes moved / effective bandwidth) and
(FLOPs / effective peak), plus a fixed per-step overhead (scheduling, sampling, kernel launches) and,
with tensor parallelism, two all-reduces per layer. The effective figures are the datasheet's times
efficiency factors that `tachyon plan calibrate` fits on a real run (`Efficiency`). The planner and
the calibration fit call `Roofline`.

    decode step, batch B, context L:  bytes = W + B*L*kv          FLOPs = B*(2*P + 4*layers*heads*head_dim*L)
    prefill of one prompt of N:       bytes = W per chunk + N*kv  FLOPs = 2*P_dec*N + 2*layers*heads*head_dim*N^2
W: weight bytes a step reads; P: matmul parameters (decoder Linears + lm_head; a prefill computes logits
for its last token only). Decode turns compute-bound at B* = (W/BW) / ((2P + 4aL)/F - L*kv/BW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tachyon.plan.catalog import GPUSpec
from tachyon.plan.model_spec import ModelSpec

__all__ = ["DEFAULT_EFFICIENCY", "Efficiency", "Roofline", "create_roofline"]

_ALLREDUCE_LATENCY_S = 10e-6
_PCIE_GBS = 32.0  # all-reduce bandwidth between GPUs without NVLink / Infinity Fabric


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet bandwidth and peak a real step reaches, and a fixed cost per step."""

    bandwidth: float
    compute: float
    step_overhead_s: float
    calibrated: bool = False  # False: the defaults below, not fitted on this hardware

    def __post_init__(self) -> None:
        if not (0 < self.bandwidth <= 4 and 0 < self.compute <= 4 and self.step_overhead_s >= 0):
            raise ValueError(f"efficiency factors out of range: {self}")


# Not measured on any GPU (none was available): typical of vLLM-class engines, marked uncalibrated.
DEFAULT_EFFICIENCY = Efficiency(bandwidth=0.8, compute=0.6, step_overhead_s=1e-3)


@dataclass(frozen=True)
class Roofline:
    """Per-GPU work of one step of one replica."""

    weight_bytes: int  # read by every step
    decode_params: int  # matmul parameters a decode token multiplies (decoder Linears + lm_head), per GPU
    prefill_params: int  # the same without lm_head
    attn_flops_per_ctx: int  # 4 * layers * heads * head_dim per GPU: attention FLOPs per (token, context token)
    kv_bytes_per_token: int
    bandwidth: float  # effective bytes/s
    flops: float  # effective FLOP/s
    overhead_s: float
    hidden_bytes: int  # one token's hidden state (all-reduce payload)
    num_layers: int
    tensor_parallel_size: int
    link_bytes_per_s: float
    max_num_batched_tokens: int

    def decode_step_s(self, batch: float, context_len: float) -> float:
        memory, compute = self.decode_times(batch, context_len)
        return max(memory, compute) + self.overhead_s + self._allreduce_s(batch)

    def decode_times(self, batch: float, context_len: float) -> tuple[float, float]:
        """(memory time, compute time) of a decode step, without overheads."""
        memory = (self.weight_bytes + batch * context_len * self.kv_bytes_per_token) / self.bandwidth
        compute = batch * (2 * self.decode_params + self.attn_flops_per_ctx * context_len) / self.flops
        return memory, compute

    def prefill_s(self, prompt_len: int) -> float:
        """One prompt, alone, in chunks of max_num_batched_tokens."""
        num_chunks = math.ceil(prompt_len / self.max_num_batched_tokens)
        memory = (num_chunks * self.weight_bytes + prompt_len * self.kv_bytes_per_token) / self.bandwidth
        flops = 2 * self.prefill_params * prompt_len + self.attn_flops_per_ctx * prompt_len * prompt_len / 2
        compute = flops / self.flops
        return max(memory, compute) + num_chunks * self.overhead_s + self._allreduce_s(prompt_len)

    def compute_bound_batch(self, context_len: float) -> float | None:
        """The batch at which decode's compute time overtakes its memory time; None: never (the KV read
        grows as fast as the FLOPs)."""
        per_seq_compute = (2 * self.decode_params + self.attn_flops_per_ctx * context_len) / self.flops
        per_seq_memory = context_len * self.kv_bytes_per_token / self.bandwidth
        if per_seq_compute <= per_seq_memory:
            return None
        return self.weight_bytes / self.bandwidth / (per_seq_compute - per_seq_memory)

    def _allreduce_s(self, num_tokens: float) -> float:
        tp = self.tensor_parallel_size
        if tp == 1:
            return 0.0
        payload = 2 * (tp - 1) / tp * num_tokens * self.hidden_bytes
        return 2 * self.num_layers * (_ALLREDUCE_LATENCY_S + payload / self.link_bytes_per_s)


def create_roofline(
    spec: ModelSpec,
    gpu: GPUSpec,
    efficiency: Efficiency,
    *,
    weight_bytes: int,
    kv_bytes_per_token: int,
    matmul: str,
    dtype_bytes: int,
    tensor_parallel_size: int = 1,
    max_num_batched_tokens: int = 2048,
) -> Roofline:
    """The roofline of one GPU of a replica: `weight_bytes` are the resident weights per GPU (the
    embedding table is only gathered from, so the caller leaves an untied one out)."""
    tp = tensor_parallel_size
    decoder = spec.linear_params_per_layer * spec.num_layers
    lm_head = spec.vocab_size * spec.hidden_size
    return Roofline(
        weight_bytes=weight_bytes,
        decode_params=(decoder + lm_head) // tp,
        prefill_params=decoder // tp,
        attn_flops_per_ctx=4 * spec.num_layers * spec.num_heads * spec.head_dim // tp,
        kv_bytes_per_token=kv_bytes_per_token,
        bandwidth=gpu.bandwidth_gbs * 1e9 * efficiency.bandwidth,
        flops=gpu.peak_flops(matmul) * efficiency.compute,
        overhead_s=efficiency.step_overhead_s,
        hidden_bytes=spec.hidden_size * dtype_bytes,
        num_layers=spec.num_layers,
        tensor_parallel_size=tp,
        link_bytes_per_s=(gpu.link_gbs or _PCIE_GBS) * 1e9,
        max_num_batched_tokens=max_num_batched_tokens,
    )
