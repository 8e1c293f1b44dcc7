"""Accuracy recovery of a compressed model: each metric of the candidate relative to the baseline, in percent.

recovery = candidate / baseline x 100 for higher-is-better metrics, baseline / candidate x 100 for
lower-is-better ones (perplexity), so 100 means "no loss" either way and above 100 means better. Per task the
primary metrics (perplexity: ppl; multiple choice: acc, acc_norm; generation: exact_match) are averaged, and
the tasks' averages are averaged again. Called by `tachyon eval --baseline B --candidate C`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tachyon.evals.results import TaskResult, format_number, render_table


@dataclass(frozen=True)
class MetricRecovery:
    task: str
    metric: str
    baseline: float
    candidate: float
    higher_is_better: bool
    recovery: float | None  # percent; None where the baseline (or, lower-is-better, the candidate) is 0


@dataclass
class RecoveryReport:
    rows: list[MetricRecovery]
    per_task: dict[str, float | None]  # mean recovery over each task's primary metrics
    average: float | None  # mean of the per-task values that exist

    def to_dict(self) -> dict:
        return {
            "metrics": [vars(r) for r in self.rows],
            "per_task": self.per_task,
            "average": self.average,
        }


def metric_recovery(baseline: float, candidate: float, higher_is_better: bool) -> float | None:
    num, den = (candidate, baseline) if higher_is_better else (baseline, candidate)
    return None if den == 0 else 100.0 * num / den


def compare(baseline: list[TaskResult], candidate: list[TaskResult]) -> RecoveryReport:
    """Pairs results by task name (both runs evaluate the same task list)."""
    by_name = {r.name: r for r in candidate}
    rows, per_task = [], {}
    for base in baseline:
        cand = by_name.get(base.name)
        if cand is None:
            raise ValueError(f"task {base.name} has no candidate result")
        task_rows = [
            MetricRecovery(
                base.name,
                metric,
                base.metrics[metric],
                cand.metrics[metric],
                base.higher_is_better.get(metric, True),
                metric_recovery(base.metrics[metric], cand.metrics[metric], base.higher_is_better.get(metric, True)),
            )
            for metric in base.metrics
            if metric in cand.metrics
        ]
        rows += task_rows
        primary = [r.recovery for r in task_rows if r.metric in base.primary_metrics() and r.recovery is not None]
        per_task[base.name] = sum(primary) / len(primary) if primary else None
    known = [v for v in per_task.values() if v is not None]
    return RecoveryReport(rows, per_task, sum(known) / len(known) if known else None)


def format_recovery(report: RecoveryReport) -> str:
    rows = [("task", "metric", "baseline", "candidate", "recovery %")]
    for r in report.rows:
        arrow = "↑" if r.higher_is_better else "↓"
        rows.append(
            (r.task, f"{r.metric} {arrow}", format_number(r.baseline), format_number(r.candidate), _pct(r.recovery))
        )
    for task, value in report.per_task.items():
        rows.append((task, "mean of primary", "", "", _pct(value)))
    rows.append(("all tasks", "average", "", "", _pct(report.average)))
    return render_table(rows)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
