"""Linear layers whose weights may arrive in pieces (fused QKV, fused gate/up) and whose math is
delegated to a `LinearMethod`, so quantized schemes and tensor parallelism plug in later without
touching the models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearMethod:
    """Owns how a linear layer stores its weight and computes `x @ W.T + b`: dense here."""

    def create_weights(self, layer: Linear, dtype: torch.dtype) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.output_size, layer.input_size, dtype=dtype), requires_grad=False)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


class Linear(nn.Module):
    """A linear layer built from one or more output shards, e.g. q/k/v stacked into one matmul.

    `shard_sizes` maps a shard id (as the checkpoint names it) to its number of output rows, in
    the order they are stacked.
    """

    def __init__(
        self,
        input_size: int,
        shard_sizes: dict[str | int, int],
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        method: LinearMethod | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = sum(shard_sizes.values())
        self.shard_offsets: dict[str | int, tuple[int, int]] = {}
        offset = 0
        for shard_id, size in shard_sizes.items():
            self.shard_offsets[shard_id] = (offset, size)
            offset += size
        self.method = method or LinearMethod()
        self.bias = nn.Parameter(torch.zeros(self.output_size, dtype=dtype), requires_grad=False) if bias else None
        self.method.create_weights(self, dtype)

    def load_shard(self, param_name: str, loaded: torch.Tensor, shard_id: str | int | None = None) -> None:
        """Copy a checkpoint tensor into its rows of `weight` or `bias` (the whole tensor if unsharded)."""
        param: torch.Tensor = getattr(self, param_name)
        if shard_id is None:
            target = param
        else:
            offset, size = self.shard_offsets[shard_id]
            target = param.narrow(0, offset, size)
        if target.shape != loaded.shape:
            raise ValueError(
                f"shape mismatch loading {param_name}[{shard_id}]: {tuple(loaded.shape)} into {tuple(target.shape)}"
            )
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)


def plain_linear(input_size: int, output_size: int, bias: bool = False, dtype: torch.dtype = torch.float32) -> Linear:
    return Linear(input_size, {"": output_size}, bias=bias, dtype=dtype)
