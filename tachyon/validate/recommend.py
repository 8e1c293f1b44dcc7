"""Which checkpoint to deploy, per use case, from the report's summary rows (report.py):

  latency-bound      lowest median inter-token latency at the lowest load level (one user's stream)
  throughput-bound   highest offline output tokens/s (a full batch)

Only rows that keep at least --min-recovery % of the original's accuracy qualify (the original always
does). Figures within TIE of the best count as equal, and the smallest checkpoint among them wins: on
equal speed, fewer bytes leave more memory for the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

TIE = 0.05  # relative


@dataclass(frozen=True)
class Recommendation:
    use_case: str
    choice: str | None  # a row's label; None when no qualifying row has the figure
    reason: str


_USE_CASES = (
    # use case, row key, lower is better, what it is
    ("latency-bound", "itl_p50_ms", True, "median ITL at the lowest concurrency, ms"),
    ("throughput-bound", "offline_tok_s", False, "offline output tokens/s"),
)


def recommend(rows: list[dict], min_recovery: float) -> list[Recommendation]:
    eligible = [r for r in rows if r["recovery"] is not None and r["recovery"] >= min_recovery]
    return [_pick(use_case, key, lower, what, eligible, min_recovery) for use_case, key, lower, what in _USE_CASES]


def _pick(use_case: str, key: str, lower: bool, what: str, rows: list[dict], min_recovery: float) -> Recommendation:
    measured = [r for r in rows if r[key] is not None]
    if not measured:
        return Recommendation(use_case, None, f"no row with recovery >= {min_recovery:g}% has a {what} figure")
    best = min(r[key] for r in measured) if lower else max(r[key] for r in measured)
    close = [r for r in measured if abs(r[key] - best) <= TIE * abs(best)]
    choice = min(close, key=lambda r: r["size_bytes"] if r["size_bytes"] is not None else float("inf"))
    others = ", ".join(f"{r['label']} {r[key]:.4g}" for r in measured if r is not choice)
    reason = f"{what}: {choice[key]:.4g}" + (f" (vs {others})" if others else "")
    reason += f"; accuracy recovery {choice['recovery']:.2f}%"
    if len(close) > 1:
        reason += f"; within {TIE:.0%} of the best, so the smallest checkpoint"
    return Recommendation(use_case, choice["label"], reason)
