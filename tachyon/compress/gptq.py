"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) on one weight matrix: quantize column by column, feeding
each column's rounding error into the columns not yet quantized through the inverse Hessian. The
calibration pipeline calls `gptq_quantize` once per Linear, with the Hessian of that Linear's inputs.

Lazy-batch sweep over W's columns (U = upper Cholesky factor of (H + damp I)^-1, err_j = (w_j - q_j) / U_jj);
W is held transposed, [in, out], so that each column is one contiguous row:

    | quantized | block [start, end)                        | rest                                 |
    |           | column j: q_j = round(w_j), then          | once the block is done, one matmul:  |
    |           |   W[:, j+1:end] -= err_j U[j, j+1:end]    |   W[:, rest] -= Err U[block, rest]   |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from tachyon.compress.hessian import check_layer_inputs, inverse_cholesky
from tachyon.quantization.quantize import check_group_size, compute_qparams, dequantize, quantize
from tachyon.quantization.schemes import QuantArgs

__all__ = ["GPTQResult", "gptq_quantize"]

_SPARSE_FRACTION = 0.3  # a weight at least this zero is treated as pruned: its zeros stay zero


@dataclass(frozen=True)
class GPTQResult:
    weight: torch.Tensor  # [out, in] fake-quantized (dequantized) weight, input dtype
    scale: torch.Tensor  # compressed-tensors shape, as compute_qparams
    zero_point: torch.Tensor | None
    loss: float  # sum of the GPTQ objective's per-column losses (err^2 / d^2 / 2), for logging


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    args: QuantArgs,
    *,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    actorder: bool = False,
    name: str = "",
) -> GPTQResult:
    """Quantize weight [out, in] against hessian [in, in] (2/n X^T X of its inputs), computing in float32.

    Group scales are computed when the sweep reaches a group's first column, from the error-updated
    weights; channel / tensor scales, and every scale with `actorder`, from the whole weight up front.
    `actorder` sweeps columns by decreasing diag(H), each with its original group's scale."""
    check_layer_inputs(weight, hessian, block_size=block_size, name=name)
    _check_args(weight, args, name)
    hessian = hessian.to(weight.device)
    w_t = weight.detach().to(torch.float32).T.contiguous()  # [in, out]: W's columns as contiguous rows
    pruned_t = _pruned_mask(weight.T)  # [in, out] bool | None
    w_t[torch.diagonal(hessian) == 0] = 0  # dead inputs: zeroed before the scales see them
    grid = _Grid.create(w_t.T, args, weight.dtype, lazy=args.strategy == "group" and not actorder)
    if actorder:
        perm = torch.argsort(torch.diagonal(hessian), descending=True, stable=True)  # [in]
        w_t, hessian, grid.column_group = w_t[perm], hessian[perm][:, perm], grid.column_group[perm]
        pruned_t = pruned_t[perm] if pruned_t is not None else None
    u = inverse_cholesky(hessian, w_t.T, dampening_frac=dampening_frac, name=name)
    q_t, loss = _sweep(w_t, u, grid, pruned_t, block_size)
    if actorder:
        q_t = q_t[torch.argsort(perm)]
    scale, zero_point = grid.stored()
    return GPTQResult(weight=q_t.T.to(weight.dtype).contiguous(), scale=scale, zero_point=zero_point, loss=loss)


def _check_args(weight: torch.Tensor, args: QuantArgs, name: str) -> None:
    label = name or "weight"
    if args.strategy not in ("tensor", "channel", "group"):
        raise ValueError(f"{label}: GPTQ quantizes weights per tensor, channel or group, not {args.strategy!r}")
    if args.strategy == "group":
        check_group_size(weight.shape[1], args.group_size, label)


def _pruned_mask(weight: torch.Tensor) -> torch.Tensor | None:
    """True where an already-sparse weight is zero (same shape); None when under 30% of it is zero."""
    zeros = weight == 0
    return zeros.contiguous() if float(zeros.float().mean()) >= _SPARSE_FRACTION else None


@dataclass
class _Grid:
    """The quantization grid as the sweep builds it: scale / zero point per (row, scale column), and the
    scale column of each weight column in sweep order. `lazy`: group scales are filled in as the sweep
    reaches each group (`set_group`), otherwise all are known up front."""

    args: QuantArgs
    scale: torch.Tensor  # [out, num_scale_cols], weight dtype
    zero_point: torch.Tensor | None  # [out, num_scale_cols] int8
    column_group: torch.Tensor  # [in] int64: scale column of each weight column
    lazy: bool
    stored_shape: tuple[int, ...]  # compressed-tensors' shape of the scale
    column_args: QuantArgs  # `args` per channel: how one column [out, 1] is rounded

    @classmethod
    def create(cls, w: torch.Tensor, args: QuantArgs, dtype: torch.dtype, *, lazy: bool) -> _Grid:
        num_rows, num_cols = w.shape
        if lazy:
            num_groups = num_cols // args.group_size
            scale = torch.zeros(num_rows, num_groups, dtype=dtype, device=w.device)
            zero_point = None if args.symmetric or args.type == "float" else scale.to(torch.int8)
        else:
            scale, zero_point = compute_qparams(w.to(dtype), args)
        stored_shape = tuple(scale.shape)
        scale = scale.reshape(-1, scale.shape[-1]).expand(num_rows, -1)  # tensor: [1] -> [out, 1]
        if zero_point is not None:
            zero_point = zero_point.reshape(-1, zero_point.shape[-1]).expand(num_rows, -1)
        column_group = torch.arange(num_cols, device=w.device)
        if args.strategy != "group":
            column_group = torch.zeros_like(column_group)
        else:
            column_group = column_group // args.group_size
        column_args = dataclasses.replace(args, strategy="channel", group_size=None)
        return cls(args, scale, zero_point, column_group, lazy, stored_shape, column_args)

    def starts_group(self, col: int) -> bool:
        return self.lazy and col % self.args.group_size == 0

    def set_group(self, col: int, current: torch.Tensor) -> None:
        """Min-max qparams of the group starting at `col` from its current weights [out, group_size]."""
        scale, zero_point = compute_qparams(current.to(self.scale.dtype), self.args)  # [out, 1] each
        self.scale[:, col // self.args.group_size] = scale[:, 0]
        if zero_point is not None:
            self.zero_point[:, col // self.args.group_size] = zero_point[:, 0]

    def fake_quantize(self, column: torch.Tensor, group: int) -> torch.Tensor:
        """Round column [out] (float32) onto scale column `group`; the dequantized value, float32."""
        scale = self.scale[:, group : group + 1]  # [out, 1]
        zero_point = self.zero_point[:, group : group + 1] if self.zero_point is not None else None
        codes = quantize(column[:, None], scale, zero_point, self.column_args)  # [out, 1]
        return dequantize(codes, scale, zero_point, self.column_args)[:, 0].float()

    def stored(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale and zero point in compressed-tensors' shapes ([out, groups], [out, 1] or [1])."""
        rows = self.stored_shape[0]  # 1 for a per-tensor scale, expanded over the rows while sweeping
        scale = self.scale[:rows].reshape(self.stored_shape).clone()
        if self.zero_point is None:
            return scale, None
        return scale, self.zero_point[:rows].reshape(self.stored_shape).clone()


def _sweep(
    w_t: torch.Tensor, u: torch.Tensor, grid: _Grid, pruned_t: torch.Tensor | None, block_size: int
) -> tuple[torch.Tensor, float]:
    """The lazy-batch sweep over W's columns, held as the rows of w_t [in, out] (float32, updated in place),
    with U [in, in]. Returns the quantized columns [in, out] in sweep order and the summed loss. Pruned
    positions always read as zero, so the error feedback cannot refill them."""
    q_t = torch.empty_like(w_t)  # [in, out]
    groups = grid.column_group.tolist()
    loss = 0.0
    for start in range(0, w_t.shape[0], block_size):
        end = min(start + block_size, w_t.shape[0])
        block = w_t[start:end].clone()  # [b, out]: error-updated as the block is swept
        err = torch.zeros_like(block)  # [b, out]: (w_j - q_j) / U_jj
        for i, col in enumerate(range(start, end)):
            if grid.starts_group(col):
                current = _current(w_t, block, err, u, pruned_t, start, col, col + grid.args.group_size)
                grid.set_group(col, current.T)
            column = block[i] if pruned_t is None else block[i].masked_fill(pruned_t[col], 0)  # [out]
            q_t[col] = grid.fake_quantize(column, groups[col])
            err[i] = (column - q_t[col]) / u[col, col]
            block[i + 1 :].addr_(u[col, col + 1 : end], err[i], alpha=-1)
        loss += float(err.square().sum()) / 2
        w_t[end:].addmm_(u[start:end, end:].T, err, alpha=-1)
    return q_t, loss


def _current(
    w_t: torch.Tensor,
    block: torch.Tensor,
    err: torch.Tensor,
    u: torch.Tensor,
    pruned_t: torch.Tensor | None,
    start: int,
    col: int,
    stop: int,
) -> torch.Tensor:
    """Columns [col, stop) of W, as rows [stop - col, out], as the unblocked sweep would see them now: the
    block's part is up to date; the part past the block still owes it the errors of the swept columns."""
    end = start + block.shape[0]
    current = block[col - start : min(stop, end) - start]
    if stop > end:
        current = torch.cat([current, w_t[end:stop] - u[start:end, end:stop].T @ err])
    return current if pruned_t is None else current.masked_fill(pruned_t[col:stop], 0)
