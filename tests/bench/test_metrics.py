"""The metric math against values worked out here by hand from explicit inputs: percentiles,
TPOT, throughputs, concurrency, goodput, warm-up/cool-down exclusion, and the JSON round trip."""

from __future__ import annotations

import math
import random

import pytest

from tachyon.bench.metrics import (
    ERROR,
    INCOMPLETE,
    OK,
    BenchmarkStats,
    RequestRecord,
    compute_stats,
    mark_measured,
    meets_slos,
    parse_slos,
    percentile,
)


def linear_percentile(values: list[float], q: float) -> float:
    """Closest-ranks linear interpolation, written out: rank (n - 1) q / 100 between two neighbours."""
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


def ok_record(i: int, send: float, ttft: float, latency: float, out: int, prompt: int = 10, gaps=None) -> RequestRecord:
    gaps = gaps if gaps is not None else [(latency - ttft) / max(out - 1, 1)] * (out - 1)
    return RequestRecord(
        request_id=f"r{i}",
        scheduled_time=send,
        send_time=send,
        first_token_time=send + ttft,
        end_time=send + latency,
        itl=list(gaps),
        status=OK,
        prompt_tokens=prompt,
        output_tokens=out,
        output_tokens_source="usage",
    )


def test_percentile_interpolates_between_ranks():
    values = [50.0, 10.0, 40.0, 20.0, 30.0]
    # p90 of 10..50: rank 0.9 * 4 = 3.6, so 40 + 0.6 * (50 - 40)
    assert percentile(values, 90) == pytest.approx(40 + 0.6 * 10)
    assert percentile(values, 50) == 30.0
    rng = random.Random(0)
    for n in (1, 2, 7, 100):
        xs = [rng.uniform(0, 1000) for _ in range(n)]
        for q in (50, 90, 95, 99):
            assert percentile(xs, q) == pytest.approx(linear_percentile(xs, q))


def test_tpot_is_decode_time_over_tokens_after_the_first():
    r = ok_record(0, send=1.0, ttft=0.3, latency=1.1, out=5)
    assert r.ttft == pytest.approx(0.3)
    assert r.latency == pytest.approx(1.1)
    assert r.tpot == pytest.approx((1.1 - 0.3) / (5 - 1))
    assert ok_record(1, send=0.0, ttft=0.2, latency=0.25, out=1).tpot is None  # no decode step
    failed = RequestRecord("r2", 0.0, send_time=0.0, end_time=0.1, status=ERROR, error="HTTP 400")
    assert failed.ttft is None and failed.tpot is None


def test_stats_use_completed_requests_only():
    records = [
        ok_record(0, send=0.0, ttft=0.10, latency=0.50, out=5, gaps=[0.1, 0.1, 0.1, 0.1]),
        ok_record(1, send=0.2, ttft=0.30, latency=0.90, out=4, gaps=[0.2, 0.2, 0.2]),
        ok_record(2, send=0.4, ttft=0.20, latency=0.60, out=3, gaps=[0.1, 0.3]),
        ok_record(3, send=1.0, ttft=0.40, latency=1.00, out=2, gaps=[0.6]),
        RequestRecord("e", 0.5, send_time=0.5, end_time=0.52, status=ERROR, error="HTTP 400: bad"),
        RequestRecord("i", 1.5, send_time=1.5, first_token_time=1.9, end_time=2.1, status=INCOMPLETE),
    ]
    s = compute_stats(records, target_rate=3.0)
    ok = records[:4]
    duration = 2.1 - 0.0  # first send to last end, every measured request counted
    assert (s.num_requests, s.completed, s.failed, s.incomplete, s.num_excluded) == (6, 4, 1, 1, 0)
    assert s.duration == pytest.approx(duration)
    assert s.total_input == 40 and s.total_output == 5 + 4 + 3 + 2
    assert s.request_throughput == pytest.approx(4 / duration)
    assert s.output_throughput == pytest.approx(14 / duration)
    assert s.total_token_throughput == pytest.approx((40 + 14) / duration)
    latencies = [0.5, 0.9, 0.6, 1.0, 0.02, 0.6]
    assert s.mean_concurrency == pytest.approx(sum(latencies) / duration)
    assert s.target_rate == 3.0
    sends = [0.0, 0.2, 0.4, 1.0, 0.5, 1.5]
    assert s.achieved_rate == pytest.approx((len(sends) - 1) / (max(sends) - min(sends)))
    ttfts_ms = [100.0, 300.0, 200.0, 400.0]
    assert s.ttft.count == 4  # the failed and the incomplete request stay out
    assert s.ttft.mean == pytest.approx(sum(ttfts_ms) / 4)
    assert s.ttft.median == pytest.approx((200.0 + 300.0) / 2)
    assert s.ttft.p99 == pytest.approx(linear_percentile(ttfts_ms, 99))
    mean = sum(ttfts_ms) / 4
    assert s.ttft.std == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in ttfts_ms) / 4))
    gaps_ms = [g * 1000 for r in ok for g in r.itl]
    assert s.itl.count == 10 and s.itl.mean == pytest.approx(sum(gaps_ms) / len(gaps_ms))
    assert s.itl.p90 == pytest.approx(linear_percentile(gaps_ms, 90))
    tpots_ms = [1000 * (r.latency - r.ttft) / (r.output_tokens - 1) for r in ok]
    assert s.tpot.mean == pytest.approx(sum(tpots_ms) / 4)
    assert s.e2el.max == pytest.approx(1000.0)
    assert s.request_goodput is None  # no SLOs given


def test_goodput_counts_requests_meeting_every_slo():
    records = [
        ok_record(0, send=0.0, ttft=0.10, latency=0.50, out=5),  # TPOT 100 ms
        ok_record(1, send=0.0, ttft=0.30, latency=0.70, out=5),  # TTFT too slow
        ok_record(2, send=0.0, ttft=0.15, latency=1.35, out=5),  # TPOT 300 ms too slow
        ok_record(3, send=0.0, ttft=0.05, latency=2.00, out=1),  # one token: no TPOT, TTFT fine
        RequestRecord("e", 0.0, send_time=0.0, end_time=0.01, status=ERROR, error="x"),
    ]
    slos = parse_slos(["ttft_ms=200", "tpot:150"])  # vLLM's --goodput spelling works too
    assert slos == {"ttft_ms": 200.0, "tpot_ms": 150.0}
    good = [meets_slos(r, slos) for r in records]
    assert good == [True, False, False, True, False]
    s = compute_stats(records, slos=slos)
    assert s.request_goodput == pytest.approx(2 / s.duration)
    assert compute_stats(records, slos={"e2el_ms": 600.0}).request_goodput == pytest.approx(1 / s.duration)


@pytest.mark.parametrize("item", ["speed=200", "itl_ms=5", "ttft_ms", "ttft_ms=fast", "tpot_ms=-1"])
def test_bad_slo_is_rejected_with_the_flag(item):
    with pytest.raises(ValueError, match="--slo"):
        parse_slos([item])


def test_warmup_and_cooldown_fractions_and_seconds():
    records = [ok_record(i, send=float(i), ttft=0.1, latency=0.5 if i != 3 else 20.0, out=2) for i in range(10)]
    mark_measured(records, warmup=0.2, cooldown=0.1)  # first 2 sent, last 1 to finish (r3 ends at 23)
    assert [r.request_id for r in records if not r.measured] == ["r0", "r1", "r3"]
    s = compute_stats(records)
    assert s.num_excluded == 3 and s.completed == 7 and s.num_requests == 10
    assert s.duration == pytest.approx(9.5 - 2.0)  # measured: r2 sent at 2, r9 ends at 9.5

    mark_measured(records, warmup=3.0, cooldown=14.0)  # sent before 0 + 3 s; ended after 23 - 14 = 9 s
    assert [r.request_id for r in records if not r.measured] == ["r0", "r1", "r2", "r3", "r9"]
    mark_measured(records, warmup=0.0, cooldown=0.0)
    assert all(r.measured for r in records)


def test_stats_and_records_round_trip_through_dicts():
    records = [ok_record(i, send=0.1 * i, ttft=0.05 + 0.01 * i, latency=0.3, out=3) for i in range(5)]
    s = compute_stats(records, slos={"ttft_ms": 70.0})
    assert BenchmarkStats.from_dict(s.to_dict()) == s
    assert [RequestRecord.from_dict(r.to_dict()) for r in records] == records
    flat = s.flat()
    for name in ("request_throughput", "request_goodput", "output_throughput", "total_token_throughput"):
        assert name in flat
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p95", "p99"):
            assert f"{stat}_{metric}_ms" in flat
    assert flat["mean_ttft_ms"] == s.ttft.mean
