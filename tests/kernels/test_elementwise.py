"""The fused elementwise layers (RMSNorm + residual, rotary, SiLU-and-mul) against HF transformers' own
Llama modules, in float32 and bfloat16, on ragged sizes, strided inputs and the threaded path: the native
CPU kernels, and the Triton ones (on CPU tensors under TRITON_INTERPRET=1 without a GPU). Also the native
greedy argmax against torch.argmax."""

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

from transformers.activations import ACT2FN  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb  # noqa: E402

from tachyon.kernels import cpu_elementwise, fused_elementwise  # noqa: E402
from tachyon.kernels.triton_runtime import interpreted  # noqa: E402
from tachyon.layers.rotary import RotaryEmbedding  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]


def _native():
    assert cpu_elementwise._library() is not None, "the native kernels must build on the test machine"
    return cpu_elementwise, "cpu", True


def _triton():
    if not ON_GPU and not interpreted():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    # Triton's interpreter rounds float32 -> bf16 toward zero (a GPU rounds to nearest even, as torch)
    return fused_elementwise, "cuda" if ON_GPU else "cpu", ON_GPU


@pytest.fixture(params=[_native, _triton], ids=["native", "triton"])
def impl(request):
    """(the kernels' module, the device their tensors live on, whether bf16 rounds as torch's does)"""
    return request.param()


def assert_within_last_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to the last two bits of the dtype: a sum of squares or an exp taken in another order moves
    a few float32 results by an ulp or three (bf16 ones, rounded coarser, by one at most)."""
    eps = torch.finfo(expected.dtype).eps
    torch.testing.assert_close(actual.double(), expected.double(), rtol=4 * eps, atol=1e-30)


def assert_same_rounding(actual: torch.Tensor, expected: torch.Tensor, rounds_like_torch: bool) -> None:
    """Bit-identical where the same ops round the same way; else within a few ulps of the largest value
    (a difference of two rounded products can cancel down to a small result)."""
    if rounds_like_torch or expected.dtype != torch.bfloat16:
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    else:
        eps = torch.finfo(expected.dtype).eps
        atol = 4 * eps * expected.abs().max().item()
        torch.testing.assert_close(actual.double(), expected.double(), rtol=4 * eps, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 576), (64, 576), (300, 100)])  # 100: a ragged last vector
def test_rms_norm_with_and_without_residual_matches_hf(impl, rows, hidden, dtype):
    kernels, device, rounds_like_torch = impl
    gen = torch.Generator().manual_seed(rows + hidden)
    wide = torch.randn(rows, hidden + 7, generator=gen).to(device, dtype)
    x = wide[:, 3 : 3 + hidden]  # a strided view, as a split of a wider output would be
    residual = torch.randn(rows, hidden, generator=gen).to(device, dtype)
    hf = LlamaRMSNorm(hidden, eps=1e-5).to(device, dtype)
    hf.weight.data = torch.randn(hidden, generator=gen).to(device, dtype)

    assert_within_last_bits(kernels.rms_norm(x, hf.weight, 1e-5), hf(x))
    out, summed = kernels.rms_norm(x, hf.weight, 1e-5, residual)
    assert_same_rounding(summed, residual + x, rounds_like_torch)  # HF's `residual + hidden_states`
    assert_within_last_bits(out, hf(residual + x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,q_heads,k_heads,head_dim", [(1, 9, 3, 64), (70, 8, 2, 128), (33, 4, 4, 80)])
def test_rotary_is_bit_identical_to_hf(impl, tokens, q_heads, k_heads, head_dim, dtype):
    kernels, device, rounds_like_torch = impl
    gen = torch.Generator().manual_seed(tokens)
    rotary = RotaryEmbedding(head_dim, 4096, 10000.0, {"rope_type": "default"}).to(device)
    qkv = torch.randn(tokens, (q_heads + 2 * k_heads) * head_dim, generator=gen).to(device, dtype)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + k_heads) * head_dim].view(tokens, k_heads, head_dim)
    positions = torch.randint(0, 4096, (tokens,), generator=gen).to(device)

    q_out, k_out = kernels.rotary(positions, q, k, rotary.cos, rotary.sin)
    # HF's layout: [batch, heads, tokens, head_dim], cos/sin [batch, tokens, head_dim] in the model's dtype
    cos, sin = rotary.cos[positions][None].to(dtype), rotary.sin[positions][None].to(dtype)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    assert_same_rounding(q_out, q_hf[0].transpose(0, 1), rounds_like_torch)
    assert_same_rounding(k_out, k_hf[0].transpose(0, 1), rounds_like_torch)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's e^100: inf, as on a GPU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", [(1, 1536), (64, 1536), (300, 40)])
def test_silu_and_mul_matches_hf(impl, rows, size, dtype):
    kernels, device, rounds_like_torch = impl
    gen = torch.Generator().manual_seed(rows + size)
    gate_up = (torch.randn(rows, 2 * size, generator=gen) * 4).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # the far tails of the sigmoid, and zero
    gate_up = gate_up.to(device)
    expected = ACT2FN["silu"](gate_up[:, :size]) * gate_up[:, size:]
    if kernels is cpu_elementwise and dtype == torch.bfloat16:  # a table of PyTorch's own silu
        torch.testing.assert_close(kernels.silu_and_mul(gate_up), expected, atol=0, rtol=0)
    else:
        assert_within_last_bits(kernels.silu_and_mul(gate_up), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 49152), (64, 49152), (5, 37), (3, 7)])  # ragged tails, n < 16
def test_native_argmax_picks_what_torch_argmax_picks(rows, n, dtype):
    """The first maximum, ties included (common in bf16), NaN counting as the maximum, -inf rows -> 0;
    on a strided view (logits rows of a wider buffer)."""
    gen = torch.Generator().manual_seed(rows * n)
    wide = (torch.randn(rows, n + 5, generator=gen) * 3).round().to(dtype)  # rounding makes many ties
    x = wide[:, 2 : 2 + n]
    if rows >= 5:
        x[1] = float("-inf")
        x[2, n // 2] = float("nan")
        x[2, n - 1] = float("nan")
        x[3, -1] = 1e30  # the maximum in the tail
        x[4, :] = 7.0  # all equal
    torch.testing.assert_close(cpu_elementwise.argmax(x), x.argmax(-1), atol=0, rtol=0)


def test_float32_layers_stay_bit_identical_to_hf_and_the_log_says_so():
    """float32 is the reference precision: the layers take only kernels that round as PyTorch does."""
    from tachyon.layers import fused
    from tachyon.layers.activation import silu_and_mul
    from tachyon.layers.norm import RMSNorm

    gen = torch.Generator().manual_seed(0)
    x, residual = torch.randn(64, 576, generator=gen), torch.randn(64, 576, generator=gen)
    ours, hf = RMSNorm(576, 1e-5), LlamaRMSNorm(576, eps=1e-5)
    ours.weight.data = hf.weight.data = torch.randn(576, generator=gen)
    torch.testing.assert_close(ours(x, residual)[0], hf(residual + x), atol=0, rtol=0)
    gate_up = torch.randn(64, 3072, generator=gen)
    torch.testing.assert_close(
        silu_and_mul(gate_up), ACT2FN["silu"](gate_up[:, :1536]) * gate_up[:, 1536:], atol=0, rtol=0
    )
    cpu = torch.device("cpu")
    assert fused.describe(torch.float32, cpu).startswith("RMSNorm and SiLU-and-mul: PyTorch ops; rotary: native")
    assert fused.describe(torch.bfloat16, cpu) == "RMSNorm and SiLU-and-mul: native kernel; rotary: native kernel"
