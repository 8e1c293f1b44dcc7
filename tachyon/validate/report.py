"""The validation report: one JSON payload (settings, machine, the summary table, recommendations, every
step with its command, and each row's full results), rendered as report.md (markdown.py) and a
self-contained report.html (html_page.py). `pipeline.validate_model` writes all three into its hidden
work folder, which is renamed into place only when they are complete.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import tachyon
from tachyon.hardware import cpu_name
from tachyon.validate.html_page import render_html
from tachyon.validate.markdown import render_markdown
from tachyon.validate.recommend import recommend
from tachyon.validate.steps import OK

if TYPE_CHECKING:
    from tachyon.validate.config import ValidateConfig
    from tachyon.validate.pipeline import ModelRun

FORMAT = "tachyon-validate"
VERSION = 1
REPORT_FILES = ("report.json", "report.md", "report.html")


def write_report(
    folder: str, config: ValidateConfig, runs: list[ModelRun], model: str, group_size: int, seconds: float
) -> dict:
    payload = build_payload(config, runs, model, group_size, seconds)
    texts = (json.dumps(payload, indent=2, default=str) + "\n", render_markdown(payload), render_html(payload))
    for name, text in zip(REPORT_FILES, texts):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    return payload


def build_payload(config: ValidateConfig, runs: list[ModelRun], model: str, group_size: int, seconds: float) -> dict:
    columns = accuracy_columns(runs)
    rows = [summary_row(run, columns) for run in runs]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": seconds,
        "machine": machine(config.engine.device),
        "settings": {
            "schemes": list(config.schemes),
            "group_size": group_size,
            "tasks": list(config.tasks),
            "limit": config.limit,
            "window": config.window,
            "stride": config.stride,
            "min_recovery": config.min_recovery,
            "workload": asdict(config.workload),
            "engine_flags": list(config.engine_flags),
        },
        "accuracy_columns": [{"task": t, "metric": m, "higher_is_better": h} for t, m, h in columns],
        "rows": rows,
        "recommendations": [asdict(r) for r in recommend(rows, config.min_recovery)],
        "runs": [run_dict(run) for run in runs],
    }


def accuracy_columns(runs: list[ModelRun]) -> list[tuple[str, str, bool]]:
    """(task, metric, higher_is_better) for each primary metric of each task, from the first row with results."""
    for run in runs:
        if run.accuracy:
            return [(r.name, m, r.higher_is_better.get(m, True)) for r in run.accuracy for m in r.primary_metrics()]
    return []


def summary_row(run: ModelRun, columns: list[tuple[str, str, bool]]) -> dict:
    """One line of the table: accuracy per task, recovery, offline throughput, serving latency at the
    lowest concurrency level and serving throughput at the highest."""
    metrics = {(r.name, m): v for r in run.accuracy or [] for m, v in r.metrics.items()}
    levels = sorted(run.serving or [], key=lambda level: level.concurrency)
    low, high = (levels[0], levels[-1]) if levels else (None, None)
    if run.label == "original":
        recovery = 100.0  # by definition
    else:
        recovery = run.recovery.average if run.recovery is not None else None
    return {
        "label": run.label,
        "size_bytes": run.size_bytes,
        "accuracy": [metrics.get((task, metric)) for task, metric, _ in columns],
        "recovery": recovery,
        "offline_tok_s": run.throughput.output_throughput if run.throughput else None,
        "server_tok_s": high.output_throughput if high else None,
        "server_concurrency": high.concurrency if high else None,
        "latency_concurrency": low.concurrency if low else None,
        "ttft_p50_ms": low.ttft_p50 if low else None,
        "ttft_p99_ms": low.ttft_p99 if low else None,
        "itl_p50_ms": low.itl_p50 if low else None,
        "itl_p99_ms": low.itl_p99 if low else None,
        "status": "; ".join(f"{s.name} {s.status}" for s in run.steps if s.status != OK) or OK,
    }


def run_dict(run: ModelRun) -> dict:
    return {
        "label": run.label,
        "path": run.path,
        "size_bytes": run.size_bytes,
        "steps": [asdict(s) for s in run.steps],
        "accuracy": [vars(r) for r in run.accuracy] if run.accuracy is not None else None,
        "recovery": run.recovery.to_dict() if run.recovery is not None else None,
        "throughput": asdict(run.throughput) if run.throughput is not None else None,
        "serving": [asdict(level) for level in run.serving] if run.serving is not None else None,
    }


def machine(device: str) -> dict:
    """Where the figures come from; `device` is the --device flag (auto: CUDA when there is one)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tachyon": tachyon.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
