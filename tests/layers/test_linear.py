"""The dense Linear on CPU: its weight is packed once at load for its GEMM (the native kernel on AVX-512,
oneDNN otherwise), and the result of every batch size equals the plain matmul of the fused shards (bit for
bit where the same oneDNN kernel runs both)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tachyon.kernels import cpu_gemm
from tachyon.layers.linear import NATIVE, PREPACKED, Linear, finish_loading
from tachyon.layers.vocab_embedding import VocabParallelEmbedding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_dense_linear_equals_the_plain_matmul(dtype):
    gen = torch.Generator().manual_seed(0)
    shards = {"q": 96, "k": 32, "v": 32}
    weights = {s: torch.randn(n, 128, generator=gen).to(dtype) for s, n in shards.items()}
    bias = {s: torch.randn(n, generator=gen).to(dtype) for s, n in shards.items()}
    layer = Linear(128, shards, bias=True, dtype=dtype)
    for s in shards:
        layer.load_shard("weight", weights[s], s)
        layer.load_shard("bias", bias[s], s)
    finish_loading(layer)
    native = cpu_gemm.supports(dtype)
    assert layer.method.kernel == (NATIVE if native else PREPACKED) and layer.weight is None  # no second copy
    w, b = torch.cat(list(weights.values())), torch.cat(list(bias.values()))
    for rows in (1, 7, 64, 300):
        x = torch.randn(rows, 128, generator=gen).to(dtype)
        if dtype == torch.bfloat16 and not native:  # F.linear runs the same oneDNN kernel, reordering each call
            assert torch.equal(layer(x), F.linear(x, w, b))
        elif dtype == torch.bfloat16:  # float32 sums in another order, then one bf16 rounding: within an ulp
            torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=0, rtol=2**-7)
        else:  # the native kernel or oneDNN instead of MKL: another summation order
            torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_is_prepacked_and_an_untied_one_keeps_no_plain_copy(tied):
    head = VocabParallelEmbedding(1000, 64, torch.bfloat16)
    weight = torch.randn(1000, 64).to(torch.bfloat16)
    head.load_weight(weight)
    head.pack_head(embeds_too=tied)
    hidden = torch.randn(5, 64).to(torch.bfloat16)
    torch.testing.assert_close(head.logits(hidden), F.linear(hidden, weight), atol=0, rtol=2**-7)
    assert (head.weight is not None) == tied
    if tied:
        assert torch.equal(head(torch.tensor([3, 999])), weight[[3, 999]])
