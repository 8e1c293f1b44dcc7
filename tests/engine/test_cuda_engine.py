"""The engine on a CUDA GPU against HF transformers on the same GPU: fp32 greedy tokens equal,
bf16 greedy agreement high (reported as a rate: bf16 kernels are not bit-exact across libraries),
the KV pool sized by profiling to `gpu_memory_utilization`, and Triton attention picked by `auto`.

Skipped without CUDA: CI has no GPU; these run on a lent GPU machine (see docs/benchmarks.md).
"""

from __future__ import annotations

import gc

import pytest
import torch

from tachyon import LLM, SamplingParams
from tests.data.prompts import PROMPTS
from tests.reference import hf_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NEW_TOKENS = 64
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


def _hf_outputs(model_dir, hf_tokenizer, dtype) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cuda").eval()
    outputs = [hf_greedy(model, hf_tokenizer(p).input_ids, NEW_TOKENS) for p in PROMPTS]
    del model
    torch.cuda.empty_cache()
    return outputs


def _prefix_agreement(ours: list[list[int]], theirs: list[list[int]]) -> float:
    """Mean fraction of each sequence generated before the first differing token."""
    total = 0.0
    for a, b in zip(ours, theirs):
        total += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) / len(a)
    return total / len(ours)


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    """fp32 must mean fp32 on both sides: TF32 matmuls would make neither side a reference."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize(
    "engine_args",
    [{}, {"max_num_batched_tokens": 32, "enable_prefix_caching": False}],
    ids=["default", "chunked-prefill-32"],
)
def test_float32_greedy_matches_hf_on_gpu(model_dir, hf_tokenizer, engine_args):
    expected = _hf_outputs(model_dir, hf_tokenizer, torch.float32)
    llm = LLM(model_dir, device="cuda", dtype="float32", gpu_memory_utilization=0.3, **engine_args)
    assert llm.engine.runner.backend.name == "triton"
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
    identical = sum(a == b for a, b in zip(got, expected))
    rate = _prefix_agreement(got, expected)
    print(f"fp32 GPU: {identical}/{len(PROMPTS)} sequences identical to HF, prefix {rate:.1%}")
    assert identical == len(PROMPTS)


def test_bfloat16_greedy_agrees_with_hf_on_gpu(model_dir, hf_tokenizer):
    expected = _hf_outputs(model_dir, hf_tokenizer, torch.bfloat16)
    llm = LLM(model_dir, device="cuda", gpu_memory_utilization=0.3)
    assert llm.engine.runner.dtype == torch.bfloat16  # auto on GPU
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
    identical = sum(a == b for a, b in zip(got, expected))
    rate = _prefix_agreement(got, expected)
    print(f"bf16 GPU: {identical}/{len(PROMPTS)} sequences identical to HF, prefix {rate:.1%}")
    assert rate >= 0.7
    first = [a[0] == b[0] for a, b in zip(got, expected)]
    assert sum(first) >= len(PROMPTS) - 1  # the first token comes from one forward pass: nearly always equal


def test_kv_pool_is_sized_by_profiling_to_the_memory_fraction(model_dir):
    gc.collect()  # engines of earlier tests must not count against this one's fraction
    torch.cuda.empty_cache()
    fraction = 0.25
    llm = LLM(model_dir, device="cuda", gpu_memory_utilization=fraction)
    runner, kv = llm.engine.runner, llm.engine.kv
    total = torch.cuda.get_device_properties(0).total_memory
    pool_bytes = kv.num_blocks * runner.kv_bytes_per_block
    assert pool_bytes > 0.5 * fraction * total  # a 135M model leaves most of the fraction to the KV cache
    torch.cuda.reset_peak_memory_stats()
    llm.generate(PROMPTS * 8, SamplingParams(temperature=0.8, max_tokens=32))
    peak = torch.cuda.max_memory_allocated()
    print(f"KV pool {pool_bytes / 2**30:.2f} GiB; peak allocated {peak / 2**30:.2f} GiB of {total / 2**30:.1f} GiB")
    assert peak <= fraction * total * 1.02


def test_cuda_graph_decode_equals_eager_as_the_batch_shrinks(model_dir):
    """Requests of different lengths finish at different steps, so decode batches run padded graphs of
    several sizes; fp32 tokens must equal the eager engine's, and decodes must really replay graphs."""
    params = [SamplingParams(temperature=0, max_tokens=8 + 5 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    eager = LLM(model_dir, device="cuda", dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
    assert eager.engine.runner.graphs is None
    expected = [o.outputs[0].token_ids for o in eager.generate(PROMPTS, params)]
    del eager
    llm = LLM(model_dir, device="cuda", dtype="float32", gpu_memory_utilization=0.3, max_num_seqs=32)
    graphs = llm.engine.runner.graphs
    assert graphs is not None and graphs.sizes == [1, 2, 4, 8, 16, 32]
    replayed: list[int] = []
    run = graphs.run
    graphs.run = lambda ids, *rest: replayed.append(len(ids)) or run(ids, *rest)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert got == expected
    assert len(set(replayed)) > 5  # many batch sizes, so padding was exercised
