"""Background checks of every instance: GET /health each --health-interval seconds (marks it healthy
or unhealthy) and GET /metrics each second for its queue length (`tachyon:num_requests_waiting`),
which the least-outstanding policy adds to the router's own count of requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tachyon.router.instance import Instance

logger = logging.getLogger(__name__)

LOAD_SCRAPE_S = 1.0
CHECK_TIMEOUT_S = 5.0
WAITING_METRIC = "tachyon:num_requests_waiting"


class InstanceMonitor:
    def __init__(self, http: httpx.AsyncClient, instances: list[Instance], health_interval: float) -> None:
        self.http = http
        self.instances = instances
        self.health_interval = health_interval
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """One round of checks (so /health is right from the start), then the periodic ones."""
        await self.check_health()
        self._tasks = [
            asyncio.create_task(_every(self.health_interval, self.check_health)),
            asyncio.create_task(_every(LOAD_SCRAPE_S, self.scrape_load)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check(i) for i in self.instances))

    async def scrape_load(self) -> None:
        await asyncio.gather(*(self._scrape(i) for i in self.instances if i.healthy))

    async def _check(self, instance: Instance) -> None:
        try:
            response = await self.http.get(f"{instance.url}/health", timeout=CHECK_TIMEOUT_S)
        except httpx.HTTPError as e:
            instance.mark_unhealthy(f"GET /health failed: {type(e).__name__}")
            return
        if response.status_code == 200:
            instance.mark_healthy()
        else:
            instance.mark_unhealthy(f"GET /health answered HTTP {response.status_code}")

    async def _scrape(self, instance: Instance) -> None:
        """A failed scrape keeps the last value: health is /health's business."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await self.http.get(f"{instance.url}/metrics", timeout=CHECK_TIMEOUT_S)
            if response.status_code == 200:
                instance.num_waiting = parse_num_waiting(response.text)


def parse_num_waiting(text: str) -> int:
    """Sum of the `tachyon:num_requests_waiting` gauge over its label sets (0 when absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        total += sum(s.value for s in family.samples if s.name == WAITING_METRIC)
    return int(total)


async def _every(interval: float, check: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await check()
        except Exception:  # a bug in one round must not end the checks for good
            logger.exception("instance check failed")
