"""Evaluation results: one `TaskResult` per task, the printed tables and the JSON report (written atomically).

Produced by perplexity, custom tasks and the harness backend; printed and saved by `tachyon eval`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field


@dataclass
class TaskResult:
    name: str
    kind: str  # perplexity, multiple_choice, generate_until, lm_eval
    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    num_samples: int  # docs scored (perplexity: documents of the text)
    info: dict = field(default_factory=dict)  # counts and settings, for the JSON report
    primary: list[str] = field(default_factory=list)  # metrics a recovery average uses (empty: all)

    def primary_metrics(self) -> list[str]:
        return [m for m in self.primary if m in self.metrics] or list(self.metrics)


def format_table(results: list[TaskResult]) -> str:
    rows = [("task", "kind", "metric", "value", "samples")]
    for r in results:
        for metric, value in r.metrics.items():
            arrow = "↑" if r.higher_is_better.get(metric, True) else "↓"
            rows.append((r.name, r.kind, f"{metric} {arrow}", format_number(value), str(r.num_samples)))
    return render_table(rows)


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> str:
    """Write `payload` to `path` through a temporary file in the same folder renamed into place, so a
    reader never sees a half-written report; returns the absolute path."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=str)
            f.write("\n")
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path
