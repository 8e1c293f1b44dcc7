"""The report's cells as text, shared by the Markdown and HTML renderings so both show the same figures:
the summary table, the per-step list with commands, and number formatting.
"""

from __future__ import annotations


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def size(num_bytes: int | None) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 2**20:.1f} MiB"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def meta_line(payload: dict) -> str:
    m = payload["machine"]
    device = m["device"] + (f" ({m['gpu']})" if "gpu" in m else "")
    return (
        f"{payload['created']} · {payload['wall_seconds']:.0f} s · {m['processor']}, {m['cpu_count']} CPUs, "
        f"device {device} · {m['platform']} · torch {m['torch']} · tachyon {m['tachyon']}"
    )


def workload_line(payload: dict) -> str:
    s = payload["settings"]
    w = s["workload"]
    limit = f", first {s['limit']} docs each" if s["limit"] else ""
    return (
        f"Accuracy: {', '.join(s['tasks'])}{limit}. Offline throughput: {w['num_prompts']} prompts of "
        f"{w['prompt_tokens']} tokens, {w['output_tokens']} generated each, one batch. Server load: "
        f"{w['bench_requests']} requests of the same shape at concurrency {', '.join(map(str, w['concurrency']))}."
        + (f" Engine flags: {' '.join(s['engine_flags'])}." if s["engine_flags"] else "")
    )


def recovery_note(payload: dict) -> str:
    return (
        "Recovery: candidate / original × 100 per primary metric (inverted where lower is better), averaged per "
        f"task, then over tasks. Grouped schemes use group size {payload['settings']['group_size']}. "
        f"Recommendations need a recovery of at least {payload['settings']['min_recovery']:g}%."
    )


def summary_table(payload: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of cells per checkpoint (original first)."""
    rows = payload["rows"]
    low = next((r["latency_concurrency"] for r in rows if r["latency_concurrency"]), None)
    high = next((r["server_concurrency"] for r in rows if r["server_concurrency"]), None)
    arrow = lambda c: "↑" if c["higher_is_better"] else "↓"
    headers = [
        "scheme",
        "size",
        *(f"{c['task']} {c['metric']} {arrow(c)}" for c in payload["accuracy_columns"]),
        "recovery",
        "offline tok/s",
        f"server tok/s (c={high or '?'})",
        f"TTFT p50 / p99 ms (c={low or '?'})",
        f"ITL p50 / p99 ms (c={low or '?'})",
        "status",
    ]
    cells = [
        [
            r["label"],
            size(r["size_bytes"]),
            *(number(v) for v in r["accuracy"]),
            percent(r["recovery"]),
            number(r["offline_tok_s"]),
            number(r["server_tok_s"]),
            f"{number(r['ttft_p50_ms'])} / {number(r['ttft_p99_ms'])}",
            f"{number(r['itl_p50_ms'])} / {number(r['itl_p99_ms'])}",
            r["status"],
        ]
        for r in rows
    ]
    return headers, cells


def steps(payload: dict) -> list[dict]:
    """Every step of every row, in run order: label, name, status, seconds, error, command."""
    return [{"label": run["label"], **step} for run in payload["runs"] for step in run["steps"]]
