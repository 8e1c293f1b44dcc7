"""The single-file HTML report of a `BenchRun` (`--output run.html`, or `tachyon bench report
run.json --output run.html`): the run's settings, a summary table, latency and throughput against
load, and TTFT/ITL distributions, with the --slo limits drawn in. Styles and charts are inline and
nothing is fetched, so the file opens offline."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from tachyon.bench.charts import SLO_COLOR, Series, Threshold, color, line_chart, step_points
from tachyon.bench.metrics import OK
from tachyon.bench.results import BenchmarkResult, BenchRun

LATENCIES = (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"), ("e2el", "E2E latency"))
SLO_OF = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms"}
NUM_BINS = 30
META_KEYS = (
    "profile", "model", "url", "data", "tokenizer", "max_requests", "max_seconds", "max_concurrency",
    "warmup", "cooldown", "ignore_eos", "seed", "started_at", "command",
)  # fmt: skip
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
td:first-child, th:first-child, .meta td { text-align: left; }
.meta td { white-space: normal; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; } caption { text-align: left; }
figure { display: inline-block; margin: 0 16px 16px 0; vertical-align: top; }
figcaption { font-size: 12px; color: #555; max-width: 460px; }
.legend span { display: inline-block; width: 18px; height: 3px; margin: 0 4px 3px 10px; }
svg .title { font-weight: 600; text-anchor: middle; }
svg text { font-size: 11px; fill: #333; } svg .title { font-size: 13px; }
svg .grid { stroke: #eee; } svg .axis { stroke: #666; fill: none; }
svg .series { fill: none; stroke-width: 2; }
"""


def write_html(run: BenchRun, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(run))


def render_html(run: BenchRun) -> str:
    title = f"tachyon bench: {run.meta.get('profile')} on {run.meta.get('model')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _meta_table(run),
        "<h2>Summary</h2>",
        _summary_table(run),
        "<h2>Latency vs load</h2>",
        *_latency_charts(run),
        "<h2>Throughput vs load</h2>",
        *_throughput_charts(run),
        "<h2>Distributions</h2>",
        *_distribution_charts(run),
    ]
    head = f'<meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(body) + "\n</body></html>\n"


def _meta_table(run: BenchRun) -> str:
    rows = [(k, run.meta[k]) for k in META_KEYS if run.meta.get(k) not in (None, "", [])]
    if run.slos:
        rows.append(("slos", ", ".join(f"{k} <= {v:g}" for k, v in run.slos.items())))
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="meta">{cells}</table>'


def _summary_table(run: BenchRun) -> str:
    header = ["benchmark", "target/s", "req/s", "done", "failed", "incompl.", "concurrency", "out tok/s"]
    header += ["goodput/s"] if run.slos else []
    header += [f"{name} {stat}" for _, name in LATENCIES for stat in ("mean", "p50", "p99")]
    rows = []
    for b in run.benchmarks:
        s = b.stats
        cells = [b.level.label, _fmt(s.target_rate), _fmt(s.request_throughput), s.completed, s.failed]
        cells += [s.incomplete, _fmt(s.mean_concurrency), _fmt(s.output_throughput)]
        cells += [_fmt(s.request_goodput)] if run.slos else []
        for metric, _ in LATENCIES:
            d = getattr(s, metric)
            cells += [_fmt(d.mean), _fmt(d.median), _fmt(d.p99)]
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
    caption = "<caption>latencies in ms over completed, measured requests</caption>"
    return f'<div class="scroll"><table class="summary">{caption}{head}{"".join(rows)}</table></div>'


def load_axis(run: BenchRun) -> tuple[str, list[float]]:
    """Concurrency when every benchmark is a `concurrent` one, else completed requests per second."""
    if all(b.level.kind == "concurrent" for b in run.benchmarks):
        return "concurrency (streams)", [float(b.level.streams) for b in run.benchmarks]
    return "throughput (completed requests/s)", [b.stats.request_throughput for b in run.benchmarks]


def _along_load(run: BenchRun, name: str, values: list[float | None], i: int, dashed: bool = False) -> Series:
    """One series over the load axis, sorted by load; benchmarks without a value are skipped."""
    _, xs = load_axis(run)
    labelled = sorted((x, y, b.level.label) for x, y, b in zip(xs, values, run.benchmarks) if y is not None)
    return Series(name, [(x, y) for x, y, _ in labelled], color(i), dashed, [label for *_, label in labelled])


def _latency_charts(run: BenchRun) -> list[str]:
    x_label, _ = load_axis(run)
    figures = []
    for metric, name in LATENCIES:
        dists = [getattr(b.stats, metric) for b in run.benchmarks]
        series = [
            _along_load(run, "median", [d.median for d in dists], 0),
            _along_load(run, "p99", [d.p99 for d in dists], 1, dashed=True),
        ]
        slo = run.slos.get(SLO_OF.get(metric, ""))
        thresholds = [Threshold(f"SLO {slo:g} ms", slo)] if slo else []
        chart = line_chart(f"{name} vs load", x_label, f"{name} (ms)", series, thresholds)
        figures.append(_figure(chart, series, thresholds))
    return figures


def _throughput_charts(run: BenchRun) -> list[str]:
    x_label, _ = load_axis(run)
    stats = [b.stats for b in run.benchmarks]
    tokens = [
        _along_load(run, "output tokens/s", [s.output_throughput for s in stats], 0),
        _along_load(run, "total tokens/s", [s.total_token_throughput for s in stats], 2),
    ]
    requests = [_along_load(run, "completed requests/s", [s.request_throughput for s in stats], 0)]
    if run.slos:
        requests.append(_along_load(run, "goodput (met every SLO)/s", [s.request_goodput for s in stats], 3, True))
    return [
        _figure(line_chart("Token throughput vs load", x_label, "tokens/s", tokens), tokens),
        _figure(line_chart("Request throughput vs load", x_label, "requests/s", requests), requests),
    ]


def _distribution_charts(run: BenchRun) -> list[str]:
    done = [[r for r in b.records if r.measured and r.status == OK] for b in run.benchmarks]
    ttft = [[1000 * r.ttft for r in records if r.ttft is not None] for records in done]
    itl = [[1000 * gap for r in records for gap in r.itl] for records in done]
    slo = run.slos.get("ttft_ms")
    return [
        _histogram("TTFT distribution", "TTFT (ms)", run.benchmarks, ttft, slo),
        _histogram("ITL distribution", "ITL (ms)", run.benchmarks, itl, None),
    ]


def _histogram(
    title: str, x_label: str, benchmarks: list[BenchmarkResult], samples: list[list[float]], slo: float | None
) -> str:
    """Shared bins over all benchmarks; each benchmark's line is the share (%) of its own samples per
    bin. A long tail (max over twice the pooled p99) is folded into the last bin so the body shows."""
    pooled = np.asarray([v for values in samples for v in values], dtype=np.float64)
    thresholds = [Threshold(f"SLO {slo:g} ms", slo, vertical=True)] if slo else []
    if pooled.size == 0:
        return _figure(line_chart(title, x_label, "% of samples", []), [])
    lo, hi = float(pooled.min()), float(pooled.max())
    p99 = float(np.percentile(pooled, 99))
    folded = hi > 2 * p99 > lo
    top = p99 if folded else hi
    edges = np.linspace(lo, top if top > lo else lo + 1.0, NUM_BINS + 1)
    series = []
    for i, (b, values) in enumerate(zip(benchmarks, samples)):
        if values:
            counts, _ = np.histogram(np.clip(values, lo, edges[-1]), bins=edges)
            shares = (100 * counts / len(values)).tolist()
            series.append(Series(b.level.label, step_points(edges.tolist(), shares), color(i)))
    chart = line_chart(title, x_label, "% of samples", series, thresholds)
    note = f"The last bin also holds the tail from the p99 ({top:.4g} ms) up to {hi:.4g} ms." if folded else ""
    return _figure(chart, series, thresholds, note)


def _figure(chart: str, series: list[Series], thresholds: Sequence[Threshold] = (), note: str = "") -> str:
    items = [f'<span style="background:{s.color}"></span>{escape(s.name)}' for s in series]
    items += [f'<span style="background:{SLO_COLOR}"></span>{escape(t.name)}' for t in thresholds]
    caption = f'<figcaption><div class="legend">{"".join(items)}</div>{escape(note)}</figcaption>'
    return f"<figure>{chart}{caption}</figure>"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
