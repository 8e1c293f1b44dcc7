"""sparsegpt_prune against magnitude pruning (equal under H = I, clearly worse on correlated inputs) and
against a plain unblocked fp64 N:M reference written here (explicit inverse Hessian, Schur complements);
exact per-row sparsity of the unstructured mode; argument errors."""

from __future__ import annotations

import pytest
import torch

from tachyon.compress.sparsegpt import sparsegpt_prune
from tachyon.quantization.sparsity import is_2_4_sparse, prune_2_4


def _layer(out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight [out, in], inputs X [n, in] with low-rank correlated channels, H = 2 X^T X / n)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(4 * in_features, in_features // 4, generator=gen)
    x = z @ torch.randn(in_features // 4, in_features, generator=gen) + 0.3 * torch.randn(4 * in_features, in_features)
    x[:, torch.randperm(in_features, generator=gen)[:4]] *= 10
    weight = torch.randn(out_features, in_features, generator=gen)
    return weight, x, 2 * x.T @ x / x.shape[0]


def _output_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((weight.double() - pruned.double()) @ x.double().T).square().sum())


def _magnitude_prune(weight: torch.Tensor, num_pruned: int, group_len: int) -> torch.Tensor:
    """Zero the `num_pruned` smallest |w| of every `group_len` consecutive inputs of each row."""
    groups = weight.reshape(weight.shape[0], -1, group_len)
    lowest = groups.abs().topk(num_pruned, dim=-1, largest=False).indices
    return groups.scatter(-1, lowest, 0.0).reshape(weight.shape)


def _reference_n_m(weight: torch.Tensor, hessian: torch.Tensor, num_pruned: int, group_len: int) -> torch.Tensor:
    """Unblocked SparseGPT in fp64. Column j's OBS denominator d_j is Hinv's diagonal after eliminating the
    columns before it (Schur complements); at each group's first column, prune per row the `num_pruned` of
    lowest saliency w_j^2 / d_j; then err = (w_j - kept_j) / d_j and W[:, rest] -= err Hinv[j, rest]."""
    num_cols = weight.shape[1]
    h = hessian.double()
    h_inv = torch.linalg.inv(h + 0.01 * h.diagonal().mean() * torch.eye(num_cols, dtype=torch.float64))
    schur, diag = h_inv.clone(), []
    for _ in range(num_cols):
        diag.append(float(schur[0, 0]))
        schur = schur[1:, 1:] - schur[1:, :1] @ schur[:1, 1:] / schur[0, 0]
    diag = torch.tensor(diag, dtype=torch.float64)
    w = weight.double().clone()
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for j in range(num_cols):
        if j % group_len == 0:
            saliency = w[:, j : j + group_len].square() / diag[j : j + group_len]
            lowest = saliency.topk(num_pruned, dim=1, largest=False).indices
            pruned[:, j : j + group_len].scatter_(1, lowest, True)
        kept = w[:, j].masked_fill(pruned[:, j], 0)
        err = (w[:, j] - kept) / h_inv[0, 0]
        w[:, j] = kept
        w[:, j + 1 :] -= err[:, None] * h_inv[0, 1:][None, :]
        h_inv = h_inv[1:, 1:] - h_inv[1:, :1] @ h_inv[:1, 1:] / h_inv[0, 0]
    return w


@pytest.mark.parametrize("block_size", [4, 6, 128])
def test_2_4_matches_unblocked_reference_for_any_block_size(block_size):
    weight, _, hessian = _layer(16, 64, seed=1)
    result = sparsegpt_prune(weight, hessian, mask_structure="2:4", block_size=block_size)
    torch.testing.assert_close(result.weight.double(), _reference_n_m(weight, hessian, 2, 4), rtol=0, atol=1e-4)
    assert result.weight.dtype == torch.float32 and result.loss > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_2_4_beats_magnitude_pruning_on_correlated_inputs(dtype):
    weight, x, hessian = _layer(64, 128, seed=2)
    weight = weight.to(dtype)
    result = sparsegpt_prune(weight, hessian)
    assert result.weight.dtype == dtype and is_2_4_sparse(result.weight)
    assert _output_error(weight, result.weight, x) < 0.3 * _output_error(weight, prune_2_4(weight), x)


def test_identity_hessian_is_magnitude_pruning():
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sparsegpt_prune(weight, torch.eye(64), block_size=16).weight, prune_2_4(weight))


def test_equal_saliencies_prune_the_later_weights():
    weight = torch.tensor([[-0.75, 1.25, 0.75, 0.25, 0.5, 0.5, 0.5, 0.5]], dtype=torch.bfloat16)
    expected = torch.tensor([[-0.75, 1.25, 0, 0, 0.5, 0.5, 0, 0]], dtype=torch.bfloat16)
    assert torch.equal(sparsegpt_prune(weight, torch.eye(8)).weight, expected)


def test_4_8_keeps_4_of_every_8_and_beats_magnitude():
    weight, x, hessian = _layer(32, 128, seed=4)
    result = sparsegpt_prune(weight, hessian, mask_structure="4:8", block_size=20)  # rounded down to 16
    assert ((result.weight.reshape(32, 16, 8) == 0).sum(-1) == 4).all()
    torch.testing.assert_close(result.weight.double(), _reference_n_m(weight, hessian, 4, 8), rtol=0, atol=1e-4)
    assert _output_error(weight, result.weight, x) < 0.3 * _output_error(weight, _magnitude_prune(weight, 4, 8), x)


@pytest.mark.parametrize(("sparsity", "block_size"), [(0.5, 32), (0.25, 16), (0.7, 40)])
def test_unstructured_prunes_exactly_the_fraction_of_each_row_in_each_block(sparsity, block_size):
    weight, x, hessian = _layer(24, 160, seed=5)
    result = sparsegpt_prune(weight, hessian, sparsity=sparsity, mask_structure="0:0", block_size=block_size)
    zeros_per_block = (result.weight.reshape(24, 160 // block_size, block_size) == 0).sum(-1)
    assert (zeros_per_block == round(sparsity * block_size)).all()
    magnitude = _magnitude_prune(weight, round(sparsity * block_size), block_size)
    assert _output_error(weight, result.weight, x) < 0.3 * _output_error(weight, magnitude, x)


def test_dead_inputs_come_out_zero():
    weight, x, _ = _layer(16, 64, seed=6)
    x[:, [1, 30]] = 0
    result = sparsegpt_prune(weight, 2 * x.T @ x / x.shape[0])
    assert is_2_4_sparse(result.weight) and not result.weight[:, [1, 30]].any()


def test_bad_inputs_are_refused():
    weight = torch.randn(8, 64)
    with pytest.raises(ValueError, match="gate_proj: 2:4 sparsity needs in_features divisible by 4, got 6"):
        sparsegpt_prune(torch.randn(8, 6), torch.eye(6), name="gate_proj")
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        sparsegpt_prune(weight, torch.eye(64), block_size=0)
    with pytest.raises(ValueError, match=r"Hessian shape \(60, 60\) does not match weight \(8, 64\)"):
        sparsegpt_prune(weight, torch.eye(60))
    for structure in ("4:2", "2:2", "2-4", "x"):
        with pytest.raises(ValueError, match="mask_structure"):
            sparsegpt_prune(weight, torch.eye(64), mask_structure=structure)
    with pytest.raises(ValueError, match=r"unstructured sparsity must be in \[0, 1\), got 1.0"):
        sparsegpt_prune(weight, torch.eye(64), sparsity=1.0, mask_structure="0:0")
