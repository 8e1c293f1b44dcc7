"""Preset quantization schemes with LLM Compressor's names and meaning (W8A16, W4A16, W4A16_ASYM, W8A8,
FP8_DYNAMIC, FP8), as small frozen dataclasses. `tachyon.compress.rtn` picks one with `create_scheme`;
`tachyon.quantization.compressed_tensors` writes and reads them as compressed-tensors config groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "PRESET_SCHEMES",
    "QuantArgs",
    "QuantScheme",
    "create_scheme",
    "supported_schemes",
]

_STRATEGIES = ("tensor", "channel", "group", "token")
_TYPES = ("int", "float")


@dataclass(frozen=True)
class QuantArgs:
    """How one tensor is quantized: compressed-tensors' QuantizationArgs, only its long-standing fields."""

    num_bits: int
    type: str  # "int" | "float"
    strategy: str  # "tensor" | "channel" | "group" | "token"
    symmetric: bool = True
    group_size: int | None = None  # set only for strategy "group"
    dynamic: bool = False  # scales computed at run time (activations)

    def __post_init__(self) -> None:
        if self.type not in _TYPES or self.strategy not in _STRATEGIES:
            raise ValueError(f"type must be one of {_TYPES} and strategy one of {_STRATEGIES}, got {self}")
        if (self.strategy == "group") != (self.group_size is not None and self.group_size > 0):
            raise ValueError(f"group_size must be a positive int exactly when strategy is 'group', got {self}")
        if self.type == "float" and (self.num_bits != 8 or not self.symmetric):
            raise ValueError(f"only symmetric 8-bit floats (float8_e4m3fn) are supported, got {self}")
        if self.type == "int" and not 2 <= self.num_bits <= 8:
            raise ValueError(f"int num_bits must be 2..8, got {self.num_bits}")

    def to_config(self) -> dict:
        """The `weights` / `input_activations` entry of a config group."""
        observer = None if self.dynamic else "minmax"
        return {
            "num_bits": self.num_bits,
            "type": self.type,
            "symmetric": self.symmetric,
            "group_size": self.group_size,
            "strategy": self.strategy,
            "block_structure": None,
            "dynamic": self.dynamic,
            "actorder": None,
            "observer": observer,
            "observer_kwargs": {},
        }

    @classmethod
    def from_config(cls, entry: dict) -> QuantArgs:
        """Parse a config entry written by us or LLM Compressor (strategy inferred from group_size if absent)."""
        group_size = entry.get("group_size")
        strategy = entry.get("strategy") or (
            "tensor" if group_size is None else "group" if group_size > 0 else "channel"
        )
        return cls(
            num_bits=int(entry["num_bits"]),
            type=entry.get("type", "int"),
            strategy=strategy,
            symmetric=bool(entry.get("symmetric", True)),
            group_size=group_size if strategy == "group" else None,
            dynamic=bool(entry.get("dynamic", False)),
        )


@dataclass(frozen=True)
class QuantScheme:
    """A preset: weight args, optional input-activation args, and the on-disk compressed-tensors format."""

    name: str
    weights: QuantArgs
    input_activations: QuantArgs | None
    format: str  # "pack-quantized" | "int-quantized" | "float-quantized"

    @property
    def needs_calibration(self) -> bool:
        """Static activation scales (FP8) need calibration data: data-free RTN cannot produce them."""
        return self.input_activations is not None and not self.input_activations.dynamic


def _int_group(bits: int, symmetric: bool = True) -> QuantArgs:
    return QuantArgs(bits, "int", "group", symmetric=symmetric, group_size=128)


_INT8_TOKEN = QuantArgs(8, "int", "token", dynamic=True)
_FP8_TOKEN = QuantArgs(8, "float", "token", dynamic=True)

PRESET_SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("W8A16", _int_group(8), None, "pack-quantized"),
        QuantScheme("W4A16", _int_group(4), None, "pack-quantized"),
        QuantScheme("W4A16_ASYM", _int_group(4, symmetric=False), None, "pack-quantized"),
        QuantScheme("W8A8", QuantArgs(8, "int", "channel"), _INT8_TOKEN, "int-quantized"),
        QuantScheme("FP8_DYNAMIC", QuantArgs(8, "float", "channel"), _FP8_TOKEN, "float-quantized"),
        QuantScheme("FP8", QuantArgs(8, "float", "tensor"), QuantArgs(8, "float", "tensor"), "float-quantized"),
    )
}


def supported_schemes() -> list[str]:
    return list(PRESET_SCHEMES)


def create_scheme(name: str, *, group_size: int | None = None) -> QuantScheme:
    """The preset called `name` (case-insensitive). `group_size` overrides a grouped scheme's 128; -1 makes
    it per-channel (compressed-tensors' convention). A wrong name or override is a ValueError."""
    scheme = PRESET_SCHEMES.get(name.upper()) if isinstance(name, str) else None
    if scheme is None:
        raise ValueError(f"unknown quantization scheme {name!r}; supported: {', '.join(PRESET_SCHEMES)}")
    if group_size is None:
        return scheme
    if scheme.weights.strategy != "group":
        raise ValueError(f"group_size applies only to grouped schemes (W8A16, W4A16, W4A16_ASYM), not {scheme.name}")
    if group_size == -1:
        weights = dataclasses.replace(scheme.weights, strategy="channel", group_size=None)
    elif group_size > 0:
        weights = dataclasses.replace(scheme.weights, group_size=group_size)
    else:
        raise ValueError(f"group_size must be positive or -1 (per channel), got {group_size}")
    return dataclasses.replace(scheme, weights=weights)
