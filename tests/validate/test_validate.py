"""`tachyon validate` end to end on the default model with one scheme and a tiny workload: the report folder
appears whole (JSON, Markdown, HTML, the checkpoint, per-step results), an injected failure is reported
while every other step still runs, the page renders in headless Chromium, and an interrupted run leaves
nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from tachyon.cli import main
from tachyon.validate import ValidateConfig, pipeline

ENGINE = ["--kv-cache-memory", str(256 << 20), "--max-model-len", "512"]
TINY = ["--limit", "1", "--window", "64", "--num-prompts", "2", "--prompt-tokens", "16", "--output-tokens", "4"]
TINY += ["--concurrency", "1", "2", "--bench-requests", "2"]
CHROMIUM_FLAGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]


@pytest.fixture(scope="module")
def report(model_dir, tmp_path_factory) -> tuple[str, int]:
    """One run; the original model's server fails to start (injected), W8A16 runs in full."""
    out = str(tmp_path_factory.mktemp("validation") / "report")
    real, calls = pipeline.running_server, []

    @contextlib.contextmanager
    def failing_first(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("injected: the server did not start")
        with real(*args, **kwargs) as url:
            yield url

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "running_server", failing_first)
        code = main(["validate", model_dir, "--schemes", "W8A16", "--output", out, *TINY, *ENGINE])
    return out, code


def test_report_folder_is_complete(report, model_dir):
    out, code = report
    assert code == 1  # a step failed, and the report is there all the same
    assert os.listdir(os.path.dirname(out)) == ["report"]  # no partial folder left behind
    assert {"report.json", "report.md", "report.html", "models", "runs"} <= set(os.listdir(out))
    payload = json.loads(open(os.path.join(out, "report.json")).read())
    original, w8 = payload["rows"]
    assert (original["label"], w8["label"]) == ("original", "W8A16")
    assert original["status"] == "serving failed" and w8["status"] == "ok"
    assert [c["task"] + " " + c["metric"] for c in payload["accuracy_columns"]] == [
        "lee ppl",
        "lee_cloze acc",
        "lee_cloze acc_norm",
    ]
    assert 95 < w8["recovery"] < 105 and original["recovery"] == 100.0
    assert w8["size_bytes"] == pipeline.disk_size(os.path.join(out, "models", "W8A16"))
    assert w8["offline_tok_s"] > 0 and w8["server_tok_s"] > 0 and w8["itl_p50_ms"] > 0 and w8["ttft_p99_ms"] > 0
    assert original["itl_p50_ms"] is None and original["offline_tok_s"] > 0
    latency, throughput = payload["recommendations"]
    assert latency["choice"] == "W8A16"  # the only row with serving figures
    assert throughput["choice"] in ("original", "W8A16")


def test_every_figure_has_its_command(report, model_dir):
    out, _ = report
    payload = json.loads(open(os.path.join(out, "report.json")).read())
    steps = {(run["label"], s["name"]): s for run in payload["runs"] for s in run["steps"]}
    assert set(steps) == {
        *(("original", n) for n in ("accuracy", "throughput", "serving")),
        *(("W8A16", n) for n in ("compress", "accuracy", "throughput", "serving")),
    }
    w8_dir = os.path.join(out, "models", "W8A16")
    assert steps[("W8A16", "compress")]["command"].startswith(f"tachyon compress {model_dir} --scheme W8A16")
    assert f"--group-size 64 --output {w8_dir}" in steps[("W8A16", "compress")]["command"]
    assert f"tachyon eval --baseline {model_dir} --candidate {w8_dir}" in steps[("W8A16", "accuracy")]["command"]
    assert "tachyon bench --url" in steps[("W8A16", "serving")]["command"]
    assert steps[("original", "serving")]["error"] == "RuntimeError: injected: the server did not start"
    accuracy = json.loads(open(os.path.join(out, "runs", "W8A16", "accuracy.json")).read())
    assert accuracy["recovery"] == payload["runs"][1]["recovery"]  # what the eval command writes
    markdown = open(os.path.join(out, "report.md")).read()
    assert "| W8A16 |" in markdown and "injected: the server did not start" in markdown


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (make browser)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    page = os.path.join(out, "report.html")
    assert "http://" not in open(page).read().split("<body>")[0]  # no remote assets in the head
    dom = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", "--dump-dom", f"file://{page}"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert '<table id="summary">' in dom
    assert '<tr data-label="original" class="failed">' in dom and '<tr data-label="W8A16">' in dom
    assert "injected: the server did not start" in dom and 'data-use-case="latency-bound"' in dom


def test_interrupted_run_leaves_nothing(model_dir, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Validation, "original", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pipeline.validate_model(ValidateConfig(model=model_dir, output=str(tmp_path / "report")))
    assert os.listdir(tmp_path) == []
