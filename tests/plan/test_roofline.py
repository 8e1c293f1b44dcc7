"""Roofline and load model: the compute-bound crossover against the textbook formula, step times against
FLOP and byte counts done by hand, Little's law, GPU counts for a target rate against a brute-force
search, and the fit / smallest-setup answers."""

from __future__ import annotations

import math

import pytest

from tachyon.plan.catalog import create_gpu
from tachyon.plan.model_spec import load_model_spec
from tachyon.plan.planner import PlanConfig, create_plan
from tachyon.plan.roofline import Efficiency, Roofline, create_roofline
from tachyon.plan.workload import Workload, load_point, size_for_target
from tests.plan.helpers import config_path

UNIT = Efficiency(1.0, 1.0, 0.0)


def _roofline(**changes) -> Roofline:
    fields = dict(
        weight_bytes=16e9, decode_params=8_000_000_000, prefill_params=7_000_000_000, attn_flops_per_ctx=4 * 32 * 4096,
        kv_bytes_per_token=131_072, bandwidth=3.35e12, flops=989.5e12, overhead_s=0.0, hidden_bytes=8192,
        num_layers=32, tensor_parallel_size=1, link_bytes_per_s=450e9, max_num_batched_tokens=2048,
    )  # fmt: skip
    return Roofline(**{**fields, **changes})


def test_crossover_batch_is_peak_over_twice_bandwidth_per_param():
    r = _roofline(weight_bytes=2 * 8_000_000_000)  # bf16: 2 bytes per parameter
    expected = 989.5e12 / (2 * 3.35e12 / 2)  # peak_flops / (2 * bandwidth / bytes_per_param) = 295.4
    assert r.compute_bound_batch(0) == pytest.approx(expected, rel=1e-12)
    memory, compute = r.decode_times(expected, 0)
    assert memory == pytest.approx(compute, rel=1e-12)


def test_crossover_moves_with_context_and_vanishes_when_kv_reads_dominate():
    r = _roofline()
    ctx = 100
    b = r.compute_bound_batch(ctx)
    memory, compute = r.decode_times(b, ctx)
    assert memory == pytest.approx(compute, rel=1e-9) and b > r.compute_bound_batch(0)
    # from L = (2P/F) / (kv/BW - 4a/F) ~ 430 tokens of context on, a sequence's KV read outweighs its FLOPs
    limit = (2 * 8e9 / 989.5e12) / (131_072 / 3.35e12 - 4 * 32 * 4096 / 989.5e12)
    assert r.compute_bound_batch(0.99 * limit) is not None and r.compute_bound_batch(1.01 * limit) is None


def test_decode_and_prefill_times_by_hand():
    r = _roofline(overhead_s=0.002)
    # batch 4 at context 100: bytes = 16e9 + 4*100*131072; FLOPs = 4*(2*8e9 + 4*32*4096*100): memory-bound
    t = r.decode_step_s(4, 100)
    assert t == pytest.approx((16e9 + 4 * 100 * 131_072) / 3.35e12 + 0.002, rel=1e-12)
    # prefill of 4096 tokens: 2 chunks; FLOPs = 2*7e9*4096 + 4*32*4096 * 4096^2/2: compute-bound
    flops = 2 * 7e9 * 4096 + 4 * 32 * 4096 * 4096**2 / 2
    assert r.prefill_s(4096) == pytest.approx(flops / 989.5e12 + 2 * 0.002, rel=1e-12)


def test_tensor_parallel_halves_the_work_and_adds_allreduces():
    spec = load_model_spec(config_path("Llama-3.1-8B"))
    gpu = create_gpu("H100-SXM")
    kw = dict(weight_bytes=10**9, kv_bytes_per_token=1000, matmul="bf16", dtype_bytes=2)
    one = create_roofline(spec, gpu, UNIT, **kw)
    two = create_roofline(spec, gpu, UNIT, tensor_parallel_size=2, **kw)
    assert two.decode_params * 2 == one.decode_params
    allreduce = 2 * 32 * (10e-6 + 2 * (1 / 2) * 8 * 4096 * 2 / 450e9)  # 2 per layer, ring over 2 GPUs
    assert two.decode_step_s(8, 0) - one.decode_step_s(8, 0) == pytest.approx(allreduce, rel=1e-9)


def test_load_point_obeys_littles_law():
    r, w = _roofline(overhead_s=0.001), Workload(prompt_len=1000, output_len=200)
    for c in (1, 7, 64):
        p = load_point(r, w, c)
        e2e_s = (p.ttft_ms + (w.output_len - 1) * p.itl_ms) / 1e3
        assert p.requests_per_s * e2e_s == pytest.approx(c, rel=0.02)
        assert p.output_tokens_per_s == pytest.approx(p.requests_per_s * w.output_len)


def test_gpus_for_a_target_rate_match_a_brute_force_search():
    r = _roofline(overhead_s=0.001)
    w = Workload(prompt_len=512, output_len=256, rate=95.0, slo_itl_ms=12.0, slo_ttft_ms=200)
    sizing = size_for_target(r, w, max_concurrency=256)
    feasible = [c for c in range(1, 257) if load_point(r, w, c).meets(w)]
    best_rate = max(load_point(r, w, c).requests_per_s for c in feasible)
    assert sizing.best.requests_per_s == pytest.approx(best_rate)
    assert sizing.num_replicas == math.ceil(95.0 / best_rate)
    assert sizing.expected.requests_per_s == pytest.approx(95.0 / sizing.num_replicas, rel=1e-6)
    assert sizing.expected.itl_ms <= 12.0


def test_plan_counts_gpus_as_replicas_times_tensor_parallel():
    w = Workload(prompt_len=512, output_len=128, rate=200.0, slo_itl_ms=40)
    one = create_plan(PlanConfig(model=config_path("Llama-3.1-8B"), max_model_len=8192, workload=w))
    two = create_plan(PlanConfig(model=config_path("Llama-3.1-8B"), max_model_len=8192, workload=w,
                                 tensor_parallel_size=2))  # fmt: skip
    assert one.sizing.num_replicas == math.ceil(200.0 / one.sizing.best.requests_per_s)
    assert two.sizing.num_replicas == math.ceil(200.0 / two.sizing.best.requests_per_s)


def test_does_not_fit_and_names_the_smallest_setup_that_does():
    # Llama-3.1-8B at its full 131072 context on an L4 (22.5 GiB x 0.9 = 20.25 GiB): one sequence needs 16 GiB
    # of bf16 KV or 8.25 GiB of fp8 KV (67,584 B/token). bf16 weights (15 GiB) leave too little either way;
    # W8A16 weights (8.5 GiB) + fp8 KV fit on one GPU, the most precise single-GPU setup.
    llama = config_path("Llama-3.1-8B")
    plan = create_plan(PlanConfig(model=llama, gpu="L4"))
    assert not plan.fits
    assert plan.smallest_fit == "W8A16 on 1 x L4 (tensor parallel 1), KV cache fp8"
    assert not create_plan(PlanConfig(model=llama, gpu="L4", kv_cache_dtype="fp8")).fits
    assert create_plan(PlanConfig(model=llama, gpu="L4", scheme="W8A16", kv_cache_dtype="fp8")).fits
    on_a100 = create_plan(PlanConfig(model=llama, gpu="A100-40GB", max_model_len=131072))
    assert on_a100.fits


def test_fp8_weights_are_dequantized_on_gpus_without_fp8():
    a100 = create_plan(PlanConfig(model=config_path("Mistral-7B-v0.3"), gpu="A100-80GB", scheme="FP8_DYNAMIC"))
    h100 = create_plan(PlanConfig(model=config_path("Mistral-7B-v0.3"), gpu="H100-SXM", scheme="FP8_DYNAMIC"))
    assert a100.memory.dequantized_at_load and not h100.memory.dequantized_at_load
    assert a100.memory.resident_bytes == 2 * 7_248_023_552 and h100.memory.resident_bytes == h100.memory.stored_bytes
