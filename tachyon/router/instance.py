"""One upstream `tachyon serve` instance as the router sees it: its health and its load. Requests
(upstream.py) and the background monitor (monitor.py) both mark it; policies read its load."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Instance:
    url: str  # http://host:port, without /v1
    role: str  # replica | prefill | decode
    healthy: bool = True
    num_in_flight: int = 0  # requests this router has open on it
    num_waiting: int = 0  # tachyon:num_requests_waiting from its last /metrics scrape

    @property
    def load(self) -> int:
        """Outstanding requests: the router's own plus those queued there by anyone."""
        return self.num_in_flight + self.num_waiting

    def mark_unhealthy(self, reason: str) -> None:
        if self.healthy:
            logger.warning("%s instance %s is now unhealthy: %s", self.role, self.url, reason)
        self.healthy = False

    def mark_healthy(self) -> None:
        if not self.healthy:
            logger.info("%s instance %s is healthy again", self.role, self.url)
        self.healthy = True
