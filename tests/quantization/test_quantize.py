"""The pure quantization math against independent bounds, and packing against compressed-tensors' own."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

from tachyon.quantization.quantize import (
    FP8_DTYPE,
    FP8_MAX,
    check_group_size,
    compute_qparams,
    dequantize,
    int_range,
    pack_int32,
    quantize,
    unpack_int32,
)
from tachyon.quantization.schemes import QuantArgs, create_scheme

SHAPES = [(8, 128), (33, 256), (5, 64)]
INT_ARGS = [
    QuantArgs(4, "int", "group", group_size=32),
    QuantArgs(8, "int", "group", group_size=64),
    QuantArgs(4, "int", "channel"),
    QuantArgs(8, "int", "channel"),
    QuantArgs(4, "int", "group", symmetric=False, group_size=32),
    QuantArgs(8, "int", "tensor"),
]


def _expand(per_group: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[out, num_groups] or [1] -> [out, in], each group's value repeated over its columns."""
    if per_group.numel() == 1:
        return per_group.reshape(1, 1).expand_as(weight)
    return per_group.repeat_interleave(weight.shape[1] // per_group.shape[1], dim=1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("args", INT_ARGS, ids=str)
def test_int_roundtrip_within_half_step(shape, args):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.05
    scale, zero_point = compute_qparams(weight, args)
    q = quantize(weight, scale, zero_point, args)
    q_min, q_max = int_range(args.num_bits)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert int(q.min()) >= q_min and int(q.max()) <= q_max
    error = (weight - dequantize(q, scale, zero_point, args)).abs()
    assert torch.all(error <= _expand(scale, weight) / 2 * (1 + 1e-5))
    assert (zero_point is not None) == (not args.symmetric)


def test_symmetric_uses_full_positive_range_and_zero_is_exact():
    weight = torch.tensor([[0.0, 0.7, -0.7, 0.35] * 8])
    args = QuantArgs(4, "int", "group", group_size=32)
    scale, _ = compute_qparams(weight, args)
    q = quantize(weight, scale, None, args)
    assert torch.allclose(scale, torch.tensor([[0.1]]))
    assert q[0, :4].tolist() == [0, 7, -7, 4]  # 3.5 rounds half to even


def test_asymmetric_zero_point_maps_the_range_onto_0_15():
    weight = torch.linspace(0.5, 2.0, 64).reshape(2, 32)  # all positive: the range is [0, max]
    args = QuantArgs(4, "int", "group", symmetric=False, group_size=32)
    scale, zero_point = compute_qparams(weight, args)
    assert zero_point.dtype == torch.int8 and zero_point.tolist() == [[-8], [-8]]
    assert torch.allclose(scale.flatten(), weight.amax(dim=1) / 15)
    q = quantize(weight, scale, zero_point, args)
    assert int(q.max()) == 7
    negative = -weight
    scale, zero_point = compute_qparams(negative, args)
    assert zero_point.tolist() == [[7], [7]]


def test_all_zero_group_gets_eps_scale_and_zero_codes():
    weight = torch.zeros(4, 64)
    args = QuantArgs(4, "int", "group", group_size=32)
    scale, _ = compute_qparams(weight, args)
    assert torch.all(scale > 0)
    assert torch.all(quantize(weight, scale, None, args) == 0)


def test_scale_keeps_weight_dtype():
    weight = torch.randn(16, 64).to(torch.bfloat16)
    scale, _ = compute_qparams(weight, QuantArgs(8, "int", "channel"))
    assert scale.dtype == torch.bfloat16 and scale.shape == (16, 1)


def test_fp8_per_channel_roundtrip_and_saturation():
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    args = QuantArgs(8, "float", "channel")
    scale, zero_point = compute_qparams(weight, args)
    q = quantize(weight, scale, zero_point, args)
    assert q.dtype == FP8_DTYPE and zero_point is None
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((32,), FP8_MAX))
    relative = (weight - dequantize(q, scale, None, args)).abs() / weight.abs().clamp(min=1e-3)
    assert float(relative.max()) <= 2**-4 + 1e-6  # e4m3: 3 mantissa bits, half-ulp relative error
    saturated = quantize(weight * 10, scale, None, args)  # a scale 10x too small must clamp, not overflow
    assert torch.isfinite(saturated.float()).all() and float(saturated.float().abs().max()) == FP8_MAX


@pytest.mark.parametrize("num_bits", [4, 8, 3])
@pytest.mark.parametrize("cols", [64, 72, 13])
def test_pack_matches_compressed_tensors_bit_for_bit(num_bits, cols):
    q_min, q_max = int_range(num_bits)
    values = torch.randint(q_min, q_max + 1, (7, cols), dtype=torch.int8)
    packed = pack_int32(values, num_bits)
    assert packed.dtype == torch.int32 and packed.shape == (7, -(-cols * num_bits // 32))
    assert torch.equal(packed, pack_to_int32(values, num_bits))
    assert torch.equal(unpack_int32(packed, num_bits, cols), values)
    assert torch.equal(unpack_from_int32(packed, num_bits, values.shape), values)


def test_pack_order_least_significant_first():
    values = torch.arange(-8, 0, dtype=torch.int8).reshape(1, 8)  # offset to 0..7
    assert pack_int32(values, 4).item() == 0x76543210


@pytest.mark.parametrize("num_bits", [4, 8])
def test_pack_along_output_dim(num_bits):
    values = torch.randint(*int_range(num_bits), (24, 5), dtype=torch.int8)
    packed = pack_int32(values, num_bits, packed_dim=0)
    assert torch.equal(packed, pack_to_int32(values, num_bits, packed_dim=0))
    assert torch.equal(unpack_int32(packed, num_bits, 24, packed_dim=0), values)


def test_ragged_groups_are_refused_like_compressed_tensors():
    with pytest.raises(ValueError, match="576 is not a multiple of group_size 128.*e.g. 64"):
        check_group_size(576, 128)
    with pytest.raises(ValueError, match="not a multiple"):
        compute_qparams(torch.randn(4, 576), QuantArgs(4, "int", "group", group_size=128))


def test_create_scheme_overrides_and_errors():
    assert create_scheme("w4a16").weights.group_size == 128
    assert create_scheme("W4A16", group_size=64).weights.group_size == 64
    assert create_scheme("W4A16", group_size=-1).weights.strategy == "channel"
    with pytest.raises(ValueError, match="supported: W8A16, W4A16, W4A16_ASYM, W8A8, FP8_DYNAMIC, FP8"):
        create_scheme("W3A16")
    with pytest.raises(ValueError, match="only to grouped"):
        create_scheme("W8A8", group_size=64)
