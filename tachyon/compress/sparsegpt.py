"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774) on one weight matrix: prune column by column,
choosing the weights with the lowest OBS saliency w^2 / U_jj^2 and moving their loss onto the columns not
yet swept (the same lazy-batch sweep as `tachyon.compress.gptq`). The calibration pipeline calls
`sparsegpt_prune` once per Linear, with the Hessian of that Linear's inputs.

Masks: "N:M" prunes N of every M consecutive input columns of a row, chosen when the sweep reaches the
group (block_size is rounded down to a multiple of M so no group straddles two blocks); "0:0" prunes
round(sparsity * b) weights of each row in each block of b columns, chosen from the block's weights as
the sweep reaches it (the paper's adaptive mask selection, made exact per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tachyon.compress.hessian import check_layer_inputs, inverse_cholesky

__all__ = ["SparseGPTResult", "parse_mask_structure", "sparsegpt_prune"]


@dataclass(frozen=True)
class SparseGPTResult:
    weight: torch.Tensor  # [out, in] pruned + OBS-updated weight, input dtype
    loss: float  # sum of the per-column losses (err^2 / d^2 / 2), for logging


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.5,
    mask_structure: str = "2:4",
    block_size: int = 128,
    dampening_frac: float = 0.01,
    name: str = "",
) -> SparseGPTResult:
    """Prune weight [out, in] against hessian [in, in] (2/n X^T X of its inputs), computing in float32.
    `sparsity` applies to "0:0" (unstructured) only; "N:M" implies N/M."""
    check_layer_inputs(weight, hessian, block_size=block_size, name=name)
    num_pruned, group_len = parse_mask_structure(mask_structure)
    _check_sparsity(weight.shape[1], num_pruned, group_len, sparsity, name)
    if group_len:
        block_size = max(group_len, block_size // group_len * group_len)
    hessian = hessian.to(weight.device)
    w_t = weight.detach().to(torch.float32).T.contiguous()  # [in, out]: W's columns as contiguous rows
    u = inverse_cholesky(hessian, w_t.T, dampening_frac=dampening_frac, name=name)
    loss = 0.0
    for start in range(0, w_t.shape[0], block_size):
        end = min(start + block_size, w_t.shape[0])
        err = _prune_block(w_t, u, start, end, num_pruned, group_len, sparsity)  # [b, out]
        loss += float(err.square().sum()) / 2
        w_t[end:].addmm_(u[start:end, end:].T, err, alpha=-1)
    return SparseGPTResult(weight=w_t.T.to(weight.dtype).contiguous(), loss=loss)


def parse_mask_structure(mask_structure: str) -> tuple[int, int]:
    """Parse "N:M" -> (N, M): prune N of every M consecutive inputs (0 < N < M); "0:0" -> (0, 0), unstructured."""
    try:
        num_pruned, group_len = (int(part) for part in mask_structure.split(":"))
    except ValueError:
        raise ValueError(
            f"mask_structure must look like '2:4' (or '0:0' for unstructured), got {mask_structure!r}"
        ) from None
    if (num_pruned, group_len) != (0, 0) and not 0 < num_pruned < group_len:
        raise ValueError(f"mask_structure N:M needs 0 < N < M (or '0:0' for unstructured), got {mask_structure!r}")
    return num_pruned, group_len


def _check_sparsity(in_features: int, num_pruned: int, group_len: int, sparsity: float, name: str) -> None:
    label = name or "weight"
    if group_len and in_features % group_len:
        raise ValueError(
            f"{label}: {num_pruned}:{group_len} sparsity needs in_features divisible by {group_len}, got {in_features}"
        )
    if not group_len and not 0 <= sparsity < 1:
        raise ValueError(f"{label}: unstructured sparsity must be in [0, 1), got {sparsity}")


def _prune_block(
    w_t: torch.Tensor, u: torch.Tensor, start: int, end: int, num_pruned: int, group_len: int, sparsity: float
) -> torch.Tensor:
    """Sweep W's columns [start, end) (rows of w_t [in, out], written back pruned and updated in place);
    returns their scaled errors [b, out], (w_j - pruned w_j) / U_jj, for the update of the later columns."""
    block = w_t[start:end].clone()  # [b, out]: error-updated as the block is swept
    err = torch.zeros_like(block)  # [b, out]
    diag = torch.diagonal(u)[start:end]  # [b]
    if group_len:
        pruned = torch.zeros_like(block, dtype=torch.bool)  # [b, out]: filled group by group
    else:
        pruned = _lowest_per_row(block, diag, round(sparsity * block.shape[0]))
    for i, col in enumerate(range(start, end)):
        if group_len and i % group_len == 0:
            pruned[i : i + group_len] = _lowest_per_row(block[i : i + group_len], diag[i : i + group_len], num_pruned)
        kept = block[i].masked_fill(pruned[i], 0)  # [out]
        err[i] = (block[i] - kept) / diag[i]
        block[i] = kept
        block[i + 1 :].addr_(u[col, col + 1 : end], err[i], alpha=-1)
    w_t[start:end] = block
    return err


def _lowest_per_row(columns: torch.Tensor, diag: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """columns [k, out] with U's diagonal [k] -> bool [k, out]: in each of W's rows (a column here), the
    `num_pruned` entries of lowest saliency w^2 / U_jj^2; of equal ones the later go (as `prune_2_4`)."""
    pruned = torch.zeros_like(columns, dtype=torch.bool)
    if num_pruned == 0:
        return pruned
    saliency = columns.square() / diag.square()[:, None]  # [k, out]
    order = saliency.argsort(dim=0, descending=True, stable=True)  # [k, out]: kept first, ties by position
    return pruned.scatter_(0, order[-num_pruned:], True)
