"""gptq_quantize against round-to-nearest (equal under a diagonal Hessian, clearly worse on correlated inputs)
and against a plain unblocked fp64 reference written here (the paper's Algorithm 1 with the explicit inverse
Hessian and its Schur complement): blocking invariance, activation order, sparse masks, the output grid."""

from __future__ import annotations

import pytest
import torch

from tachyon.compress.gptq import gptq_quantize
from tachyon.quantization.quantize import FP8_DTYPE, FP8_MAX, compute_qparams, dequantize, int_range, quantize
from tachyon.quantization.schemes import QuantArgs
from tachyon.quantization.sparsity import is_2_4_sparse, prune_2_4

W4_G32 = QuantArgs(4, "int", "group", group_size=32)
W4_G32_ASYM = QuantArgs(4, "int", "group", symmetric=False, group_size=32)
W4_G64 = QuantArgs(4, "int", "group", group_size=64)
W4_G64_ASYM = QuantArgs(4, "int", "group", symmetric=False, group_size=64)
W8_CHANNEL = QuantArgs(8, "int", "channel")
FP8_CHANNEL = QuantArgs(8, "float", "channel")
W8_TENSOR_ASYM = QuantArgs(8, "int", "tensor", symmetric=False)


def _rtn(weight: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    scale, zero_point = compute_qparams(weight, args)
    return dequantize(quantize(weight, scale, zero_point, args), scale, zero_point, args), scale, zero_point


def _correlated_inputs(num_rows: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """X = Z A + noise [num_rows, in]: low-rank correlated channels, a few of them 10x outliers."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_rows, in_features // 4, generator=gen)
    x = z @ torch.randn(in_features // 4, in_features, generator=gen) + 0.3 * torch.randn(num_rows, in_features)
    x[:, torch.randperm(in_features, generator=gen)[:4]] *= 10
    return x


def _layer(out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight [out, in], inputs X [n, in], H = 2 X^T X / n)."""
    x = _correlated_inputs(4 * in_features, in_features, seed)
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed + 100))
    return weight, x, 2 * x.T @ x / x.shape[0]


def _output_error(weight: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float(((weight.double() - q.double()) @ x.double().T).square().sum())


def _fake_quantize(column: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs):
    """Round one column [out] (fp64) onto scale / zero point [out]: written out here, not the library's."""
    scale = scale.double()
    if args.type == "float":
        return (column / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).double() * scale
    zero = 0.0 if zero_point is None else zero_point.double()
    q_min, q_max = int_range(args.num_bits)
    return (torch.round(column / scale + zero).clamp(q_min, q_max) - zero) * scale


def _reference_gptq(weight, hessian, args, *, actorder=False, dampening_frac=0.01) -> tuple[torch.Tensor, float]:
    """Unblocked GPTQ in fp64: for each column j (in sweep order) quantize, err = (w_j - q_j) / Hinv_jj,
    W[:, rest] -= err Hinv[j, rest], then Hinv <- its Schur complement on the rest. Zeros of a weight that is
    at least 30% zero stay zero. Returns (quantized weight, sum of (w_j - q_j)^2 / Hinv_jj / 2)."""
    num_cols = weight.shape[1]
    order = torch.argsort(hessian.diagonal(), descending=True, stable=True) if actorder else torch.arange(num_cols)
    w = weight.double()[:, order].clone()
    keep = (w != 0).double() if float((weight == 0).float().mean()) >= 0.3 else torch.ones_like(w)
    h = hessian.double()[order][:, order]
    h_inv = torch.linalg.inv(h + dampening_frac * h.diagonal().mean() * torch.eye(num_cols, dtype=torch.float64))
    lazy_groups = args.strategy == "group" and not actorder
    scale, zero_point = (None, None) if lazy_groups else compute_qparams(weight, args)
    q = torch.empty_like(w)
    loss = 0.0
    for k, j in enumerate(order.tolist()):
        if lazy_groups and j % args.group_size == 0:
            scale, zero_point = compute_qparams(w[:, k : k + args.group_size].float(), args)  # [out, 1]
        group = j // args.group_size if args.strategy == "group" and actorder else 0
        column_scale = scale.reshape(-1, scale.shape[-1]).expand(w.shape[0], -1)[:, group]
        column_zero = None if zero_point is None else zero_point.reshape(-1, scale.shape[-1])
        column_zero = None if column_zero is None else column_zero.expand(w.shape[0], -1)[:, group]
        q[:, k] = _fake_quantize(w[:, k], column_scale, column_zero, args)
        err = (w[:, k] - q[:, k]) / h_inv[0, 0]
        loss += float((w[:, k] - q[:, k]).square().sum() / h_inv[0, 0]) / 2
        w[:, k + 1 :] -= err[:, None] * h_inv[0, 1:][None, :]
        w[:, k + 1 :] *= keep[:, k + 1 :]
        h_inv = h_inv[1:, 1:] - h_inv[1:, :1] @ h_inv[:1, 1:] / h_inv[0, 0]
    return q[:, torch.argsort(order)], loss


@pytest.mark.parametrize("args", [W4_G32, W4_G32_ASYM, W4_G64, W4_G64_ASYM, W8_CHANNEL, FP8_CHANNEL, W8_TENSOR_ASYM])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diagonal_hessian_equals_round_to_nearest(args, dtype):
    weight = torch.randn(24, 128, generator=torch.Generator().manual_seed(5)).to(dtype)
    hessian = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(6)) + 0.1)
    result = gptq_quantize(weight, hessian, args, block_size=48)
    expected, scale, zero_point = _rtn(weight, args)
    assert result.weight.dtype == dtype and result.scale.dtype == dtype
    assert torch.equal(result.weight, expected)
    assert torch.equal(result.scale, scale)
    assert (result.zero_point is None) == (zero_point is None)
    if zero_point is not None:
        assert torch.equal(result.zero_point, zero_point)


@pytest.mark.parametrize("block_size", [1, 7, 128])
@pytest.mark.parametrize("args", [W4_G32, W4_G32_ASYM, W8_CHANNEL])
def test_blocked_sweep_matches_unblocked_reference(args, block_size):
    weight, x, _ = _layer(16, 128, seed=1)
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(7)) + 0.5 * x / x.std()  # well conditioned
    hessian = 2 * x.T @ x / x.shape[0]
    result = gptq_quantize(weight, hessian, args, block_size=block_size)
    expected, loss = _reference_gptq(weight, hessian, args)
    torch.testing.assert_close(result.weight.double(), expected, rtol=0, atol=1e-4)
    assert result.loss == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("args", [W4_G32_ASYM, W8_CHANNEL])
def test_activation_order_matches_unblocked_reference(args):
    weight, x, _ = _layer(16, 96, seed=2)
    x = torch.randn(512, 96, generator=torch.Generator().manual_seed(8)) * torch.linspace(0.2, 3, 96)
    hessian = 2 * x.T @ x / x.shape[0]
    result = gptq_quantize(weight, hessian, args, block_size=7, actorder=True)
    expected, loss = _reference_gptq(weight, hessian, args, actorder=True)
    torch.testing.assert_close(result.weight.double(), expected, rtol=0, atol=1e-4)
    assert result.loss == pytest.approx(loss, rel=1e-4)
    assert torch.equal(result.scale, compute_qparams(weight, args)[0])  # scales of the un-permuted weight


@pytest.mark.parametrize("args", [W4_G32, W4_G32_ASYM, W4_G64, W4_G64_ASYM, W8_CHANNEL])
def test_beats_round_to_nearest_on_correlated_inputs(args):
    weight, x, hessian = _layer(64, 128, seed=4)
    rtn_error = _output_error(weight, _rtn(weight, args)[0], x)
    assert _output_error(weight, gptq_quantize(weight, hessian, args).weight, x) < 0.5 * rtn_error
    assert _output_error(weight, gptq_quantize(weight, hessian, args, actorder=True).weight, x) < 0.5 * rtn_error


@pytest.mark.parametrize("actorder", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("args", [W4_G32, W4_G64_ASYM, W8_CHANNEL, FP8_CHANNEL, W8_TENSOR_ASYM])
def test_output_lies_on_the_returned_grid(args, dtype, actorder):
    weight, _, hessian = _layer(32, 128, seed=5)
    result = gptq_quantize(weight.to(dtype), hessian, args, block_size=40, actorder=actorder)
    codes = quantize(result.weight, result.scale, result.zero_point, args)
    assert torch.equal(dequantize(codes, result.scale, result.zero_point, args), result.weight)
    assert result.scale.shape == compute_qparams(weight, args)[0].shape


@pytest.mark.parametrize("actorder", [False, True])
def test_sparse_weight_keeps_its_zeros_and_still_beats_rtn(actorder):
    weight, x, hessian = _layer(64, 128, seed=6)
    sparse = prune_2_4(weight)
    result = gptq_quantize(sparse, hessian, W4_G32, block_size=24, actorder=actorder)
    assert is_2_4_sparse(result.weight)
    assert not result.weight[sparse == 0].any()
    expected, _ = _reference_gptq(sparse, hessian, W4_G32, actorder=actorder)
    torch.testing.assert_close(result.weight.double(), expected, rtol=0, atol=1e-4)
    assert _output_error(sparse, result.weight, x) < 0.8 * _output_error(sparse, _rtn(sparse, W4_G32)[0], x)


def test_a_few_zeros_are_not_a_mask():
    weight, _, hessian = _layer(32, 64, seed=7)
    weight[:, ::8] = 0  # 12.5% zeros: ordinary weights that happen to be zero
    result = gptq_quantize(weight, hessian, W8_CHANNEL)
    assert result.weight[:, 8::8].count_nonzero() > 0  # error feedback moved them


def test_dead_inputs_come_out_zero():
    weight, x, _ = _layer(16, 64, seed=8)
    x[:, [5, 40]] = 0
    result = gptq_quantize(weight, 2 * x.T @ x / x.shape[0], W4_G32)
    assert not result.weight[:, [5, 40]].any() and torch.isfinite(result.weight).all()


def test_bad_inputs_are_refused():
    weight = torch.randn(8, 64)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        gptq_quantize(weight, torch.eye(64), W4_G32, block_size=0)
    with pytest.raises(ValueError, match=r"q_proj: Hessian shape \(32, 32\) does not match weight \(8, 64\)"):
        gptq_quantize(weight, torch.eye(32), W4_G32, name="q_proj")
    with pytest.raises(ValueError, match="in_features 64 is not a multiple of group_size 48"):
        gptq_quantize(weight, torch.eye(64), QuantArgs(4, "int", "group", group_size=48))
    with pytest.raises(ValueError, match="not 'token'"):
        gptq_quantize(weight, torch.eye(64), QuantArgs(8, "int", "token", dynamic=True))
