"""The layer Hessian H = 2/n * sum x x^T that GPTQ and SparseGPT minimise against, and the upper Cholesky
factor of its (dampened) inverse that both sweeps read. The calibration pipeline feeds `Hessian.add` each
Linear's inputs; `tachyon.compress.gptq` and `tachyon.compress.sparsegpt` call `inverse_cholesky`.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["Hessian", "check_layer_inputs", "inverse_cholesky"]

logger = logging.getLogger(__name__)

_NUM_RETRIES = 4  # dampening x10 each time: 1% of mean(diag H) ends at 100x it
_RETRY_FROM_ZERO = 1e-3  # first retry's fraction when the caller asked for no dampening


class Hessian:
    """Running H = 2/n * sum over rows x of x x^T (float32 accumulation, as GPTQ/SparseGPT define it)."""

    def __init__(self, in_features: int, *, device: torch.device | str = "cpu") -> None:
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.num_samples = 0
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # [in, in]

    def add(self, x: torch.Tensor) -> None:
        """Fold in a batch x [..., in_features]; every leading index is one row. The running mean is
        rescaled by n_old / n_new first, so batches of any sizes give exactly 2/n * X^T X."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Hessian of {self.in_features} inputs got a batch of shape {tuple(x.shape)}")
        rows = x.detach().reshape(-1, self.in_features).to(self.matrix.device, torch.float32)  # [n, in]
        if rows.shape[0] == 0:
            return
        total = self.num_samples + rows.shape[0]
        self.matrix *= self.num_samples / total
        self.matrix.addmm_(rows.T, rows, alpha=2.0 / total)
        self.num_samples = total


def check_layer_inputs(weight: torch.Tensor, hessian: torch.Tensor, *, block_size: int = 1, name: str = "") -> None:
    """Refuse a weight [out, in] and Hessian [in, in] that do not belong together, or a block_size < 1."""
    label = name or "weight"
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"{label}: expected a 2-D floating weight, got {weight.dtype} {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"{label}: Hessian shape {tuple(hessian.shape)} does not match weight {tuple(weight.shape)}; "
            f"expected ({in_features}, {in_features})"
        )
    if block_size < 1:
        raise ValueError(f"{label}: block_size must be >= 1, got {block_size}")


def inverse_cholesky(
    hessian: torch.Tensor, weight: torch.Tensor, *, dampening_frac: float = 0.01, name: str = ""
) -> torch.Tensor:
    """Upper-triangular U [in, in] (float32) with U^T U = (H + damp*I)^-1, damp = dampening_frac * mean(diag H).

    Dead inputs (diag H == 0) get H[i,i] = 1 on a copy and weight[:, i] = 0 in place. When H + damp*I is not
    positive definite the dampening is multiplied by 10 (a WARNING each time), up to 4 times; then ValueError.
    `hessian` itself is not modified."""
    check_layer_inputs(weight, hessian, name=name)
    label = name or "weight"
    if dampening_frac < 0:
        raise ValueError(f"{label}: dampening_frac must be >= 0, got {dampening_frac}")
    h = hessian.detach().to(torch.float32).clone()  # [in, in]
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"{label}: the Hessian has NaN or infinite entries; check the calibration inputs")
    dead = torch.diagonal(h) == 0  # [in]
    torch.diagonal(h)[dead] = 1.0
    weight[:, dead] = 0
    mean_diag = torch.diagonal(h).mean()
    fractions = _dampening_schedule(dampening_frac)
    for attempt, frac in enumerate(fractions):
        upper = _upper_cholesky_of_inverse(h, frac * mean_diag)
        if upper is not None:
            return upper
        if attempt + 1 < len(fractions):
            logger.warning(
                "%s: Hessian is not positive definite with dampening %g x mean(diag H); retrying with %g",
                label,
                frac,
                fractions[attempt + 1],
            )
    raise ValueError(
        f"{label}: Hessian is not positive definite even with dampening {fractions[-1]:g} x mean(diag H) "
        f"(mean diag {float(mean_diag):g}); the calibration inputs are degenerate"
    )


def _dampening_schedule(dampening_frac: float) -> list[float]:
    """The fraction tried first and on each retry: x10 each time (from 1e-3 when asked for 0)."""
    first_retry = dampening_frac * 10 if dampening_frac > 0 else _RETRY_FROM_ZERO
    return [dampening_frac] + [first_retry * 10**k for k in range(_NUM_RETRIES)]


def _upper_cholesky_of_inverse(h: torch.Tensor, damp: torch.Tensor) -> torch.Tensor | None:
    """chol((h + damp*I)^-1, upper) or None when either factorisation fails."""
    damped = h.clone()
    torch.diagonal(damped).add_(damp)
    lower, info = torch.linalg.cholesky_ex(damped)  # damped = L L^T
    del damped  # at most two [in, in] temporaries alive at once: they are the largest tensors of a layer
    if int(info) != 0:
        return None
    inverse = torch.cholesky_inverse(lower)
    del lower
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)  # L^-T L^-1 = U^T U
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        return None
    return upper
