"""The interface every attention backend implements, and the registry that picks one.

Layers call `backend.forward(...)`; the model runner picks the backend once at start-up with
`create_attention_backend(name, device)` and logs the choice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from tachyon.layers.attention.metadata import AttentionMetadata

logger = logging.getLogger(__name__)


class AttentionBackend(ABC):
    """Writes the step's new K/V into the paged cache, then attends causally over it.

    KV cache of one layer: [2, num_blocks, block_size, num_kv_heads, head_dim] (keys, values).
    """

    name: str

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        ...


_BACKENDS: dict[str, Callable[[], AttentionBackend]] = {}


def register_backend(name: str) -> Callable:
    def wrap(cls: Callable[[], AttentionBackend]) -> Callable[[], AttentionBackend]:
        _BACKENDS[name] = cls
        return cls

    return wrap


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """`auto` picks Triton on CUDA when it imports, else the PyTorch reference."""
    from tachyon.layers.attention import torch_backend  # noqa: F401  (registers itself)

    if name == "auto":
        name = "torch"
        if device.type == "cuda":
            try:
                from tachyon.layers.attention import triton_backend  # noqa: F401

                name = "triton"
            except ImportError as e:
                logger.warning("Triton attention unavailable (%s); using the PyTorch backend", e)
    elif name == "triton":
        from tachyon.layers.attention import triton_backend  # noqa: F401
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto', *available_backends()]}")
    return _BACKENDS[name]()


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter the step's keys/values into their cache slots (shared by backends without a fused write)."""
    flat = kv_cache.flatten(1, 2)  # [2, num_blocks * block_size, num_kv_heads, head_dim]
    flat[0].index_copy_(0, slot_mapping, key)
    flat[1].index_copy_(0, slot_mapping, value)
