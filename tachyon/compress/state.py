"""What the modifiers of a recipe see and change while one decoder layer is calibrated: the layer (an HF
transformers decoder layer with real weights, float32), the calibration activations entering it, and the
results so far (each Linear's quantization scheme and scales, static activation and KV-cache scales).
`tachyon.compress.pipeline` builds one `LayerState` per layer; modifiers call `linears`, `run` and `quantized`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tachyon.quantization.schemes import QuantScheme

__all__ = ["Calibration", "LayerState", "QuantizedWeight", "matches"]

# (module input [..., in], module output [..., out]) of one forward call
ActivationHook = Callable[[torch.Tensor, torch.Tensor], None]


def matches(pattern: str, name: str) -> bool:
    """compressed-tensors' target syntax: an exact module name, `re:<regex>` matched from the start, or a
    suffix match on a full name (`q_proj` matches `model.layers.0.self_attn.q_proj`)."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith(f".{pattern}")


@dataclass
class Calibration:
    """The calibration set as it enters the current layer: one sample per entry, never padded."""

    hidden: list[torch.Tensor]  # [1, T_i, hidden] per sample
    position_embeddings: list[tuple[torch.Tensor, torch.Tensor]]  # HF (cos, sin), [1, T_i, head_dim] each

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[1] for h in self.hidden)


@dataclass(frozen=True)
class QuantizedWeight:
    """A Linear's quantization result: its scheme and the weight scale / zero point it was rounded with.
    The layer's weight itself already holds the dequantized (fake-quantized) values."""

    scheme: QuantScheme
    scale: torch.Tensor
    zero_point: torch.Tensor | None


@dataclass
class LayerState:
    prefix: str  # "model.layers.3"
    module: nn.Module  # the HF decoder layer
    calibration: Calibration | None  # None: data-free recipe
    weight_dtype: torch.dtype  # the dtype the checkpoint will store: quantization scales are computed in it
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # full Linear name -> result
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # static activation scales
    kv_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # `<prefix>.self_attn.k_scale` -> [1]
    pruned: dict[str, tuple[int, int]] = field(default_factory=dict)  # Linear -> (zeros, params) when pruned

    def linears(self, targets: list[str], ignore: list[str]) -> dict[str, nn.Linear]:
        """The layer's Linears named by `targets` ("Linear": all) and not by `ignore`, by full name."""
        found = {}
        for rel, module in self.module.named_modules():
            name = f"{self.prefix}.{rel}"
            if not isinstance(module, nn.Linear) or any(matches(p, name) for p in ignore):
                continue
            if any(t == "Linear" or matches(t, name) for t in targets):
                found[name] = module
        return found

    def record_pruned(self, name: str, weight: torch.Tensor) -> None:
        """Count a pruned Linear's zeros now: quantizing later may round more weights to zero."""
        self.pruned[name] = (int((weight == 0).sum()), weight.numel())

    def submodule(self, name: str) -> nn.Module:
        return self.module.get_submodule(name.removeprefix(f"{self.prefix}."))

    def forward(self, index: int) -> torch.Tensor:
        """The layer's output for calibration sample `index`: [1, T, hidden]."""
        calib = self.require_calibration()
        out = self.module(calib.hidden[index], position_embeddings=calib.position_embeddings[index])
        return out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 a tensor

    @torch.no_grad()
    def run(self, hooks: list[tuple[nn.Module, ActivationHook]]) -> list[torch.Tensor]:
        """One pass of the whole calibration set through the layer, calling `fn(input, output)` on every
        forward of each hooked module; returns the layer's outputs."""
        handles = [m.register_forward_hook(_adapter(fn), with_kwargs=True) for m, fn in hooks]
        try:
            return [self.forward(i) for i in range(len(self.require_calibration().hidden))]
        finally:
            for handle in handles:
                handle.remove()

    def require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError(f"{self.prefix}: a modifier needs calibration data but the pipeline has none")
        return self.calibration


def _adapter(fn: ActivationHook):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        inputs = args[0] if args else kwargs["hidden_states"]  # HF passes attention / MLP inputs by keyword
        fn(inputs, output[0] if isinstance(output, tuple) else output)

    return hook
