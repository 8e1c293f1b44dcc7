"""`tachyon bench` end to end against a real `tachyon serve`: every profile runs, recorded token
counts equal what the server reports (usage, and its own Prometheus counters), TTFT < E2E latency,
a sweep's rates strictly increase, a bad request is an error kept out of the percentiles, the JSON
round-trips through `report` (which also re-renders the HTML report), `compare` prints ratios, and
bad input gets a message, not a traceback."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from tachyon.bench.metrics import ERROR, INCOMPLETE, OK
from tachyon.bench.results import load_json
from tests.server.conftest import free_port, scrape

PROMPT_TOKENS, OUTPUT_TOKENS = 24, 4


@pytest.fixture
def small(bench_url, model_dir):
    """Flags for a small, fast workload against the test server."""
    return [
        "--url", bench_url, "--tokenizer", model_dir, "--prompt-tokens", str(PROMPT_TOKENS),
        "--output-tokens", str(OUTPUT_TOKENS), "--ignore-eos", "--no-progress",
    ]  # fmt: skip


def check_records(run, prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS) -> None:
    for bench in run.benchmarks:
        assert bench.records, bench.level.label
        for r in bench.records:
            assert r.status == OK, r.error
            assert r.output_tokens_source == "usage"
            assert r.output_tokens == output_tokens and r.prompt_tokens == prompt_tokens
            assert 0 < r.ttft < r.latency
            assert len(r.itl) == output_tokens - 1  # tachyon streams one chunk per token
            assert r.response_id.startswith("cmpl-") or r.response_id.startswith("chatcmpl-")
        s = bench.stats
        assert s.completed == len(bench.records) and s.failed == s.incomplete == 0
        assert s.ttft.count == s.e2el.count == s.completed


@pytest.mark.parametrize(
    "profile",
    [
        ["--profile", "synchronous"],
        ["--profile", "concurrent", "--concurrency", "3"],
        ["--profile", "throughput", "--max-concurrency", "6"],
        ["--profile", "constant", "--rate", "6"],
        ["--profile", "poisson", "--rate", "6", "--max-concurrency", "4"],
        ["--profile", "concurrent", "--concurrency", "2", "--endpoint", "chat"],
    ],
    ids=["synchronous", "concurrent", "throughput", "constant", "poisson", "chat"],
)
def test_profile_runs_and_counts_match_the_server(bench, small, bench_url, tmp_path, profile):
    before = scrape(bench_url)
    out_json = tmp_path / "run.json"
    code, out, _ = bench(*small, *profile, "--max-requests", "6", "--output", str(out_json))
    after = scrape(bench_url)
    assert code == 0
    run = load_json(str(out_json))
    chat = "chat" in profile
    # a chat prompt is the synthetic text inside the chat template, so usage counts more tokens
    prompt_tokens = run.benchmarks[0].records[0].prompt_tokens if chat else PROMPT_TOKENS
    check_records(run, prompt_tokens)
    records = run.benchmarks[0].records
    assert len(records) == 6 and len({r.request_id for r in records}) == 6
    delta = lambda name: after[name] - before[name]
    assert delta("tachyon:generation_tokens_total") == sum(r.output_tokens for r in records)
    assert delta("tachyon:prompt_tokens_total") == sum(r.prompt_tokens for r in records)
    assert run.benchmarks[0].level.label in out and "TTFT (ms)" in out


def test_sweep_rates_strictly_increase(bench, small, tmp_path):
    out_json = tmp_path / "sweep.json"
    code, out, _ = bench(*small, "--profile", "sweep", "--sweep-steps", "2", "--max-requests", "4",
                         "--max-concurrency", "4", "--output", str(out_json))  # fmt: skip
    assert code == 0
    run = load_json(str(out_json))
    kinds = [b.level.kind for b in run.benchmarks]
    assert kinds == ["synchronous", "throughput", "constant", "constant"]
    sync, thr = (b.stats.request_throughput for b in run.benchmarks[:2])
    rates = [b.level.rate for b in run.benchmarks[2:]]
    assert all(a < b for a, b in itertools.pairwise([min(sync, thr), *rates]))
    assert rates == pytest.approx([sync + (max(thr, 2 * sync if thr <= sync else thr) - sync) * i / 3 for i in (1, 2)])
    check_records(run)


def test_failed_requests_are_counted_and_kept_out_of_the_percentiles(bench, small, bench_url, tmp_path):
    rows = [
        {"prompt": "The capital of France is", "output_tokens": 4},
        {"prompt": "A negative length", "output_tokens": -1},
        {"prompt": "Count to ten:", "output_tokens": 4},
        {"prompt": "Longer than the model", "output_tokens": 5000},  # the test server has max_model_len 1024
        {"prompt": "Once upon a time", "output_tokens": 4},
        {"prompt": "Name a colour:", "output_tokens": 4},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_json = tmp_path / "errors.json"
    code, out, _ = bench(*small, "--data", str(data), "--profile", "concurrent", "--concurrency", "2",
                         "--output", str(out_json))  # fmt: skip
    assert code == 0
    (result,) = load_json(str(out_json)).benchmarks
    assert result.stop_reason == "max_requests" and len(result.records) == 6  # one pass over the file
    failed = [r for r in result.records if r.status == ERROR]
    assert len(failed) == 2 and all(r.error.startswith("HTTP 400") for r in failed)
    assert {r.requested_output_tokens for r in failed} == {-1, 5000}
    assert all(r.ttft is None for r in failed)
    s = result.stats
    assert (s.completed, s.failed, s.incomplete) == (4, 2, 0)
    assert s.ttft.count == s.e2el.count == s.tpot.count == 4
    ok = [r for r in result.records if r.status == OK]
    assert s.ttft.mean == pytest.approx(1000 * sum(r.ttft for r in ok) / 4)
    assert all(r.output_tokens == 4 for r in ok)


def test_duration_limit_marks_in_flight_requests_incomplete(bench, small, tmp_path):
    out_json = tmp_path / "timed.json"
    code, _, _ = bench(*small, "--profile", "constant", "--rate", "8", "--max-seconds", "1.5",
                       "--output-tokens", "12", "--slo", "ttft_ms=60000", "--output", str(out_json))  # fmt: skip
    assert code == 0
    (result,) = load_json(str(out_json)).benchmarks
    assert result.stop_reason == "max_seconds"
    incomplete = [r for r in result.records if r.status == INCOMPLETE]
    assert incomplete and all(r.end_time == pytest.approx(1.5, abs=0.2) for r in incomplete)
    s = result.stats
    assert s.incomplete == len(incomplete) and s.ttft.count == s.completed == len(result.records) - len(incomplete)
    assert s.request_goodput == pytest.approx(s.request_throughput)  # every completed request met the loose SLO


def test_json_round_trips_through_report_and_compare(bench, small, tmp_path):
    a, b, csv_path = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "a.csv"
    flags = [*small, "--profile", "concurrent", "--concurrency", "1", "2", "--max-requests", "4", "--warmup", "0.25"]
    code, live, _ = bench(*flags, "--slo", "ttft_ms=5000", "--output", str(a), "--output", str(csv_path))
    assert code == 0
    html = tmp_path / "a.html"
    code, reported, _ = bench("report", str(a), "--output", str(html))
    assert code == 0 and reported == live
    assert html.read_text().count('<svg class="chart"') == 8 and ">concurrent@2</td>" in html.read_text()
    run = load_json(str(a))
    for result in run.benchmarks:
        assert result.recompute(run.slos) == result.stats
        assert result.stats.num_excluded == 1 and sum(not r.measured for r in result.records) == 1
    csv_lines = csv_path.read_text().splitlines()
    assert len(csv_lines) == 3 and "mean_ttft_ms" in csv_lines[0] and csv_lines[1].startswith("concurrent@1,")

    assert bench(*flags, "--output", str(b))[0] == 0
    code, out, _ = bench("compare", str(a), str(b))
    assert code == 0
    assert "benchmark 0: concurrent@1 vs concurrent@1" in out and "benchmark 1: concurrent@2" in out
    ratio_row = next(line for line in out.splitlines() if line.startswith("request_throughput"))
    a_value, b_value, ratio = (float(x) for x in ratio_row.split()[1:])
    assert ratio == pytest.approx(b_value / a_value, rel=0.01, abs=0.002)
    assert re.search(r"^completed\s+3\s+3\s+1\.000$", out, re.M)


def test_bad_input_gets_a_message_not_a_traceback(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench("--profile", "bursty")
    assert e.value.code == 2 and "invalid choice: 'bursty'" in capsys.readouterr().err

    code, _, err = bench("--profile", "constant", "--max-requests", "3")
    assert code == 2 and "--profile constant needs --rate" in err and "Traceback" not in err

    code, _, err = bench("--url", f"http://127.0.0.1:{free_port()}", "--max-requests", "1", "--no-progress")
    assert code == 2 and "cannot reach the server" in err and "Traceback" not in err

    for flags, message in [
        (["--slo", "speed=3"], "--slo"),
        (["--output", str(tmp_path / "x.xlsx")], "--output"),
        (["--max-error-rate", "1.5"], "--max-error-rate"),
        (["--extra-body", "[1]"], "--extra-body"),
    ]:
        code, _, err = bench(*flags)
        assert code == 2 and message in err, err

    code, _, err = bench("report", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err
