"""The interface every attention backend implements, and the registry that picks one.

Layers call `backend.forward(...)`; the model runner picks the backend once at start-up with
`create_attention_backend(name, device)` and logs the choice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from tachyon.layers.attention.kv_quant import quantize_kv
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
        kv_scales: torch.Tensor | None = None,  # [2, num_blocks, block_size, num_kv_heads]: 8-bit cache
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


def create_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype | None = None, group: int = 1, head_dim: int = 0
) -> AttentionBackend:
    """`auto` picks Triton on CUDA when it imports; on CPU the native kernel (`cpu`) when it builds for
    this dtype and head geometry (`group` query heads per KV head of `head_dim`), else the PyTorch reference."""
    from tachyon.layers.attention import cpu_backend, torch_backend  # noqa: F401  (register themselves)

    if name == "auto":
        name = "torch"
        if device.type == "cuda":
            try:
                from tachyon.layers.attention import triton_backend  # noqa: F401

                name = "triton"
            except ImportError as e:
                logger.warning("Triton attention unavailable (%s); using the PyTorch backend", e)
        elif dtype is not None:
            reason = cpu_backend.unsupported_reason(dtype, group, head_dim)
            if reason is None:
                name = "cpu"
            else:
                logger.warning("%s; using the PyTorch attention backend", reason)
    elif name == "triton":
        from tachyon.layers.attention import triton_backend  # noqa: F401
    elif name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"the cpu attention backend runs on CPU tensors, not {device}")
        reason = cpu_backend.unsupported_reason(dtype or torch.float32, group, head_dim)
        if reason is not None:
            raise ValueError(f"attention backend 'cpu' cannot run here: {reason}")
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto', *available_backends()]}")
    return _BACKENDS[name]()


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: torch.Tensor | None = None,
) -> None:
    """Scatter the step's keys/values into their cache slots (shared by backends without a fused write);
    an 8-bit cache gets codes and their per-(token, head) scales."""
    flat = kv_cache.flatten(1, 2)  # [2, num_blocks * block_size, num_kv_heads, head_dim]
    if kv_scales is None:
        flat[0].index_copy_(0, slot_mapping, key)
        flat[1].index_copy_(0, slot_mapping, value)
        return
    scales = kv_scales.flatten(1, 2)  # [2, num_slots, num_kv_heads]
    for i, x in enumerate((key, value)):
        codes, scale = quantize_kv(x, kv_cache.dtype)
        flat[i].view(torch.uint8).index_copy_(0, slot_mapping, codes.view(torch.uint8))  # fp8 has no index ops
        scales[i].index_copy_(0, slot_mapping, scale)
