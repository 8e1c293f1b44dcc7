"""The scheduler against a fake client (no server): request limits hold exactly, slots bound the
requests in flight, rate kinds keep their schedule, the deadline cancels what is in flight (recorded
as incomplete), and the error-rate limit stops a benchmark."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tachyon.bench.data import RequestSpec
from tachyon.bench.metrics import ERROR, INCOMPLETE, OK, RequestRecord
from tachyon.bench.profiles import LoadLevel
from tachyon.bench.scheduler import LevelScheduler, Limits


class FakeClient:
    """Answers after `delay` seconds with two tokens; fails every request whose prompt is 'bad'."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = self.max_in_flight = 0

    async def send(self, spec: RequestSpec, record: RequestRecord, clock) -> None:
        record.send_time = clock()
        if spec.prompt == "bad":
            record.fail(clock(), "HTTP 400: bad request")
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay / 2)
            record.first_token_time = clock()
            await asyncio.sleep(self.delay / 2)
            record.itl.append(clock() - record.first_token_time)
            record.status, record.end_time, record.output_tokens = OK, clock(), 2
        finally:
            self.in_flight -= 1


def run(level: LoadLevel, limits: Limits, delay: float = 0.05, prompts=("p",)):
    client = FakeClient(delay)
    source = itertools.cycle([RequestSpec(p, 2) for p in prompts])
    done = asyncio.run(LevelScheduler(level, source, client, limits).run())
    return done, client


@pytest.mark.parametrize(
    "level",
    [
        LoadLevel("synchronous", streams=1),
        LoadLevel("concurrent", streams=3),
        LoadLevel("throughput", streams=100),
        LoadLevel("constant", rate=200.0),
        LoadLevel("poisson", rate=200.0),
    ],
)
def test_max_requests_is_exact_and_all_finish(level):
    done, client = run(level, Limits(max_requests=7))
    assert len(done.records) == 7 and done.stop_reason == "max_requests"
    assert all(r.status == OK for r in done.records)
    assert len({r.request_id for r in done.records}) == 7
    if level.streams:
        assert client.max_in_flight == min(level.streams, 7)


def test_constant_rate_keeps_its_schedule():
    done, _ = run(LoadLevel("constant", rate=40.0), Limits(max_requests=10), delay=0.2)
    assert [r.scheduled_time for r in done.records] == pytest.approx([i / 40.0 for i in range(10)])
    assert all(0 <= r.scheduling_lag < 0.05 for r in done.records)


def test_max_concurrency_caps_a_rate():
    done, client = run(LoadLevel("constant", rate=100.0, max_concurrency=2), Limits(max_requests=6), delay=0.1)
    assert client.max_in_flight == 2
    assert done.records[-1].scheduling_lag > 0.1  # waited for a free slot, and the lag shows it


def test_deadline_cancels_in_flight_requests_as_incomplete():
    done, _ = run(LoadLevel("concurrent", streams=4), Limits(max_seconds=0.3), delay=0.2)
    assert done.stop_reason == "max_seconds"
    incomplete = [r for r in done.records if r.status == INCOMPLETE]
    assert len(incomplete) == 4  # one per stream at the deadline
    assert all(r.end_time == pytest.approx(0.3, abs=0.1) for r in incomplete)
    assert sum(r.status == OK for r in done.records) == 4


def test_error_rate_limit_stops_the_benchmark():
    done, _ = run(LoadLevel("synchronous", streams=1), Limits(max_requests=50, max_error_rate=0.4), prompts=("bad",))
    assert done.stop_reason == "max_error_rate"
    assert len(done.records) == 10  # judged once 10 requests finished


def test_failures_below_the_error_rate_do_not_stop_it():
    prompts = ("p", "p", "bad", "p")
    done, _ = run(LoadLevel("concurrent", streams=2), Limits(max_requests=12, max_error_rate=0.5), 0.01, prompts)
    assert done.stop_reason == "max_requests" and len(done.records) == 12
    assert sum(r.status == ERROR for r in done.records) == 3
