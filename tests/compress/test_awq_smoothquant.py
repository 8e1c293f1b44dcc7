"""SmoothQuant and AWQ math on small tensors: folding scales keeps the function exact, the searches improve on
plain round-to-nearest, and the formulas are the papers'."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tachyon.compress.awq import apply_clip, clip_search, scale_search
from tachyon.compress.modifiers import _fold_scales
from tachyon.compress.smoothquant import apply_smoothing, smoothing_scales
from tachyon.quantization.quantize import round_to_nearest
from tachyon.quantization.schemes import QuantArgs

W4_G32 = QuantArgs(4, "int", "group", group_size=32)


class RMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def outlier_inputs(tokens: int, width: int, seed: int = 0) -> torch.Tensor:
    """Activations whose few channels are 20-50x larger than the rest, as in LLMs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=gen)
    x[:, :4] *= torch.tensor([50.0, 30.0, 20.0, 25.0])
    return x


def linears(width: int, outs: list[int], seed: int = 1) -> list[nn.Linear]:
    torch.manual_seed(seed)
    return [nn.Linear(width, out, bias=False) for out in outs]


@torch.no_grad()
def test_smoothing_keeps_the_function_and_flattens_the_outlier_channels():
    x = outlier_inputs(64, 128)
    torch.manual_seed(0)
    norm, lins = RMSNorm(128), linears(128, [96, 32])
    before = [lin(norm(x)) for lin in lins]
    absmax = norm(x).abs().amax(dim=0)
    scales = smoothing_scales(absmax, lins, alpha=0.5)
    apply_smoothing(norm, lins, scales)
    for lin, expected in zip(lins, before):
        torch.testing.assert_close(lin(norm(x)), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(x).abs().amax(dim=0), absmax / scales)
    ratio = lambda v: (v.max() / v.median()).item()  # noqa: E731
    assert ratio(norm(x).abs().amax(dim=0)) < ratio(absmax) / 2  # about its square root at alpha 0.5


def test_smoothing_scales_are_the_papers_formula():
    lins = linears(16, [8, 8])
    absmax = torch.rand(16) * 10
    weight_max = torch.cat([lin.weight for lin in lins]).abs().amax(dim=0)
    expected = (absmax.pow(0.8) / weight_max.pow(0.2)).clamp(min=1e-5)
    torch.testing.assert_close(smoothing_scales(absmax, lins, alpha=0.8), expected.detach())
    with pytest.raises(ValueError, match="smoothing_strength must be in"):
        smoothing_scales(absmax, lins, alpha=1.5)


@torch.no_grad()
def test_folding_into_a_preceding_linear_keeps_the_function():
    x = outlier_inputs(32, 64)
    [first], [second] = linears(64, [48]), linears(48, [16])
    expected = second(first(x))
    _fold_scales(first, [second], torch.rand(48) + 0.5)
    torch.testing.assert_close(second(first(x)), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_awq_scale_search_beats_round_to_nearest_on_outlier_activations():
    x = outlier_inputs(256, 128)
    lins = linears(128, [64, 64])
    originals = [lin.weight.clone() for lin in lins]
    reference = torch.cat([lin(x) for lin in lins], dim=-1)
    block = lambda: torch.cat([lin(x) for lin in lins], dim=-1)  # noqa: E731
    scales = scale_search(lins, x.abs().mean(dim=0), block, W4_G32)
    assert all(torch.equal(lin.weight, w) for lin, w in zip(lins, originals))  # restored
    rtn = torch.cat([x @ round_to_nearest(w, W4_G32)[0].T for w in originals], dim=-1)
    awq = torch.cat([(x / scales) @ round_to_nearest(w * scales, W4_G32)[0].T for w in originals], dim=-1)
    assert (awq - reference).pow(2).mean() < 0.7 * (rtn - reference).pow(2).mean()


@torch.no_grad()
def test_clip_search_never_does_worse_than_no_clipping():
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(32, 64, generator=gen)
    weight[:, 5] *= 8  # a few large weights stretch their groups' ranges
    x = outlier_inputs(128, 64)
    best = clip_search(weight, x, W4_G32)
    original = weight.reshape(32, 2, 32).abs().amax(dim=-1, keepdim=True)
    assert best.shape == (32, 2, 1) and (best <= original).all() and (best < original).any()
    error = lambda w: (x @ (round_to_nearest(w, W4_G32)[0] - weight).T).pow(2).mean()  # noqa: E731
    assert error(apply_clip(weight, best, W4_G32)) <= error(weight)
