"""Output of `tachyon bench`: the live progress line, the console summary (also what
`tachyon bench report run.json` prints), `compare` ratios, and the file writers chosen by suffix
from `WRITERS` (.json: every record plus the aggregates; .csv: one row per load level; .html: the
offline report of `html_report.py`)."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable

from tqdm import tqdm

from tachyon.bench.html_report import write_html
from tachyon.bench.metrics import OK, PERCENTILES, RequestRecord
from tachyon.bench.results import BenchRun, save_json

LATENCY_TABLES = (("ttft", "TTFT (ms)"), ("itl", "ITL (ms)"), ("tpot", "TPOT (ms)"), ("e2el", "E2E latency (ms)"))
COMPARE_KEYS = (
    "completed",
    "failed",
    "incomplete",
    "achieved_rate",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "mean_concurrency",
    *(f"{stat}_{metric}_ms" for metric in ("ttft", "itl", "tpot", "e2el") for stat in ("mean", "median", "p90", "p99")),
)


class Progress:
    """One tqdm line per benchmark: requests finished, their current rate (tqdm's), running mean
    TTFT of the successful ones, errors so far."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def start(self, label: str, total: int | None) -> None:
        self.close()
        self.num_ok = self.num_errors = 0
        self.ttft_sum = 0.0
        self.bar = tqdm(total=total, desc=label, unit="req", file=sys.stderr, disable=not self.enabled, leave=True)

    def finished(self, record: RequestRecord) -> None:
        if self.bar is None:
            return
        if record.status == OK:
            self.num_ok += 1
            self.ttft_sum += record.ttft or 0.0
        else:
            self.num_errors += 1
        ttft = f"{1000 * self.ttft_sum / self.num_ok:.0f} ms" if self.num_ok else "-"
        self.bar.set_postfix_str(f"mean TTFT {ttft}, {self.num_errors} errors", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def render_summary(run: BenchRun) -> str:
    meta = run.meta
    lines = [
        f"tachyon bench: profile {meta.get('profile')}, model {meta.get('model')}, {meta.get('url')}",
        f"data: {meta.get('data')}; warm-up {meta.get('warmup')}, cool-down {meta.get('cooldown')}"
        + (f"; SLOs {', '.join(f'{k}<={v:g}' for k, v in run.slos.items())}" if run.slos else ""),
        "",
        _load_table(run),
    ]
    for metric, title in LATENCY_TABLES:
        lines += ["", _latency_table(run, metric, title)]
    return "\n".join(lines)


def _load_table(run: BenchRun) -> str:
    header = [
        "benchmark",
        "target/s",
        "sent/s",
        "p99 lag ms",
        "duration s",
        "sent",
        "done",
        "failed",
        "incompl.",
        "excluded",
        "concurrency",
        "req/s",
        "out tok/s",
        "tot tok/s",
        "goodput/s",
        "stopped by",
    ]
    rows = []
    for b in run.benchmarks:
        s = b.stats
        rows.append(
            [
                b.level.label,
                _num(s.target_rate),
                _num(s.achieved_rate),
                _num(s.lag.p99),
                _num(s.duration),
                s.num_requests,
                s.completed,
                s.failed,
                s.incomplete,
                s.num_excluded,
                _num(s.mean_concurrency),
                _num(s.request_throughput),
                _num(s.output_throughput),
                _num(s.total_token_throughput),
                _num(s.request_goodput),
                b.stop_reason,
            ]
        )
    return _table("Load", header, rows)


def _latency_table(run: BenchRun, metric: str, title: str) -> str:
    stats = ("mean", "median", *(f"p{q}" for q in PERCENTILES))
    rows = [[b.level.label, *(_num(getattr(getattr(b.stats, metric), s)) for s in stats)] for b in run.benchmarks]
    return _table(title, ["benchmark", *stats], rows)


def render_compare(a: BenchRun, b: BenchRun, name_a: str = "A", name_b: str = "B") -> str:
    """B / A for each headline metric at each load level (matched by position)."""
    lines = [f"A = {name_a} ({a.meta.get('profile')}), B = {name_b} ({b.meta.get('profile')}); ratio = B / A"]
    if len(a.benchmarks) != len(b.benchmarks):
        lines.append(f"A has {len(a.benchmarks)} benchmarks and B {len(b.benchmarks)}; comparing the first ones")
    for i, (ba, bb) in enumerate(zip(a.benchmarks, b.benchmarks)):
        fa, fb = ba.stats.flat(), bb.stats.flat()
        rows = [[key, _num(fa.get(key)), _num(fb.get(key)), _ratio(fa.get(key), fb.get(key))] for key in COMPARE_KEYS]
        lines += ["", _table(f"benchmark {i}: {ba.level.label} vs {bb.level.label}", ["metric", "A", "B", "B/A"], rows)]
    return "\n".join(lines)


def _ratio(a, b) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.3f}"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header, *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]).rstrip()

    return "\n".join([title, *(fmt(row) for row in cells)])


def write_csv(run: BenchRun, path: str) -> None:
    """One row per benchmark: its level, why it stopped, and every flat statistic."""
    rows = [
        {"benchmark": b.level.label, **b.level.to_dict(), "stop_reason": b.stop_reason, **b.stats.flat()}
        for b in run.benchmarks
    ]
    with open(path, "w", encoding="utf-8", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


WRITERS: dict[str, Callable[[BenchRun, str], None]] = {".json": save_json, ".csv": write_csv, ".html": write_html}


def check_output_paths(paths: list[str]) -> None:
    """Before the run: every --output has a known suffix and a folder that exists."""
    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        if ext not in WRITERS:
            raise ValueError(f"--output {path}: unsupported file type {ext!r}; use {', '.join(WRITERS)}")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"--output {path}: folder {folder} does not exist")


def write_outputs(run: BenchRun, paths: list[str]) -> None:
    for path in paths:
        WRITERS[os.path.splitext(path)[1].lower()](run, path)
