"""The report from hand-made runs (no model): the summary row of each checkpoint, a scheme whose compression
failed shown with its skipped steps, and every message escaped in the page."""

from __future__ import annotations

from tachyon.evals.recovery import compare
from tachyon.evals.results import TaskResult
from tachyon.validate.config import ValidateConfig
from tachyon.validate.html_page import render_html
from tachyon.validate.markdown import render_markdown
from tachyon.validate.pipeline import ModelRun
from tachyon.validate.report import build_payload
from tachyon.validate.serving import LevelStats
from tachyon.validate.steps import FAILED, OK, SKIPPED, StepResult
from tachyon.validate.throughput import ThroughputResult


def _accuracy(ppl: float, acc: float) -> list[TaskResult]:
    return [
        TaskResult("lee", "perplexity", {"ppl": ppl, "nll": 3.0}, {"ppl": False, "nll": False}, 50, primary=["ppl"]),
        TaskResult("lee_cloze", "multiple_choice", {"acc": acc}, {"acc": True}, 48, primary=["acc"]),
    ]


def _runs() -> list[ModelRun]:
    ok = [StepResult(n, OK, 1.0, None, f"cmd {n}") for n in ("accuracy", "throughput", "serving")]
    levels = [LevelStats(1, 8, 0, 30.0, 100.0, 150.0, 20.0, 25.0), LevelStats(4, 8, 0, 90.0, 200.0, 300.0, 30.0, 40.0)]
    throughput = ThroughputResult(16, 128, 32, 10.0, 51.2, 256.0, 1.6)
    original = ModelRun("original", "/m", 1000, ok, _accuracy(20.0, 0.5), None, throughput, levels)
    w8 = ModelRun("W8A16", "/out/models/W8A16", 600, [StepResult("compress", OK, 2.0), *ok], _accuracy(25.0, 0.5))
    w8.recovery, w8.throughput, w8.serving = compare(original.accuracy, w8.accuracy), throughput, levels
    bad = "<script>alert(1)</script> & more"
    w4 = ModelRun("W4A16", None, None, [StepResult("compress", FAILED, 0.5, f"ValueError: {bad}", "tachyon compress")])
    w4.steps += [StepResult(n, SKIPPED, error="compression failed") for n in ("accuracy", "throughput", "serving")]
    return [original, w8, w4]


def test_summary_rows(tmp_path):
    config = ValidateConfig(model=None, output=str(tmp_path / "r"), schemes=("W8A16", "W4A16"))
    payload = build_payload(config, _runs(), "/m", 64, 12.0)
    original, w8, w4 = payload["rows"]
    assert [c["task"] + ":" + c["metric"] for c in payload["accuracy_columns"]] == ["lee:ppl", "lee_cloze:acc"]
    assert original["accuracy"] == [20.0, 0.5] and original["recovery"] == 100.0
    assert w8["recovery"] == (100 * 20 / 25 + 100) / 2
    assert (w8["offline_tok_s"], w8["server_tok_s"], w8["server_concurrency"]) == (51.2, 90.0, 4)
    assert (w8["ttft_p50_ms"], w8["itl_p99_ms"], w8["latency_concurrency"]) == (100.0, 25.0, 1)
    assert w4["accuracy"] == [None, None] and w4["status"].startswith("compress failed; accuracy skipped")
    assert [r["choice"] for r in payload["recommendations"]] == ["original", "original"]  # W8A16 keeps 90% < 95%


def test_page_and_markdown_escape_messages(tmp_path):
    config = ValidateConfig(model=None, output=str(tmp_path / "r"), schemes=("W8A16", "W4A16"))
    payload = build_payload(config, _runs(), "/m", 64, 12.0)
    page = render_html(payload)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert '<tr data-label="W4A16" class="failed">' in page and "compression failed" in page
    assert "<link" not in page and "src=" not in page  # self-contained
    markdown = render_markdown(payload)
    assert "| W4A16 | n/a | n/a | n/a | n/a |" in markdown
    assert "### W4A16: compress — failed (0.5 s)" in markdown
