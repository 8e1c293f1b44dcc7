"""Latency and throughput of one replica at a steady concurrency, from roofline step times, and the
replicas a target load needs under TTFT/ITL SLOs. The planner calls `load_point`, `sweep` and
`size_for_target`.

Steady state at concurrency C (mean prompt N, mean output M, decode step t_d(C) at the mean context
N + M/2, prefill t_p(N)): every request costs the device t_p plus M/C of a decode step, so

    requests/s  R = 1 / (t_p + M * t_d / C)      output tokens/s = R * M
    ITL = t_d / (1 - R * t_p)    (prefills interleave with the decodes)      TTFT = t_p + t_d
(consistent with Little's law: C = R * (TTFT + (M - 1) * ITL) up to one step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tachyon.plan.roofline import Roofline

__all__ = ["LoadPoint", "Sizing", "Workload", "load_point", "size_for_target", "sweep"]


@dataclass(frozen=True)
class Workload:
    prompt_len: int = 512
    output_len: int = 128
    rate: float | None = None  # target requests/s over all replicas
    concurrency: int | None = None  # target requests in flight over all replicas
    slo_ttft_ms: float | None = None
    slo_itl_ms: float | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError("--prompt-len and --output-len must be at least 1")
        if self.rate is not None and self.concurrency is not None:
            raise ValueError("give --rate or --concurrency, not both")
        for flag, value in (("--rate", self.rate), ("--concurrency", self.concurrency)):
            if value is not None and value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        for flag, value in (("--slo-ttft-ms", self.slo_ttft_ms), ("--slo-itl-ms", self.slo_itl_ms)):
            if value is not None and value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")

    @property
    def context_len(self) -> int:
        return self.prompt_len + self.output_len


@dataclass(frozen=True)
class LoadPoint:
    concurrency: float
    decode_step_ms: float
    ttft_ms: float
    itl_ms: float
    requests_per_s: float
    output_tokens_per_s: float

    def meets(self, workload: Workload) -> bool:
        ttft_ok = workload.slo_ttft_ms is None or self.ttft_ms <= workload.slo_ttft_ms
        return ttft_ok and (workload.slo_itl_ms is None or self.itl_ms <= workload.slo_itl_ms)


@dataclass(frozen=True)
class Sizing:
    """The best operating point of one replica under the SLOs, and the replicas the target needs."""

    best: LoadPoint | None  # None: no concurrency meets the SLOs
    num_replicas: int | None  # None: no target given, or the SLOs cannot be met
    expected: LoadPoint | None  # per replica, at the target load spread over num_replicas


def load_point(roofline: Roofline, workload: Workload, concurrency: float) -> LoadPoint:
    c = max(concurrency, 1e-9)
    step = roofline.decode_step_s(max(1.0, c), workload.prompt_len + workload.output_len / 2)
    prefill = roofline.prefill_s(workload.prompt_len)
    rate = 1 / (prefill + workload.output_len * step / c)
    itl = step / max(1 - rate * prefill, 1e-9)
    return LoadPoint(c, step * 1e3, (prefill + step) * 1e3, itl * 1e3, rate, rate * workload.output_len)


def sweep(roofline: Roofline, workload: Workload, max_concurrency: int) -> list[LoadPoint]:
    """Load points at 1, 2, 4, ... and max_concurrency."""
    levels = [2**i for i in range(int(math.log2(max(max_concurrency, 1))) + 1)]
    if levels[-1] != max_concurrency and max_concurrency > 0:
        levels.append(max_concurrency)
    return [load_point(roofline, workload, c) for c in levels]


def size_for_target(roofline: Roofline, workload: Workload, max_concurrency: int) -> Sizing:
    """The highest concurrency (<= max_concurrency) that meets the SLOs, and how many replicas serve the
    target rate or concurrency at or below it."""
    ok = [c for c in range(1, max_concurrency + 1) if load_point(roofline, workload, c).meets(workload)]
    if not ok:
        return Sizing(None, None, None)
    best = load_point(roofline, workload, ok[-1])  # R grows with C: the largest SLO-meeting C serves most
    if workload.rate is not None:
        replicas = math.ceil(workload.rate / best.requests_per_s - 1e-9)
        return Sizing(best, replicas, _at_rate(roofline, workload, workload.rate / replicas, best.concurrency))
    if workload.concurrency is not None:
        replicas = math.ceil(workload.concurrency / best.concurrency - 1e-9)
        return Sizing(best, replicas, load_point(roofline, workload, workload.concurrency / replicas))
    return Sizing(best, None, None)


def _at_rate(roofline: Roofline, workload: Workload, rate: float, max_c: float) -> LoadPoint:
    """The load point whose request rate is `rate` (bisection on concurrency: the rate grows with it)."""
    lo, hi = 1e-6, max_c
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if load_point(roofline, workload, mid).requests_per_s < rate else (lo, mid)
    return load_point(roofline, workload, hi)
