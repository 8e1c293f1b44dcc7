"""Quantization math as pure functions on CPU tensors: scales and zero points per tensor / channel / group,
round-to-nearest quantize, dequantize, and int32 packing. `tachyon.quantization.compressed_tensors` calls
them to write and read checkpoints; the engine's quantized linear methods can reuse `dequantize`.

Weights are [out_features, in_features]; a group is `group_size` consecutive input columns of one row.
compressed-tensors (0.20) refuses to (de)quantize when in_features is not a multiple of group_size, so
ragged last groups are refused here too (`check_group_size`).
"""

from __future__ import annotations

import torch

from tachyon.quantization.schemes import QuantArgs

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "check_group_size",
    "compute_qparams",
    "dequantize",
    "int_range",
    "pack_int32",
    "quantize",
    "round_to_nearest",
    "unpack_int32",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0


def int_range(num_bits: int) -> tuple[int, int]:
    """Signed range of a `num_bits` integer, e.g. (-8, 7) for 4 bits."""
    return -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1


def check_group_size(in_features: int, group_size: int, name: str = "weight") -> None:
    """Refuse ragged groups, as compressed-tensors' own (de)quantization does."""
    if in_features % group_size:
        hint = _largest_pow2_divisor(in_features)
        raise ValueError(
            f"{name}: in_features {in_features} is not a multiple of group_size {group_size}; compressed-tensors "
            f"cannot load ragged groups. Choose a group_size that divides it (e.g. {hint})"
            " or per-channel (group_size=-1)"
        )


def _largest_pow2_divisor(n: int, cap: int = 128) -> int:
    size = cap
    while n % size:
        size //= 2
    return size


def _grouped(weight: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """[out, in] -> [out, num_groups, group_size] (group), [out, 1, in] (channel), [1, 1, out*in] (tensor)."""
    if args.strategy == "group":
        check_group_size(weight.shape[-1], args.group_size)
        return weight.unflatten(-1, (weight.shape[-1] // args.group_size, args.group_size))
    if args.strategy == "channel":
        return weight.unsqueeze(1)
    if args.strategy == "tensor":
        return weight.reshape(1, 1, -1)
    raise ValueError(f"strategy {args.strategy!r} is for activations, not weights")


def _scale_shape(weight: torch.Tensor, args: QuantArgs) -> tuple[int, ...]:
    """compressed-tensors' stored shapes: [out, num_groups], [out, 1], or [1]."""
    if args.strategy == "tensor":
        return (1,)
    if args.strategy == "channel":
        return (weight.shape[0], 1)
    return (weight.shape[0], weight.shape[-1] // args.group_size)


def compute_qparams(weight: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max scale (in the weight's dtype) and, for asymmetric int, an int8 zero point. Symmetric:
    scale = absmax / q_max, so every value rounds within scale/2 (LLM Compressor divides by 2^(b-1)
    instead and clips the positive extreme by one step); fp8: absmax / 448. Zero scales become eps."""
    groups = _grouped(weight.float(), args)  # [rows, num_groups, group_len]
    lo = groups.amin(dim=-1).clamp(max=0)  # 0 must stay exactly representable
    hi = groups.amax(dim=-1).clamp(min=0)
    zero_point = None
    if args.type == "float":
        scale = torch.maximum(-lo, hi) / FP8_MAX
    elif args.symmetric:
        scale = torch.maximum(-lo, hi) / int_range(args.num_bits)[1]
    else:
        q_min, q_max = int_range(args.num_bits)
        scale = (hi - lo) / (q_max - q_min)
    scale = scale.to(weight.dtype)
    scale = torch.where(scale == 0, torch.finfo(weight.dtype).eps, scale)
    if args.type == "int" and not args.symmetric:
        q_min, q_max = int_range(args.num_bits)
        zero_point = torch.round(q_min - lo / scale.float()).clamp(q_min, q_max).to(torch.int8)
        zero_point = zero_point.reshape(_scale_shape(weight, args))
    return scale.reshape(_scale_shape(weight, args)), zero_point


def quantize(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs
) -> torch.Tensor:
    """Round to nearest (ties to even) and clamp: int8 holding `num_bits` values, or float8_e4m3fn saturated
    at +-448. Same shape as `weight`."""
    groups = _grouped(weight.float(), args)
    scaled = groups / scale.float().reshape(groups.shape[0], -1, 1)
    if args.type == "float":
        return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(weight.shape)
    if zero_point is not None:
        scaled = scaled + zero_point.float().reshape(groups.shape[0], -1, 1)
    q_min, q_max = int_range(args.num_bits)
    return torch.round(scaled).clamp(q_min, q_max).to(torch.int8).reshape(weight.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs) -> torch.Tensor:
    """(q - zero_point) * scale in the scale's dtype, the same operations compressed-tensors performs."""
    groups = _grouped(q, args)
    value = groups.to(scale.dtype)
    if zero_point is not None:
        value = value - zero_point.to(scale.dtype).reshape(groups.shape[0], -1, 1)
    return (value * scale.reshape(groups.shape[0], -1, 1)).reshape(q.shape)


# Packing (pack-quantized), num_bits b in 1..8, along dim 1 (weights) or dim 0 (zero points):
#
#   values are offset to unsigned (v + 2^(b-1)); element i of a row occupies bits [i*b, i*b + b) of the
#   row's bit stream, least significant first; the stream is cut into int32 words (word i*b // 32).
#   b=4:  word 0 = e7 e6 e5 e4 e3 e2 e1 e0   (e0 in bits 0-3)      8 values per word
#   b=8:  word 0 = e3 e2 e1 e0               (e0 in bits 0-7)      4 values per word
#   A value may straddle two words when 32 % b != 0; the last word is zero-padded.


def pack_int32(values: torch.Tensor, num_bits: int, packed_dim: int = 1) -> torch.Tensor:
    """int8 [rows, cols] -> int32 [rows, ceil(cols*b/32)] (packed_dim=1) or the transpose for packed_dim=0."""
    if values.dtype != torch.int8 or values.ndim != 2 or not 1 <= num_bits <= 8:
        raise ValueError(f"pack_int32 needs a 2-D int8 tensor and 1..8 bits, got {values.dtype} {num_bits}")
    rows = values.transpose(0, 1) if packed_dim == 0 else values
    unsigned = (rows.to(torch.int64) + (1 << (num_bits - 1))) & ((1 << num_bits) - 1)
    num_rows, num_cols = unsigned.shape
    num_words = -(-num_cols * num_bits // 32)
    bit = torch.arange(num_cols, dtype=torch.int64) * num_bits  # first bit of each element
    words = torch.zeros(num_rows, num_words + 1, dtype=torch.int64)
    words.index_add_(1, bit // 32, unsigned << (bit % 32))  # high bits past 32 spill, fixed below
    spill = words[:, :num_words] >> 32
    words = words[:, :num_words] & 0xFFFFFFFF
    words[:, 1:] += spill[:, :-1]
    packed = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return packed.transpose(0, 1).contiguous() if packed_dim == 0 else packed


def unpack_int32(packed: torch.Tensor, num_bits: int, size: int, packed_dim: int = 1) -> torch.Tensor:
    """Inverse of `pack_int32`: `size` is the unpacked length along `packed_dim`. Returns signed int8."""
    if packed.dtype != torch.int32 or packed.ndim != 2:
        raise ValueError(f"unpack_int32 needs a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    rows = packed.transpose(0, 1) if packed_dim == 0 else packed
    words = rows.to(torch.int64) & 0xFFFFFFFF
    words = torch.cat([words, torch.zeros_like(words[:, :1])], dim=1)  # room for a straddling read
    bit = torch.arange(size, dtype=torch.int64) * num_bits
    first = bit // 32
    pair = words[:, first] | (words[:, first + 1] << 32)  # 64-bit window holding the whole element
    values = ((pair >> (bit % 32)) & ((1 << num_bits) - 1)) - (1 << (num_bits - 1))
    values = values.to(torch.int8)
    return values.transpose(0, 1).contiguous() if packed_dim == 0 else values


def round_to_nearest(
    weight: torch.Tensor, args: QuantArgs, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Min-max quantize then dequantize, with the scales computed in `dtype` (the checkpoint's; default the
    weight's): (dequantized weight in `weight`'s dtype, scale, zero point)."""
    stored = weight.to(dtype or weight.dtype)
    scale, zero_point = compute_qparams(stored, args)
    fake = dequantize(quantize(stored, scale, zero_point, args), scale, zero_point, args)
    return fake.to(weight.dtype), scale, zero_point
