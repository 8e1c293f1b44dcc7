"""Static fp8 scales observed on calibration data: the per-tensor `input_scale` of a static FP8 scheme's
Linears, and the KV cache's `k_scale` / `v_scale` (compressed-tensors' `kv_cache_scheme`, which vLLM reads
for its fp8 KV cache). Keys are observed after RoPE, as they are stored in the cache. The quantizing
modifiers call `observe_static_scales` at the end of each layer: one calibration pass for both.
"""

from __future__ import annotations

import torch
from torch import nn

from tachyon.compress.state import ActivationHook, LayerState
from tachyon.layers.rotary import rotate_half
from tachyon.quantization.quantize import FP8_MAX

__all__ = ["FP8_KV_CACHE_SCHEME", "check_kv_cache_scheme", "observe_static_scales"]

FP8_KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def check_kv_cache_scheme(scheme: dict) -> None:
    """Only what vLLM and we agree on: static per-tensor fp8 (e4m3)."""
    wanted = {k: scheme.get(k, v) for k, v in FP8_KV_CACHE_SCHEME.items()}
    if wanted != FP8_KV_CACHE_SCHEME:
        raise ValueError(f"kv_cache_scheme must be static per-tensor fp8 {FP8_KV_CACHE_SCHEME}, got {scheme}")


class _AbsMax:
    """Running max |x| over every call."""

    def __init__(self) -> None:
        self.value = torch.zeros(())

    def update(self, x: torch.Tensor) -> None:
        self.value = torch.maximum(self.value, x.detach().abs().max().float().cpu())

    def fp8_scale(self) -> torch.Tensor:
        return (self.value / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny).reshape(1)


@torch.no_grad()
def observe_static_scales(
    layer: LayerState, linears: dict[str, nn.Linear], *, inputs: bool, kv_cache: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({`<linear>`: input_scale [1]} when `inputs`, {`<prefix>.self_attn.k_scale` / `v_scale`: [1]} when
    `kv_cache`): max |x| / 448 over the calibration set, in one pass."""
    hooks: list[tuple[nn.Module, ActivationHook]] = []
    input_max = {name: _AbsMax() for name in linears} if inputs else {}
    for name, observer in input_max.items():
        hooks.append((linears[name], lambda x, y, o=observer: o.update(x)))
    kv_max = _kv_hooks(layer, hooks) if kv_cache else {}
    layer.run(hooks)
    return {n: o.fp8_scale() for n, o in input_max.items()}, {n: o.fp8_scale() for n, o in kv_max.items()}


def _kv_hooks(layer: LayerState, hooks: list[tuple[nn.Module, ActivationHook]]) -> dict[str, _AbsMax]:
    attn = layer.submodule(f"{layer.prefix}.self_attn")
    key_source = getattr(attn, "k_norm", None) or attn.k_proj  # Qwen3 normalizes keys before RoPE
    calib = layer.require_calibration()
    keys_max, values_max, sample = _AbsMax(), _AbsMax(), [0]

    def on_keys(x: torch.Tensor, keys: torch.Tensor) -> None:
        cos, sin = (t[:, :, None] for t in calib.position_embeddings[sample[0]])  # [1, T, 1, D]
        keys = keys.reshape(*cos.shape[:2], -1, cos.shape[-1])  # [1, T, H_kv, D]
        keys_max.update(keys * cos + rotate_half(keys) * sin)

    def on_values(x: torch.Tensor, values: torch.Tensor) -> None:
        values_max.update(values)
        sample[0] += 1  # v_proj runs after k_proj (and k_norm) in every Llama-family attention

    hooks += [(key_source, on_keys), (attn.v_proj, on_values)]
    return {f"{layer.prefix}.self_attn.k_scale": keys_max, f"{layer.prefix}.self_attn.v_scale": values_max}
