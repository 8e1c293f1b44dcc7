"""8-bit KV cache in the torch backend: what it writes (codes and per-(token, head) scales) and what it
attends over (the dequantized keys and values) against the float64 reference on the same values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tachyon.layers.attention.backend import create_attention_backend
from tests.layers.attention_cases import make_case, reference_attention

CODE_MAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def fake_quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., D] -> (codes, scales [...], dequantized values): absmax over D maps to the type's max code."""
    scale = x.float().abs().amax(-1) / CODE_MAX[dtype]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scaled = x.float() / scale[..., None]
    codes = scaled.to(dtype) if dtype.is_floating_point else torch.round(scaled).to(dtype)
    return codes, scale, codes.float() * scale[..., None]


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize(
    "query_lens,seq_lens,heads,kv_heads,head_dim",
    [([5, 1, 1, 17], [5, 40, 3, 33], 9, 3, 64), ([3, 1], [19, 64], 8, 2, 16)],
)
def test_quantized_cache_attends_over_its_dequantized_values(dtype, query_lens, seq_lens, heads, kv_heads, head_dim):
    case = make_case(query_lens, seq_lens, heads, kv_heads, head_dim)
    codes, scales, history = fake_quantize(case.kv_cache, dtype)  # the pool's earlier tokens, already 8-bit
    kv_cache, kv_scales = codes.clone(), scales.clone()
    backend = create_attention_backend("torch", torch.device("cpu"))
    out = backend.forward(case.query, case.key, case.value, kv_cache, case.meta, case.scale, kv_scales)

    new_k, new_v = fake_quantize(case.key, dtype), fake_quantize(case.value, dtype)
    reference_case = dataclasses.replace(case, key=new_k[2], value=new_v[2], kv_cache=history)
    expected, _ = reference_attention(reference_case)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    slots = case.meta.slot_mapping
    for i, (want_codes, want_scales, _) in enumerate((new_k, new_v)):
        assert torch.equal(kv_cache[i].flatten(0, 1)[slots].float(), want_codes.float())
        torch.testing.assert_close(kv_scales[i].flatten(0, 1)[slots], want_scales, rtol=1e-6, atol=0)
    # and it is attention over nearly the original values
    exact, _ = reference_attention(case)
    assert (out.double() - exact).abs().max() < 0.1 * exact.abs().max()
