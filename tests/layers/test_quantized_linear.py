"""Each quantized linear method, fed the tensors of a checkpoint shard by shard as a fused q/k/v layer is,
against the compressed-tensors library: its decompression of each shard's weight and its fake quantization
of the activations (what HF transformers runs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

from tachyon.layers.linear import Linear, finish_loading
from tachyon.layers.quantized_linear import quantized_linear_method
from tachyon.quantization.compressed_tensors import (
    CheckpointQuantization,
    compress_weight,
    quantization_config,
)
from tachyon.quantization.schemes import create_scheme

SHARDS = {"q": 96, "k": 32, "v": 32}
IN_FEATURES = 128


def _checkpoint(scheme) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Per shard: its stored tensors and its original weight."""
    gen = torch.Generator().manual_seed(0)
    stored, dense = {}, {}
    for shard, rows in SHARDS.items():
        weight = torch.randn(rows, IN_FEATURES, generator=gen) * (0.5 + len(shard) * 0.1)
        stored[shard], dense[shard] = compress_weight(weight, scheme), weight
        if scheme.input_activations is not None and not scheme.input_activations.dynamic:
            stored[shard]["input_scale"] = torch.tensor([0.05])
    return stored, dense


def _library_reference(scheme, stored: dict, x: torch.Tensor) -> torch.Tensor:
    config = QuantizationConfig.model_validate(quantization_config(scheme))
    group = config.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    x3 = x[None]  # HF's [batch, tokens, features]: per-token scales reduce the last dim only
    outputs = []
    for tensors in stored.values():
        weight = compressor.decompress({k: v for k, v in tensors.items() if k != "input_scale"}, group)["weight"]
        inputs = x3
        if group.input_activations is not None:
            args: QuantizationArgs = group.input_activations
            if args.dynamic:
                scale, zero_point = compute_dynamic_scales_and_zp(x3, args, module=None)
            else:
                scale, zero_point = tensors["input_scale"], torch.zeros(1)
            inputs = fake_quantize(x3, scale, zero_point, args)
        outputs.append(F.linear(inputs, weight.float()))
    return torch.cat(outputs, dim=-1)[0]


@pytest.mark.parametrize(
    ("name", "group_size", "atol"),
    [
        ("W8A16", 64, 1e-5),
        ("W4A16", 32, 1e-5),
        ("W4A16_ASYM", 64, 1e-5),
        ("W8A16", -1, 1e-5),
        ("W8A8", None, 1e-4),  # exact int32 products vs fp32 ones: float rounding only
        ("FP8_DYNAMIC", None, 1e-5),
        ("FP8", None, 1e-5),
    ],
)
def test_method_equals_the_library_on_a_fused_layer(name, group_size, atol):
    scheme = create_scheme(name, group_size=group_size)
    stored, dense = _checkpoint(scheme)
    quant = CheckpointQuantization.from_config(quantization_config(scheme))
    method = quantized_linear_method(quant.for_modules(["q_proj", "k_proj", "v_proj"]), torch.device("cpu"))
    layer = Linear(IN_FEATURES, SHARDS, dtype=torch.float32, method=method)
    for shard, tensors in stored.items():
        for param, tensor in tensors.items():
            layer.load_shard(param, tensor, shard)
    finish_loading(layer)
    x = torch.randn(7, IN_FEATURES, generator=torch.Generator().manual_seed(1)) * 3
    x[2] = 0.0  # an all-zero token: its scale must not divide by zero
    with torch.no_grad():
        ours, theirs = layer(x), _library_reference(scheme, stored, x)
    torch.testing.assert_close(ours, theirs, atol=atol * theirs.abs().max().item(), rtol=0)
    exact = torch.cat([F.linear(x, w) for w in dense.values()], dim=-1)
    assert (ours - exact).norm() < 0.15 * exact.norm()  # and it is the layer, quantized


def test_fused_shards_with_different_static_input_scales_share_the_largest():
    scheme = create_scheme("FP8")
    method = quantized_linear_method(
        CheckpointQuantization.from_config(quantization_config(scheme)).for_modules(["q"]), torch.device("cpu")
    )
    layer = Linear(IN_FEATURES, SHARDS, dtype=torch.float32, method=method)
    stored, _ = _checkpoint(scheme)
    for (shard, tensors), input_scale in zip(stored.items(), (0.01, 0.04, 0.02)):
        for param, tensor in tensors.items():
            layer.load_shard(param, torch.tensor([input_scale]) if param == "input_scale" else tensor, shard)
    assert layer.input_scale.item() == pytest.approx(0.04)


def test_a_scheme_without_a_kernel_is_refused():
    config = quantization_config(create_scheme("W8A8"))
    config["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor"
    with pytest.raises(ValueError, match="no kernel"):
        quantized_linear_method(CheckpointQuantization.from_config(config).for_modules(["x"]), torch.device("cpu"))
