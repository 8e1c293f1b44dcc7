"""The Triton backend inside the whole engine: a tiny Llama served with `attention_backend="triton"`
(Triton's interpreter on CPU, the real kernel on a GPU) gives the PyTorch backend's greedy tokens
through prefill chunks, decodes and prefix-cache hits."""

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from transformers import LlamaConfig  # noqa: E402

from tachyon import LLM, SamplingParams  # noqa: E402
from tachyon.kernels.triton_runtime import interpreted  # noqa: E402
from tests.reference import save_tiny_model  # noqa: E402

if not ON_GPU and not interpreted():
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set", allow_module_level=True)

PROMPTS = [[504, 3575, 282, 4649, 314], list(range(1000, 1040)), list(range(1000, 1040)) + [5, 6]]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, hf_tokenizer):
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(config, path, hf_tokenizer)
    return str(path)


def test_triton_backend_matches_torch_backend_in_the_engine(tiny_llama):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    device = "cuda" if ON_GPU else "cpu"
    args = dict(device=device, max_num_batched_tokens=32, kv_cache_memory=8 << 20)
    expected = [
        o.outputs[0].token_ids for o in LLM(tiny_llama, attention_backend="torch", **args).generate(PROMPTS, params)
    ]
    llm = LLM(tiny_llama, attention_backend="triton", **args)
    assert llm.engine.runner.backend.name == "triton"
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert got == expected
    again = llm.generate(PROMPTS[2], params)[0]  # served mostly from the prefix cache
    assert again.num_cached_tokens == 32 and again.outputs[0].token_ids == expected[2]
