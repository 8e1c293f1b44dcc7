"""The compressed-tensors on-disk format (what LLM Compressor writes and vLLM / transformers read): the
`quantization_config` block of config.json and the tensors of each quantized Linear. `tachyon.compress`
calls `quantization_config` and `compress_weight` to write checkpoints; `decompress` reads ours and LLM
Compressor's back to dense weights (tests, the engine's fallback for formats it has no kernel for).

Tensors per quantized Linear `<m>` (scale shapes: group [out, in/group], channel [out, 1], tensor [1]):
  pack-quantized   <m>.weight_packed int32 [out, ceil(in*b/32)], <m>.weight_scale, <m>.weight_shape int64 [2],
                   <m>.weight_zero_point int32 packed along out (asymmetric only)
  int-quantized    <m>.weight int8, <m>.weight_scale
  float-quantized  <m>.weight float8_e4m3fn, <m>.weight_scale
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors import safe_open

from tachyon.quantization.quantize import compute_qparams, dequantize, pack_int32, quantize, unpack_int32
from tachyon.quantization.schemes import QuantArgs, QuantScheme
from tachyon.quantization.sparsity import SPARSE_24_BITMASK

__all__ = [
    "QUANT_METHOD",
    "CheckpointQuantization",
    "LinearQuantization",
    "compress_weight",
    "decompress",
    "decompress_module",
    "quantization_config",
]

QUANT_METHOD = "compressed-tensors"
_FORMATS = ("pack-quantized", "int-quantized", "float-quantized", "naive-quantized")
_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight")
_RUNTIME_SUFFIXES = ("input_scale", "input_zero_point", "output_scale", "output_zero_point", "weight_g_idx")


@dataclass(frozen=True)
class LinearQuantization:
    """How one Linear of a checkpoint is stored and run: its weight args, its input-activation args
    (None: weight-only), and the tensor format (`pack-quantized`, `int-quantized`, `float-quantized`)."""

    weights: QuantArgs
    input_activations: QuantArgs | None
    format: str


@dataclass(frozen=True)
class CheckpointQuantization:
    """A checkpoint's `quantization_config`, resolved per module: `for_modules` gives the engine the scheme of
    each Linear (or None for the ones left dense: `ignore`d or targeted by no group)."""

    groups: tuple[tuple[tuple[str, ...], LinearQuantization], ...]
    ignore: tuple[str, ...]

    @classmethod
    def from_config(cls, config: dict | None) -> CheckpointQuantization | None:
        """None for a dense checkpoint; a clear error for a method or format the engine cannot run."""
        if not config:
            return None
        if config.get("quant_method") != QUANT_METHOD:
            method = config.get("quant_method")
            raise ValueError(f"quantization method {method!r} is not supported; only {QUANT_METHOD}")
        sparse_format = (config.get("sparsity_config") or {}).get("format", "dense")
        if sparse_format not in ("dense", SPARSE_24_BITMASK):
            raise ValueError(
                f"sparsity format {sparse_format!r} is not supported; supported: dense, {SPARSE_24_BITMASK}"
            )
        groups = []
        for name, group in config.get("config_groups", {}).items():
            fmt = group.get("format") or config.get("format")
            if fmt not in _FORMATS:
                raise ValueError(f"config group {name}: format {fmt!r} is not supported; supported: {_FORMATS}")
            if group.get("output_activations"):
                raise ValueError(f"config group {name}: output activation quantization is not supported")
            inputs = group.get("input_activations")
            scheme = LinearQuantization(
                QuantArgs.from_config(group["weights"]), QuantArgs.from_config(inputs) if inputs else None, fmt
            )
            groups.append((tuple(group.get("targets", ())), scheme))
        return cls(tuple(groups), tuple(config.get("ignore") or ()))

    def for_modules(self, names: list[str]) -> LinearQuantization | None:
        """The scheme of a Linear that fuses the checkpoint modules `names` (q/k/v, gate/up): they must agree."""
        schemes = {self._for_module(name) for name in names}
        if len(schemes) > 1:
            raise ValueError(f"{names} are fused into one matmul but quantized differently: {schemes}")
        return schemes.pop()

    def _for_module(self, name: str) -> LinearQuantization | None:
        if any(_matches(target, name) for target in self.ignore):
            return None
        named = (scheme for targets, scheme in self.groups if any(_matches(t, name) for t in targets if t != "Linear"))
        by_type = (scheme for targets, scheme in self.groups if "Linear" in targets)
        return next(named, None) or next(by_type, None)


def _matches(target: str, name: str) -> bool:
    """compressed-tensors' target syntax: an exact module name, or `re:<regex>` matched from the start."""
    return target == name or (target.startswith("re:") and re.match(target[3:], name) is not None)


def quantization_config(
    scheme: QuantScheme | None,
    ignore: list[str] | tuple[str, ...] = ("lm_head",),
    sparsity: dict | None = None,
    *,
    targets: list[str] | tuple[str, ...] = ("Linear",),
    kv_cache_scheme: dict | None = None,
) -> dict:
    """The config.json `quantization_config` of a checkpoint whose `targets` are compressed with `scheme`
    (None: weights kept dense), with the `sparsity_config` from `tachyon.quantization.sparsity` for pruned
    weights and the static fp8 `kv_cache_scheme` when k_scale / v_scale are stored."""
    config: dict = {"quant_method": QUANT_METHOD, "format": "dense", "config_groups": {}}
    if scheme is not None:
        inputs = scheme.input_activations
        group = {
            "targets": list(targets),
            "weights": scheme.weights.to_config(),
            "input_activations": inputs.to_config() if inputs else None,
            "output_activations": None,
        }
        config.update(format=scheme.format, config_groups={"group_0": group})
    config.update(ignore=list(ignore), quantization_status="compressed", kv_cache_scheme=kv_cache_scheme)
    if sparsity is not None:
        config["sparsity_config"] = sparsity
    return config


def compress_weight(
    weight: torch.Tensor, scheme: QuantScheme, qparams: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> dict[str, torch.Tensor]:
    """One Linear's dense weight [out, in] -> its stored tensors, keyed by suffix (`weight_scale`, ...).
    `qparams` (scale, zero point) come from a calibrated algorithm (GPTQ, AWQ); None: min-max of `weight`."""
    args = scheme.weights
    scale, zero_point = qparams if qparams is not None else compute_qparams(weight, args)
    q = quantize(weight, scale, zero_point, args)
    if scheme.format != "pack-quantized":
        return {"weight": q, "weight_scale": scale}
    tensors = {
        "weight_packed": pack_int32(q, args.num_bits),
        "weight_scale": scale,
        "weight_shape": torch.tensor(weight.shape, dtype=torch.int64),
    }
    if zero_point is not None:
        tensors["weight_zero_point"] = pack_int32(zero_point, args.num_bits, packed_dim=0)
    return tensors


def decompress_module(tensors: dict[str, torch.Tensor], args: QuantArgs, fmt: str) -> torch.Tensor:
    """A quantized Linear's stored tensors (keyed by suffix) -> its dense weight, in the scale's dtype."""
    scale, zero_point = tensors["weight_scale"], tensors.get("weight_zero_point")
    if fmt == "pack-quantized":
        out_features, in_features = (int(v) for v in tensors["weight_shape"].tolist())
        q = unpack_int32(tensors["weight_packed"], args.num_bits, in_features)
        if zero_point is not None and zero_point.dtype == torch.int32:  # packed along out_features
            zero_point = unpack_int32(zero_point, args.num_bits, out_features, packed_dim=0)
        return dequantize(q, scale, zero_point, args)
    if fmt in _FORMATS:
        return dequantize(tensors["weight"], scale, zero_point, args)
    raise ValueError(f"compressed-tensors format {fmt!r} is not supported; supported: {', '.join(_FORMATS)}")


def decompress(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of a compressed-tensors checkpoint, quantized Linears dequantized to
    `<m>.weight`; activation scales and other run-time tensors are dropped."""
    config = _read_quantization_config(folder)
    files = _tensor_files(folder)
    modules = _quantized_modules(files)
    groups = [
        (g.get("targets", []), g, g.get("format") or config.get("format")) for g in config["config_groups"].values()
    ]
    for name, path in files.items():
        prefix, _, suffix = name.rpartition(".")
        if prefix in modules and suffix in _SUFFIXES + _RUNTIME_SUFFIXES:
            if suffix in ("weight_scale",):
                targets, group, fmt = _match_group(prefix, groups)
                tensors = {
                    s: _load(files[f"{prefix}.{s}"], f"{prefix}.{s}") for s in _SUFFIXES if f"{prefix}.{s}" in files
                }
                yield f"{prefix}.weight", decompress_module(tensors, QuantArgs.from_config(group["weights"]), fmt)
            continue
        yield name, _load(path, name)


def _read_quantization_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f).get("quantization_config")
    if not config or config.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{folder}: config.json has no compressed-tensors quantization_config")
    if config.get("quantization_status", "compressed") != "compressed":
        raise ValueError(f"{folder}: quantization_status {config.get('quantization_status')!r}, expected 'compressed'")
    return config


def _tensor_files(folder: str) -> dict[str, str]:
    """Tensor name -> safetensors file holding it, over every shard."""
    files: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            files.update(dict.fromkeys(f.keys(), path))
    if not files:
        raise ValueError(f"{folder}: no safetensors files")
    return files


def _quantized_modules(files: dict[str, str]) -> set[str]:
    return {name.rpartition(".")[0] for name in files if name.endswith(".weight_scale")}


def _match_group(module: str, groups: list[tuple[list[str], dict, str]]) -> tuple[list[str], dict, str]:
    """The config group whose targets name `module` (exact name or `re:` regex) else the one targeting Linear."""
    for targets, group, fmt in groups:
        if any(_matches(target, module) for target in targets):
            return targets, group, fmt
    for targets, group, fmt in groups:
        if "Linear" in targets:
            return targets, group, fmt
    raise ValueError(f"{module}: quantized, but no config group targets it")


def _load(path: str, name: str) -> torch.Tensor:
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name)
