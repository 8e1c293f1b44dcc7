"""KV cache: bytes per token by hand for four models and every KV dtype, and the planner's block count for
a budget equal to the one the real engine logs at start-up for the same budget (default model, CPU)."""

from __future__ import annotations

import re

import pytest

from tachyon import LLM
from tachyon.plan.catalog import GPUSpec
from tachyon.plan.memory import MemorySettings, kv_bytes_per_token
from tachyon.plan.model_spec import load_model_spec, model_spec_from_config
from tachyon.plan.planner import PlanConfig, create_plan
from tachyon.plan.profile import MachineProfile, save_profile
from tachyon.plan.roofline import Efficiency
from tests.plan.helpers import config_path

# 2 (K, V) x layers x KV heads x head_dim x bytes; 8-bit: head_dim x 1 + a 4-byte fp32 scale per head
HAND = {
    "Llama-3.1-8B": {"bfloat16": 2 * 32 * 8 * 128 * 2, "fp8": 2 * 32 * 8 * (128 + 4)},
    "Qwen2.5-7B": {"bfloat16": 2 * 28 * 4 * 128 * 2, "fp8": 2 * 28 * 4 * (128 + 4)},
    "Mistral-7B-v0.3": {"bfloat16": 2 * 32 * 8 * 128 * 2, "fp8": 2 * 32 * 8 * (128 + 4)},
    "default": {"float32": 2 * 30 * 3 * 64 * 4, "bfloat16": 2 * 30 * 3 * 64 * 2, "fp8": 2 * 30 * 3 * (64 + 4)},
}
_LOG = re.compile(r"KV cache: (\d+) blocks = (\d+) tokens \((\w+), (\d+) bytes per token\)")


@pytest.mark.parametrize("model", list(HAND))
def test_kv_bytes_per_token_by_hand(model, default_config):
    spec = model_spec_from_config(default_config) if model == "default" else load_model_spec(config_path(model))
    for dtype, expected in HAND[model].items():
        if dtype == "fp8":
            for kv_dtype in ("fp8", "int8"):
                assert kv_bytes_per_token(spec, MemorySettings(kv_cache_dtype=kv_dtype)) == expected
        else:
            assert kv_bytes_per_token(spec, MemorySettings(dtype=dtype)) == expected


def test_kv_heads_split_over_tensor_parallel_ranks_and_replicate_past_them():
    spec = load_model_spec(config_path("Qwen2.5-7B"))  # 4 KV heads
    per_token = [kv_bytes_per_token(spec, MemorySettings(tensor_parallel_size=tp)) for tp in (1, 2, 4, 8)]
    assert per_token == [57_344, 28_672, 14_336, 14_336]


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("profile") / "cpu.json")
    machine = GPUSpec("test cpu", memory_gib=16, bandwidth_gbs=10, bf16_tflops=0.1)
    save_profile(MachineProfile(machine, Efficiency(0.5, 0.5, 0.01, True), "cpu", "float32", "test"), path)
    return path


@pytest.mark.parametrize(
    ("budget", "kv_dtype", "block_size"),
    [(64 << 20, "auto", 16), (50_000_017, "auto", 32), (64 << 20, "fp8", 16), (50_000_017, "int8", 16)],
)
def test_planned_capacity_equals_what_the_engine_reports(model_dir, cpu_profile, caplog, budget, kv_dtype, block_size):
    with caplog.at_level("INFO", logger="tachyon.engine.llm_engine"):
        llm = LLM(model_dir, kv_cache_memory=budget, kv_cache_dtype=kv_dtype, block_size=block_size)
    blocks, tokens, _, per_token = (int(v) if v.isdigit() else v for v in _LOG.search(caplog.text).groups())
    assert blocks == llm.engine.kv.num_blocks
    config = PlanConfig(
        model=model_dir, profile=cpu_profile, kv_cache_memory=budget, kv_cache_dtype=kv_dtype, block_size=block_size
    )
    kv = create_plan(config).memory.kv
    assert (kv.num_blocks, kv.num_tokens, kv.bytes_per_token) == (blocks, tokens, per_token)
