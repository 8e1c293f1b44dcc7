"""The router's own Prometheus metrics (GET /metrics): requests per instance and outcome, upstream
failures per reason, and each instance's health and load, read from the instances at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from tachyon.router.instance import Instance

LABELS = ("instance", "role")


class InstanceCollector:
    def __init__(self, instances: list[Instance]) -> None:
        self._instances = instances

    def describe(self):
        return []

    def collect(self):
        gauges = (
            ("tachyon_router:instance_healthy", "1 if the instance takes requests, 0 if marked unhealthy.", "healthy"),
            ("tachyon_router:num_requests_in_flight", "Requests the router has open on the instance.", "num_in_flight"),
            ("tachyon_router:num_requests_waiting", "Waiting requests at its last scrape.", "num_waiting"),
        )
        for name, doc, attr in gauges:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            for i in self._instances:
                family.add_metric([i.url, i.role], float(getattr(i, attr)))
            yield family


class RouterMetrics:
    def __init__(self, instances: list[Instance]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(InstanceCollector(instances))
        self.requests = Counter(
            "tachyon_router:requests",
            "Requests answered by each instance; outcome: ok, client_error (4xx passed on), "
            "broken (the instance failed mid-stream), cancelled (the client left).",
            [*LABELS, "outcome"],
            registry=self.registry,
        )
        self.upstream_failures = Counter(
            "tachyon_router:upstream_failures",
            "Failed attempts on an instance; reason: unreachable (no connection), timeout, disconnected (closed "
            "before its first bytes), server_error (5xx), broken_stream (closed mid-stream).",
            [*LABELS, "reason"],
            registry=self.registry,
        )

    def count_request(self, instance: Instance, outcome: str) -> None:
        self.requests.labels(instance.url, instance.role, outcome).inc()

    def count_failure(self, instance: Instance, reason: str) -> None:
        self.upstream_failures.labels(instance.url, instance.role, reason).inc()
