"""Runs one benchmark (one `LoadLevel`) in the current asyncio loop: slot kinds keep N requests in
flight, rate kinds send at their arrival offsets (optionally capped in flight). It stops sending at
--max-requests, and stops outright at --max-seconds or when the error rate passes
--max-error-rate, cancelling what is still in flight (recorded as incomplete).

Scheduled time is when the profile wanted the request sent (its arrival offset, or the moment its
slot freed); send time - scheduled time is the scheduling lag the report shows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tachyon.bench.client import StreamingClient
from tachyon.bench.data import RequestSpec
from tachyon.bench.metrics import ERROR, INCOMPLETE, RequestRecord
from tachyon.bench.profiles import SLOT_KINDS, LoadLevel

ERROR_RATE_MIN_FINISHED = 10  # finished requests before --max-error-rate is judged


@dataclass(frozen=True)
class Limits:
    max_seconds: float | None = None
    max_requests: int | None = None
    max_error_rate: float | None = None

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"--max-seconds must be positive, got {self.max_seconds}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"--max-requests must be at least 1, got {self.max_requests}")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate < 1:
            raise ValueError(f"--max-error-rate must be a fraction in [0, 1), got {self.max_error_rate}")


@dataclass
class LevelRun:
    level: LoadLevel
    records: list[RequestRecord]
    start_time: float  # wall clock (time.time()) when the benchmark started
    stop_reason: str  # max_requests | max_seconds | max_error_rate


class LevelScheduler:
    def __init__(
        self,
        level: LoadLevel,
        source: Iterator[RequestSpec],
        client: StreamingClient,
        limits: Limits,
        on_finished: Callable[[RequestRecord], None] = lambda r: None,
        id_prefix: str = "req",
    ) -> None:
        self.level, self.source, self.client, self.limits = level, source, client, limits
        self.on_finished, self.id_prefix = on_finished, id_prefix
        self.records: list[RequestRecord] = []
        self.num_finished = self.num_errors = 0
        self.stop_reason: str | None = None
        self._stopped = asyncio.Event()
        self._t0 = 0.0

    def clock(self) -> float:
        return time.perf_counter() - self._t0

    async def run(self) -> LevelRun:
        start_time = time.time()
        self._t0 = time.perf_counter()
        slots = self.level.kind in SLOT_KINDS
        main = asyncio.create_task(self._keep_slots_full() if slots else self._send_on_schedule())
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait({main, stopped}, timeout=self.limits.max_seconds, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            self.stop_reason = self.stop_reason or "max_seconds"
            main.cancel()
        stopped.cancel()
        await asyncio.gather(main, stopped, return_exceptions=True)
        if main.done() and not main.cancelled() and main.exception() is not None:
            raise main.exception()
        sent = [r for r in self.records if r.send_time is not None]  # a task cancelled before it started sent nothing
        return LevelRun(self.level, sent, start_time, self.stop_reason or "max_requests")

    def _may_send(self) -> bool:
        limit = self.limits.max_requests
        return not self._stopped.is_set() and (limit is None or len(self.records) < limit)

    async def _keep_slots_full(self) -> None:
        async def slot() -> None:
            while self._may_send():
                await self._send(*self._next_request(self.clock()))
                await asyncio.sleep(0)  # a request that fails without I/O must not starve the deadline

        await asyncio.gather(*(slot() for _ in range(self.level.streams)))

    async def _send_on_schedule(self) -> None:
        cap = asyncio.Semaphore(self.level.max_concurrency) if self.level.max_concurrency else None
        in_flight: set[asyncio.Task] = set()
        try:
            for offset in self.level.arrival_offsets():
                if not self._may_send():
                    break
                await asyncio.sleep(max(0.0, offset - self.clock()))
                if cap is not None:
                    await cap.acquire()
                task = asyncio.create_task(self._send(*self._next_request(offset), cap))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def _next_request(self, scheduled: float) -> tuple[RequestSpec, RequestRecord]:
        """Counted here, before any await, so --max-requests holds however many tasks are starting."""
        spec = next(self.source)
        record = RequestRecord(
            request_id=f"{self.id_prefix}-{len(self.records)}",
            scheduled_time=scheduled,
            requested_output_tokens=spec.output_tokens,
        )
        self.records.append(record)
        return spec, record

    async def _send(self, spec: RequestSpec, record: RequestRecord, cap: asyncio.Semaphore | None = None) -> None:
        try:
            await self.client.send(spec, record, self.clock)
        except asyncio.CancelledError:
            record.status, record.end_time = INCOMPLETE, self.clock()
            raise
        finally:
            if cap is not None:
                cap.release()
        self._finished(record)

    def _finished(self, record: RequestRecord) -> None:
        self.num_finished += 1
        self.num_errors += record.status == ERROR
        self.on_finished(record)
        limit = self.limits.max_error_rate
        min_finished = min(ERROR_RATE_MIN_FINISHED, self.limits.max_requests or ERROR_RATE_MIN_FINISHED)
        if limit is not None and self.num_finished >= min_finished and self.num_errors > limit * self.num_finished:
            self.stop_reason = "max_error_rate"
            self._stopped.set()
