"""2:4 semi-structured sparsity: in every group of 4 consecutive input weights of a row at most 2 are
non-zero. `prune_2_4` makes a weight so by magnitude (`tachyon compress --sparsity 2:4`); checkpoints
say so in `quantization_config.sparsity_config`.

We write the zeros in place (`format: dense`), which HF transformers, vLLM and compressed-tensors all
load. We also read the legacy `sparse-24-bitmask` format that older LLM Compressor releases wrote
(`densify_sparse_24` turns it back into plain weights at load):

    <m>.compressed  [rows, cols/2]      the kept values, row-major, in the weight's (or codes') dtype
    <m>.bitmask     uint8 [rows, ceil(cols/8)]  bit j of byte k = column 8k + j is kept (little-endian bits)
    <m>.shape       int [2, 1]          rows, cols
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["SPARSE_24_BITMASK", "densify_sparse_24", "is_2_4_sparse", "prune_2_4", "prune_n_m", "sparsity_config"]

SPARSE_24_BITMASK = "sparse-24-bitmask"
_BITMASK_PARTS = ("compressed", "bitmask", "shape")


def prune_n_m(weight: torch.Tensor, num_pruned: int, group_len: int) -> torch.Tensor:
    """Zero the `num_pruned` smallest-magnitude weights of every `group_len` consecutive inputs of a row."""
    rows, cols = weight.shape
    if cols % group_len:
        raise ValueError(f"{num_pruned}:{group_len} sparsity needs in_features divisible by {group_len}, got {cols}")
    groups = weight.reshape(rows, cols // group_len, group_len)
    keep = groups.abs().float().topk(group_len - num_pruned, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return torch.where(mask, groups, torch.zeros((), dtype=weight.dtype)).reshape(rows, cols)


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive inputs."""
    return prune_n_m(weight, 2, 4)


def is_2_4_sparse(weight: torch.Tensor) -> bool:
    rows, cols = weight.shape
    return cols % 4 == 0 and bool(((weight.reshape(rows, cols // 4, 4) != 0).sum(-1) <= 2).all())


def sparsity_config(ignore: Iterable[str], global_sparsity: float, structure: str = "2:4") -> dict:
    """The `sparsity_config` entry of a checkpoint whose Linears are pruned (`structure` "2:4", another
    "N:M" or "unstructured"), zeros stored in place."""
    return {
        "format": "dense",
        "sparsity_structure": structure,
        "targets": ["Linear"],
        "ignore": list(ignore),
        "global_sparsity": round(global_sparsity, 4),
    }


def densify_sparse_24(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint stream with sparse-24-bitmask modules -> the same stream with `<m>.weight` for each."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        module, _, part = name.rpartition(".")
        if part not in _BITMASK_PARTS:
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if len(parts) == len(_BITMASK_PARTS):
            yield f"{module}.weight", _decompress(**pending.pop(module))
    if pending:
        raise ValueError(f"sparse-24-bitmask modules missing a part: {sorted(pending)[:3]}")


def _decompress(compressed: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    rows, cols = (int(v) for v in shape.flatten().tolist())
    bits = torch.arange(8, dtype=torch.uint8)
    mask = ((bitmask.to(torch.uint8)[..., None] >> bits) & 1).bool().reshape(rows, -1)[:, :cols]
    if int(mask.sum()) != compressed.numel():
        raise ValueError(f"sparse-24-bitmask: {int(mask.sum())} kept positions but {compressed.numel()} values")
    dense = torch.zeros(rows, cols, dtype=torch.uint8 if compressed.element_size() == 1 else compressed.dtype)
    values = compressed.reshape(-1)
    if compressed.element_size() == 1:  # int8 / fp8 codes: move raw bytes (fp8 has no indexing kernels)
        values = values.view(torch.uint8)
    dense[mask] = values
    return dense.view(compressed.dtype) if compressed.element_size() == 1 else dense
