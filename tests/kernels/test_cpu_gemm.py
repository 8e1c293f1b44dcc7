"""The native GEMM (kernels/cpu_gemm.cpp), bf16 and float32, against a float64 matmul of the same inputs:
ragged output and input sizes (panel, vector and bf16 pair tails), every row-tail count, bias, strided
inputs; and each row's result bit-identical in any batch and on any number of threads. bf16 runs twice
where the CPU has AMX: on the tile unit, and on vdpbf16ps in a build without it (-mno-amx-tile)."""

import pytest
import torch

from tachyon.kernels import cpu_elementwise, cpu_gemm

NO_AMX = ("-mno-amx-tile",)
BUILDS = [
    pytest.param(
        dtype,
        flags,
        id=f"{str(dtype)[6:]}{'-no-amx' if flags else ''}",
        marks=pytest.mark.skipif(not cpu_gemm.supports(dtype, flags), reason=f"no native {dtype} GEMM here"),
    )
    for dtype, flags in ((torch.bfloat16, ()), (torch.bfloat16, NO_AMX), (torch.float32, ()))
    if not flags or cpu_gemm.uses_amx(dtype)  # the vector bf16 path is the default build's elsewhere
]


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ weight.double().T
    return y if bias is None else y + bias.double()


def assert_rounded_from(actual: torch.Tensor, exact: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Within half an ulp of the float64 result (the output rounding) plus what float32 sums can lose,
    K roundings of at most |x| . |w| * 2^-24 each."""
    sum_error = (x.double().abs() @ weight.double().abs().T) * x.shape[-1] * 2**-24
    bound = exact.abs() * torch.finfo(actual.dtype).eps / 2 + sum_error + 1e-30
    excess = (actual.double() - exact).abs() - bound
    assert excess.max().item() <= 0, f"off by {excess.max().item():.3g} beyond the bound"


@pytest.mark.parametrize("dtype,flags", BUILDS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "rows,out_features,in_features",
    [(1, 576, 576), (64, 960, 576), (300, 3072, 576), (17, 576, 1536), (13, 100, 33), (9, 7, 2), (3, 48, 1)],
)
def test_gemm_matches_float64(rows, out_features, in_features, bias, dtype, flags):
    gen = torch.Generator().manual_seed(rows * out_features + in_features)
    weight = torch.randn(out_features, in_features, generator=gen).to(dtype)
    b = torch.randn(out_features, generator=gen).to(dtype) if bias else None
    wide = torch.randn(rows, in_features + 5, generator=gen).to(dtype)
    x = wide[:, 3 : 3 + in_features]  # rows of a wider buffer, as a split would give
    packed = cpu_gemm.pack(weight, flags)
    y = cpu_gemm.linear(x, packed, b)
    assert y.shape == (rows, out_features) and y.dtype == dtype
    assert_rounded_from(y, reference(x, weight, b), x, weight)


@pytest.mark.parametrize("dtype,flags", BUILDS)
def test_every_row_tail_and_the_batch_leave_a_row_bit_identical(dtype, flags):
    """Rows 0..MR-1 past the last full tile (every count up to two AMX tiles), rows alone, and one or two
    threads: the same bits."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(200, 130, generator=gen).to(dtype)
    x = torch.randn(40, 130, generator=gen).to(dtype)
    packed = cpu_gemm.pack(weight, flags)
    full = cpu_gemm.linear(x, packed, None)
    for rows in range(1, 34):
        assert torch.equal(cpu_gemm.linear(x[:rows], packed, None), full[:rows])
    assert torch.equal(cpu_gemm.linear(x[7:8], packed, None), full[7:8])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(cpu_gemm.linear(x, packed, None), full)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not cpu_gemm.supports(torch.bfloat16), reason="no native bf16 GEMM here")
def test_batched_inputs_and_a_wrong_width():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 32, generator=gen).bfloat16()
    packed = cpu_gemm.pack(weight)
    x = torch.randn(2, 3, 32, generator=gen).bfloat16()
    assert torch.equal(cpu_gemm.linear(x, packed, None), cpu_gemm.linear(x.reshape(6, 32), packed, None).view(2, 3, 64))
    assert cpu_gemm.linear(x[:0], packed, None).shape == (0, 3, 64)
    with pytest.raises(ValueError, match="33 features; the layer takes torch.bfloat16 with 32"):
        cpu_gemm.linear(torch.zeros(1, 33, dtype=torch.bfloat16), packed, None)
    with pytest.raises(ValueError, match="input torch.float32 with 32 features"):
        cpu_gemm.linear(torch.zeros(1, 32), packed, None)


@pytest.mark.skipif(not cpu_gemm.uses_amx(torch.bfloat16), reason="no AMX here: gate/up pairing is AMX-only")
@pytest.mark.parametrize("rows,size,in_features,bias", [(64, 1536, 576, False), (7, 48, 100, True), (33, 32, 33, True)])
def test_paired_gate_up_gives_the_plain_output_and_fuses_silu_bit_exactly(rows, size, in_features, bias):
    """Packed with gate and up paired per panel: `linear` still writes the plain column order, and
    `silu_and_mul` gives the very bits of the elementwise kernel on the plain GEMM's output."""
    gen = torch.Generator().manual_seed(size + rows)
    weight = torch.randn(2 * size, in_features, generator=gen).bfloat16()
    b = torch.randn(2 * size, generator=gen).bfloat16() if bias else None
    x = torch.randn(rows, in_features, generator=gen).bfloat16()
    plain, paired = cpu_gemm.pack(weight), cpu_gemm.pack_halves(weight)
    assert paired is not None and paired.halves
    y = cpu_gemm.linear(x, plain, b)
    assert torch.equal(cpu_gemm.linear(x, paired, b), y)
    assert torch.equal(cpu_gemm.silu_and_mul(x, paired, b), cpu_elementwise.silu_and_mul(y))
    assert cpu_gemm.pack_halves(torch.randn(2 * 24, 64).bfloat16()) is None  # halves not a multiple of 16
    assert cpu_gemm.pack_halves(weight.float()) is None
