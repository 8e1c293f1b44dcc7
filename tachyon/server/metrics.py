"""Prometheus metrics with vLLM's names under the `tachyon:` prefix, in a per-app registry.

Engine-side values (running/waiting requests, KV usage, prefix cache, preemptions) are read from
`engine.stats()` at scrape time by a custom collector, so they are always current; token counts
and latencies are measured here, from the output streams the handlers consume."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tachyon.engine.llm_engine import EngineStats
from tachyon.engine.outputs import RequestOutput
from tachyon.server.kv_transfer import KVTransferStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class EngineStatsCollector:
    """Gauges and counters straight from `stats()` when /metrics is scraped."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def describe(self):
        return []  # no samples at registration: stats() is only read on scrape

    def collect(self):
        s = self._stats()
        yield _gauge("tachyon:num_requests_running", "Requests in the running batch.", s.num_running)
        yield _gauge("tachyon:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield _gauge("tachyon:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", s.kv_cache_usage)
        yield _counter(
            "tachyon:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries
        )
        yield _counter("tachyon:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield _counter("tachyon:num_preemptions", "Requests preempted to free KV blocks.", s.num_preemptions)
        yield _gauge(
            "tachyon:kv_parked_blocks", "Prefill role: KV blocks held for decode instances.", s.num_parked_blocks
        )
        if s.spec_decode is not None:  # as vLLM: present only when speculative decoding is on
            spec = s.spec_decode
            yield _counter(
                "tachyon:spec_decode_num_drafts", "Drafts verified (one per request and step).", spec.num_drafts
            )
            yield _counter(
                "tachyon:spec_decode_num_steps", "Engine steps that verified drafts (drafts per step).", spec.num_steps
            )
            yield _counter(
                "tachyon:spec_decode_num_draft_tokens", "Draft tokens proposed and verified.", spec.num_draft_tokens
            )
            yield _counter(
                "tachyon:spec_decode_num_accepted_tokens", "Draft tokens the target accepted.", spec.num_accepted_tokens
            )


class KVTransferCollector:
    """Decode role: KV fetched from prefill instances (bytes / seconds is the transfer bandwidth)."""

    def __init__(self, stats: KVTransferStats) -> None:
        self._stats = stats

    def describe(self):
        return []

    def collect(self):
        s = self._stats
        yield _counter("tachyon:kv_transfer_fetches", "KV fetches from prefill instances.", s.fetches)
        yield _counter("tachyon:kv_transfer_failures", "KV fetches that failed (prompt computed here).", s.failures)
        yield _counter("tachyon:kv_transfer_blocks", "KV blocks received.", s.blocks)
        yield _counter("tachyon:kv_transfer_bytes", "KV bytes received.", s.bytes)
        yield _counter("tachyon:kv_transfer_seconds", "Time spent fetching KV.", s.seconds)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class ServerMetrics:
    def __init__(self, stats: Callable[[], EngineStats], kv_transfer: KVTransferStats | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(stats))
        if kv_transfer is not None:
            self.registry.register(KVTransferCollector(kv_transfer))
        r = self.registry
        self.prompt_tokens = Counter("tachyon:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("tachyon:generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "tachyon:time_to_first_token_seconds", "Arrival to first token.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "tachyon:inter_token_latency_seconds", "Time between tokens.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "tachyon:e2e_request_latency_seconds", "Arrival to last token.", buckets=_LATENCY_BUCKETS, registry=r
        )

    async def track(self, stream: AsyncIterator[RequestOutput], arrival: float) -> AsyncIterator[RequestOutput]:
        """Pass `stream` through, observing tokens and latencies of one engine request."""
        seen: dict[int, int] = {}  # sample index -> tokens seen
        last, counted_prompt = arrival, False
        async for out in stream:
            now = time.monotonic()
            if not counted_prompt:
                self.prompt_tokens.inc(len(out.prompt_token_ids))
                counted_prompt = True
            new = {c.index: len(c.token_ids) - seen.get(c.index, 0) for c in out.outputs}
            total_new = sum(new.values())
            if total_new > 0:
                if not any(seen.values()):
                    self.ttft.observe(now - arrival)
                else:
                    for index, count in new.items():
                        # speculative decoding can emit several tokens of a sample in one step: they share the gap
                        for _ in range(count if seen.get(index) else 0):
                            self.itl.observe((now - last) / count)
                self.generation_tokens.inc(total_new)
                seen.update({c.index: len(c.token_ids) for c in out.outputs})
                last = now
            if out.finished:
                self.e2e.observe(now - arrival)
            yield out
