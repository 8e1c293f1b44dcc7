"""`Router`: the pools, the shared HTTP client, the forwarder and the monitor of one router process,
and what the endpoints ask of them. app.py builds one per app."""

from __future__ import annotations

import httpx
from fastapi.responses import Response

from tachyon.router.config import RouterConfig
from tachyon.router.disagg import open_disaggregated
from tachyon.router.metrics import RouterMetrics
from tachyon.router.monitor import CHECK_TIMEOUT_S, InstanceMonitor
from tachyon.router.policy import LeastOutstanding, create_policy
from tachyon.router.pool import InstancePool
from tachyon.router.upstream import RELAYED_HEADERS, Answer, Forwarder, NoInstanceLeft

CONNECT_TIMEOUT_S = 5.0


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.pools = _build_pools(config)
        self.instances = [i for pool in self.pools.values() for i in pool.instances]
        # no connection limits: the instances' own schedulers bound concurrency, not a pool here;
        # the read timeout is the longest wait for an instance's next bytes (a whole JSON answer)
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=httpx.Timeout(config.request_timeout, connect=CONNECT_TIMEOUT_S),
        )
        self.metrics = RouterMetrics(self.instances)
        self.forwarder = Forwarder(self.http, self.metrics)
        self.monitor = InstanceMonitor(self.http, self.instances, config.health_interval)

    async def close(self) -> None:
        await self.monitor.stop()
        await self.http.aclose()

    def can_serve(self) -> bool:
        """A healthy instance in each pool (replicas; or prefill and decode)."""
        return all(pool.can_serve() for pool in self.pools.values())

    async def open(self, path: str, body: dict, headers: dict[str, str]) -> Answer:
        if self.config.disaggregated:
            return await open_disaggregated(
                self.forwarder, self.pools["prefill"], self.pools["decode"], path, body, headers
            )
        return await self.forwarder.open(self.pools["replica"], path, body, headers)

    async def models(self, headers: dict[str, str]) -> Response:
        """GET /v1/models from the first instance that answers it, healthy ones first."""
        for instance in sorted(self.instances, key=lambda i: not i.healthy):
            try:
                r = await self.http.get(f"{instance.url}/v1/models", headers=headers, timeout=CHECK_TIMEOUT_S)
            except httpx.HTTPError:
                continue
            if r.status_code < 500:
                relayed = {k: v for k in RELAYED_HEADERS if (v := r.headers.get(k))}
                return Response(r.content, status_code=r.status_code, headers=relayed)
        raise NoInstanceLeft("no instance answered GET /v1/models")


def _build_pools(config: RouterConfig) -> dict[str, InstancePool]:
    """The --policy picks replicas, or prefill instances (whose prefix caches hold the prompts);
    decode instances always go by least-outstanding."""
    policy = create_policy(config.policy, config.prefix_chars, config.prefix_imbalance)
    if not config.disaggregated:
        return {"replica": InstancePool("replica", config.replicas, policy)}
    return {
        "prefill": InstancePool("prefill", config.prefill, policy),
        "decode": InstancePool("decode", config.decode, LeastOutstanding()),
    }
