"""Triton W4A16 / W8A16 GEMM against the compressed-tensors library's own decompression of the packed
weights followed by a float64 matmul, on small random shapes; and the fused layer method against the
dequantize-at-load one on a fused q/k/v layer.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter, so TRITON_INTERPRET must be set before
triton is first imported (torch may already be). There the dot runs in float32 (the interpreter's bfloat16
dot misreads the bits) and float32 -> bfloat16 casts truncate rather than round, hence the bfloat16
tolerance; loads, unpacking and stores in bfloat16 are the kernel's own. Shapes stay small.
"""

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if ON_GPU else "cpu"
triton = pytest.importorskip("triton")

from compressed_tensors.compressors.base import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402

from tachyon.kernels.quant_gemm import kernel_layout, quant_gemm  # noqa: E402
from tachyon.kernels.triton_runtime import interpreted  # noqa: E402
from tachyon.layers.linear import Linear, finish_loading  # noqa: E402
from tachyon.layers.quantized_linear import WeightOnlyIntMethod  # noqa: E402
from tachyon.quantization.compressed_tensors import compress_weight, quantization_config  # noqa: E402
from tachyon.quantization.quantize import unpack_int32  # noqa: E402
from tachyon.quantization.schemes import QuantScheme, create_scheme  # noqa: E402

if not ON_GPU and not interpreted():
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set", allow_module_level=True)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
RTOL = {FP32: 1e-5, FP16: 2e-3, BF16: 1e-2}  # of the largest output: the output's rounding dominates
CASES = [  # rows M, in K, out N, bits, group_size (-1: per channel), symmetric, activations
    (rows, cols, out, bits, group_size, symmetric, dtype)
    for rows in (1, 5, 33)  # decode pads M to 16; 33 takes a 64-row tile
    for cols, out in ((128, 64), (192, 96))  # 192: ragged last K tile per channel, columns past N
    for bits in (4, 8)
    for group_size in (32, 64, -1)
    for symmetric in (True, False)
    for dtype in (FP32, BF16)
] + [
    (1, 128, 256, 4, 64, True, BF16),  # enough output tiles for one split: bfloat16 stored directly
    (1, 256, 64, 4, 128, False, FP16),  # the presets' group of 128
    (70, 256, 96, 4, 128, True, FP32),  # two row tiles
]


def _scheme(bits: int, group_size: int, symmetric: bool) -> QuantScheme:
    scheme = create_scheme(f"W{bits}A16", group_size=group_size)
    return dataclasses.replace(scheme, weights=dataclasses.replace(scheme.weights, symmetric=symmetric))


def _checkpoint(scheme: QuantScheme, rows: int, cols: int, dtype: torch.dtype, seed: int) -> dict:
    """One Linear's stored tensors; scales in the model dtype, as a checkpoint holds them."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.1
    return compress_weight(weight.to(dtype), scheme)


def _library_weight(scheme: QuantScheme, stored: dict) -> torch.Tensor:
    """compressed-tensors' decompression, the scales widened to float64 so the reference is exact."""
    group = QuantizationConfig.model_validate(quantization_config(scheme)).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    tensors = {**stored, "weight_scale": stored["weight_scale"].double()}
    return compressor.decompress(tensors, group)["weight"].double()


def _kernel_tensors(stored: dict, bits: int) -> list[torch.Tensor | None]:
    """words, scales and zero points (None when symmetric) in the kernel's layout, on the test device."""
    zero_point = stored.get("weight_zero_point")
    if zero_point is not None:
        zero_point = unpack_int32(zero_point, bits, stored["weight_shape"][0].item(), packed_dim=0)
    tensors = kernel_layout(stored["weight_packed"], stored["weight_scale"], zero_point)
    return [None if t is None else t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize("rows,cols,out,bits,group_size,symmetric,dtype", CASES)
def test_kernel_matches_library_decompression(rows, cols, out, bits, group_size, symmetric, dtype):
    scheme = _scheme(bits, group_size, symmetric)
    stored = _checkpoint(scheme, out, cols, dtype, seed=rows + cols + out)
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = F.linear(x.double(), _library_weight(scheme, stored))
    y = quant_gemm(x.to(DEVICE), *_kernel_tensors(stored, bits), bits, scheme.weights.group_size)
    assert y.dtype == dtype and y.shape == (rows, out)
    tol = RTOL[dtype] * expected.abs().max().item()
    torch.testing.assert_close(y.cpu().double(), expected, atol=tol, rtol=RTOL[dtype])


def test_strided_activations_and_no_rows():
    scheme = _scheme(4, 32, True)
    stored = _checkpoint(scheme, 64, 128, FP32, seed=0)
    tensors = _kernel_tensors(stored, 4)
    x = torch.randn(128, 3, generator=torch.Generator().manual_seed(2)).t()  # [3, 128], column stride 3
    expected = F.linear(x.double(), _library_weight(scheme, stored))
    y = quant_gemm(x.to(DEVICE), *tensors, 4, 32)
    torch.testing.assert_close(y.cpu().double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)
    assert quant_gemm(x[:0].to(DEVICE), *tensors, 4, 32).shape == (0, 64)


SHARDS = {"q": 96, "k": 32, "v": 32}


def _layer(scheme: QuantScheme, fused: bool, dtype: torch.dtype) -> Linear:
    layer = Linear(128, SHARDS, bias=True, dtype=dtype, method=WeightOnlyIntMethod(scheme.weights, fused))
    layer = layer.to(DEVICE)
    for seed, shard in enumerate(SHARDS):
        for param, tensor in _checkpoint(scheme, SHARDS[shard], 128, dtype, seed).items():
            layer.load_shard(param, tensor.to(DEVICE), shard)
    layer.load_shard("bias", torch.linspace(-1, 1, sum(SHARDS.values()), dtype=dtype).to(DEVICE))
    finish_loading(layer)
    return layer


@pytest.mark.parametrize("name,group_size,dtype", [("W4A16", 32, BF16), ("W4A16_ASYM", 64, FP32), ("W8A16", -1, BF16)])
def test_fused_method_equals_dequantize_at_load(name, group_size, dtype):
    scheme = create_scheme(name, group_size=group_size)
    fused, dense = _layer(scheme, True, dtype), _layer(scheme, False, dtype)
    assert fused.method.kernel.startswith(f"Triton W{scheme.weights.num_bits}A16")
    assert dense.method.kernel.startswith("weights dequantized at load, dense")
    assert fused.weight_packed.shape == (128 * scheme.weights.num_bits // 32, 160) and not hasattr(fused, "weight")
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    with torch.no_grad():
        ours, theirs = fused(x), dense(x)
    assert ours.shape == (2, 3, 160) and ours.dtype == dtype
    tol = RTOL[dtype] * theirs.abs().max().item()
    torch.testing.assert_close(ours.float(), theirs.float(), atol=tol, rtol=RTOL[dtype])


def test_fused_method_refuses_weights_the_kernel_misses():
    scheme = create_scheme("W4A16", group_size=8)  # K tiles need at least 16 columns of one group
    with pytest.raises(ValueError, match="fused W4A16 kernel cannot run"):
        _layer(scheme, True, FP32)
