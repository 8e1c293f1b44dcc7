"""The dense Linear on CPU: its weight is packed once at load for its GEMM (the native kernel on AVX-512,
oneDNN otherwise), and the result of every batch size equals the plain matmul of the fused shards (bit for
bit where the same oneDNN kernel runs both)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tachyon.kernels import cpu_gemm
from tachyon.layers.activation import silu_and_mul
from tachyon.layers.linear import NATIVE, NATIVE_AMX, PREPACKED, Linear, finish_loading
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
    expected_kernel = (NATIVE_AMX if cpu_gemm.uses_amx(dtype) else NATIVE) if native else PREPACKED
    assert layer.method.kernel == expected_kernel and layer.weight is None  # no second copy
    w, b = torch.cat(list(weights.values())), torch.cat(list(bias.values()))
    for rows in (1, 7, 64, 300):
        x = torch.randn(rows, 128, generator=gen).to(dtype)
        if dtype == torch.bfloat16 and not native:  # F.linear runs the same oneDNN kernel, reordering each call
            assert torch.equal(layer(x), F.linear(x, w, b))
        elif dtype == torch.bfloat16:  # float32 sums in another order, then one bf16 rounding: within an ulp
            torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=0, rtol=2**-7)
        else:  # the native kernel or oneDNN instead of MKL: another summation order
            torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gate_up_silu_and_mul_is_the_activation_of_the_layer_output(dtype):
    """However the kernel computes it (fused into the AMX GEMM for bf16 there), a gate/up layer's
    silu_and_mul is bit for bit silu_and_mul of its output; other layers refuse it."""
    gen = torch.Generator().manual_seed(3)
    layer = Linear(64, {"gate": 96, "up": 96}, bias=True, dtype=dtype)
    for shard in ("gate", "up"):
        layer.load_shard("weight", torch.randn(96, 64, generator=gen).to(dtype), shard)
        layer.load_shard("bias", torch.randn(96, generator=gen).to(dtype), shard)
    finish_loading(layer)
    assert layer.is_gate_up
    if dtype == torch.bfloat16 and cpu_gemm.uses_amx(dtype):
        assert layer.method.packed.silu_and_mul is not None
    for rows in (1, 17, 64):
        x = torch.randn(rows, 64, generator=gen).to(dtype)
        assert torch.equal(layer.silu_and_mul(x), silu_and_mul(layer(x)))
    qkv = Linear(64, {"q": 64, "k": 32, "v": 32}, dtype=dtype)
    with pytest.raises(ValueError, match="needs a gate/up layer"):
        qkv.silu_and_mul(torch.zeros(1, 64, dtype=dtype))


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
