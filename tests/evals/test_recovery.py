"""Recovery: candidate/baseline x 100 (inverted for lower-is-better metrics), averaged over each task's primary
metrics and then over tasks; end to end, the default model against its W8A16 compression."""

from __future__ import annotations

import json

import pytest

from tachyon.cli import main
from tachyon.compress import compress_model
from tachyon.evals.recovery import compare, metric_recovery
from tachyon.evals.results import TaskResult
from tests.evals.conftest import KV_CACHE_BYTES, LM_EVAL_DATA


def _result(name: str, metrics: dict[str, float], lower: set[str] = frozenset(), primary=()) -> TaskResult:
    return TaskResult(name, "x", metrics, {m: m not in lower for m in metrics}, 1, primary=list(primary))


def test_metric_recovery_direction():
    assert metric_recovery(0.5, 0.4, higher_is_better=True) == pytest.approx(80.0)
    assert metric_recovery(10.0, 12.5, higher_is_better=False) == pytest.approx(80.0)
    assert metric_recovery(0.0, 0.3, higher_is_better=True) is None


def test_compare_averages_primary_metrics_per_task_then_over_tasks():
    baseline = [
        _result("ppl", {"ppl": 10.0, "nll": 2.3}, lower={"ppl", "nll"}, primary=["ppl"]),
        _result("mc", {"acc": 0.5, "acc_norm": 0.8}, primary=["acc", "acc_norm"]),
        _result("zero", {"acc": 0.0}),
    ]
    candidate = [
        _result("ppl", {"ppl": 12.5, "nll": 2.5}, lower={"ppl", "nll"}),
        _result("mc", {"acc": 0.45, "acc_norm": 0.8}),
        _result("zero", {"acc": 0.25}),
    ]
    report = compare(baseline, candidate)
    assert [(r.task, r.metric) for r in report.rows] == [
        ("ppl", "ppl"),
        ("ppl", "nll"),
        ("mc", "acc"),
        ("mc", "acc_norm"),
        ("zero", "acc"),
    ]
    assert report.per_task["ppl"] == pytest.approx(100 * 10.0 / 12.5)
    assert report.per_task["mc"] == pytest.approx((100 * 0.45 / 0.5 + 100.0) / 2)
    assert report.per_task["zero"] is None
    assert report.average == pytest.approx((report.per_task["ppl"] + report.per_task["mc"]) / 2)
    with pytest.raises(ValueError, match="task mc has no candidate result"):
        compare(baseline, candidate[:1])


@pytest.mark.slow
def test_w8a16_recovery_end_to_end(model_dir, tmp_path, capsys):
    w8 = compress_model(model_dir, "W8A16", str(tmp_path / "w8a16"), group_size=64)
    out = tmp_path / "recovery.json"
    argv = ["eval", "--baseline", model_dir, "--candidate", w8, "--task", "lee", "--limit", "1", "--window", "64"]
    argv += ["--task", str(LM_EVAL_DATA / "mc_smoke.jsonl"), "--output", str(out)]
    assert main([*argv, "--kv-cache-memory", str(KV_CACHE_BYTES), "--max-model-len", "512"]) == 0
    assert "## recovery (candidate vs baseline)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    base, cand = (
        {(r["name"], m): v for r in report["results"][label] for m, v in r["metrics"].items()}
        for label in ("baseline", "candidate")
    )
    rows = {(r["task"], r["metric"]): r["recovery"] for r in report["recovery"]["metrics"]}
    assert rows[("lee", "ppl")] == pytest.approx(100 * base[("lee", "ppl")] / cand[("lee", "ppl")])
    assert rows[("mc_smoke", "acc")] == pytest.approx(100 * cand[("mc_smoke", "acc")] / base[("mc_smoke", "acc")])
    assert base[("lee", "ppl")] != cand[("lee", "ppl")]  # the candidate really is a different model
    assert 95 < report["recovery"]["per_task"]["lee"] < 105  # 8-bit weights barely move perplexity
