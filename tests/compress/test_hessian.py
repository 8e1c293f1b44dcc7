"""Hessian accumulation against 2 X^T X / n computed in fp64 on the concatenated rows, and inverse_cholesky
against the fp64 inverse of the dampened Hessian, with dead inputs, retries and hopeless inputs."""

from __future__ import annotations

import logging

import pytest
import torch

from tachyon.compress.hessian import Hessian, inverse_cholesky


def _random_hessian(in_features: int, num_rows: int = 256, seed: int = 0) -> torch.Tensor:
    x = torch.randn(num_rows, in_features, generator=torch.Generator().manual_seed(seed))
    return 2 * x.T @ x / num_rows


def _dampened_inverse(h: torch.Tensor, frac: float) -> torch.Tensor:
    """(H + frac * mean(diag H) * I)^-1 in fp64."""
    h = h.double()
    return torch.linalg.inv(h + frac * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hessian_equals_direct_fp64_over_batches_of_varied_sizes(dtype):
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(*shape, 48, generator=gen).to(dtype) for shape in [(3,), (2, 5), (1, 17, 1), (40,)]]
    hessian = Hessian(48)
    for batch in batches:
        hessian.add(batch)
    rows = torch.cat([b.reshape(-1, 48) for b in batches]).double()  # [n, 48]
    expected = 2 * rows.T @ rows / rows.shape[0]
    assert hessian.num_samples == rows.shape[0] == 3 + 10 + 17 + 40
    assert hessian.matrix.dtype == torch.float32 and hessian.matrix.shape == (48, 48)
    torch.testing.assert_close(hessian.matrix.double(), expected, rtol=1e-5, atol=1e-5)


def test_hessian_ignores_empty_batches_and_refuses_wrong_width():
    hessian = Hessian(8)
    hessian.add(torch.ones(0, 8))
    assert hessian.num_samples == 0 and not hessian.matrix.any()
    hessian.add(torch.ones(2, 8))
    torch.testing.assert_close(hessian.matrix, torch.full((8, 8), 2.0))
    with pytest.raises(ValueError, match="Hessian of 8 inputs got a batch of shape \\(4, 7\\)"):
        hessian.add(torch.ones(4, 7))


def test_inverse_cholesky_is_upper_factor_of_dampened_inverse():
    h = _random_hessian(64)
    weight = torch.randn(16, 64)
    before = weight.clone()
    u = inverse_cholesky(h, weight, dampening_frac=0.05)
    assert u.dtype == torch.float32 and torch.equal(u, u.triu())
    torch.testing.assert_close(u.double().T @ u.double(), _dampened_inverse(h, 0.05), rtol=1e-4, atol=1e-5)
    assert torch.equal(weight, before)


def test_dead_inputs_get_unit_diagonal_and_zeroed_weights():
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(2))
    x[:, [3, 17]] = 0
    h = 2 * x.T @ x / 128
    h_before = h.clone()
    weight = torch.randn(8, 32)
    alive = weight.clone()
    u = inverse_cholesky(h, weight, name="layers.0.mlp.up_proj")
    assert not weight[:, [3, 17]].any()
    alive[:, [3, 17]] = 0
    assert torch.equal(weight, alive)
    assert torch.equal(h, h_before)  # the caller's Hessian is untouched
    fixed = h.clone()
    fixed[3, 3] = fixed[17, 17] = 1
    torch.testing.assert_close(u.double().T @ u.double(), _dampened_inverse(fixed, 0.01), rtol=1e-4, atol=1e-5)


def test_not_positive_definite_retries_with_more_dampening(caplog):
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    eigenvalues = torch.ones(16, dtype=torch.float64)
    eigenvalues[0] = -0.05  # 1% of mean(diag) ~0.93 does not cover it, 10% does
    h = (basis * eigenvalues) @ basis.T
    with caplog.at_level(logging.WARNING, logger="tachyon.compress.hessian"):
        u = inverse_cholesky(h.float(), torch.randn(4, 16), name="layers.3.self_attn.q_proj")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "layers.3.self_attn.q_proj" in message and "0.01" in message and "0.1" in message
    torch.testing.assert_close(u.double().T @ u.double(), _dampened_inverse(h, 0.1), rtol=1e-3, atol=1e-4)


def test_hopeless_hessian_is_a_value_error(caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="down_proj: Hessian is not positive"):
        inverse_cholesky(-torch.eye(8), torch.randn(2, 8), name="down_proj")
    assert sum("down_proj" in r.getMessage() for r in caplog.records) == 4  # one warning per retry
    nan_hessian = torch.eye(8)
    nan_hessian[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        inverse_cholesky(nan_hessian, torch.randn(2, 8))


def test_shape_mismatch_and_negative_dampening_are_refused():
    with pytest.raises(ValueError, match=r"o_proj: Hessian shape \(8, 8\) does not match weight \(4, 6\)"):
        inverse_cholesky(torch.eye(8), torch.randn(4, 6), name="o_proj")
    with pytest.raises(ValueError, match="dampening_frac must be >= 0"):
        inverse_cholesky(torch.eye(8), torch.randn(4, 8), dampening_frac=-0.1)
