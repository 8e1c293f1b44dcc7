"""A replica that dies (SIGKILL): the stream it was serving ends at once with an error event and
[DONE], later requests go to the survivor without failing, and the router reports it unhealthy."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.router.conftest import start_instances, start_router
from tests.server.conftest import scrape

LONG = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True, "temperature": 0}


async def _read_stream(http: httpx.AsyncClient, opened: asyncio.Event) -> list[str]:
    """The stream's data payloads; sets `opened` after the first one."""
    payloads = []
    async with http.stream("POST", "/v1/completions", json=LONG) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
                opened.set()
    return payloads


async def _victims_stream(router_url: str, victim) -> list[str]:
    """Opens one stream per replica (least-outstanding sends the second to the idle one), kills
    `victim`, and returns what the first stream to end got; the other is then left."""
    async with httpx.AsyncClient(base_url=router_url, timeout=30) as http:
        first_open, second_open = asyncio.Event(), asyncio.Event()
        streams = [asyncio.create_task(_read_stream(http, first_open))]
        await asyncio.wait_for(first_open.wait(), 30)
        streams.append(asyncio.create_task(_read_stream(http, second_open)))
        await asyncio.wait_for(second_open.wait(), 30)
        victim.proc.kill()
        done, pending = await asyncio.wait(streams, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert done, "no stream ended within 10 s of the kill"
        return done.pop().result()


def test_killed_replica_is_routed_around(replicas, shallow_model_dir):
    with start_instances(shallow_model_dir, 1) as (victim,):
        with start_router("--replica", replicas[0].url, victim.url, "--health-interval", "0.5") as router:
            payloads = asyncio.run(_victims_stream(router.url, victim))
            assert payloads[-1] == "[DONE]"
            assert json.loads(payloads[-2])["error"]["code"] == 502

            start = time.monotonic()
            for i in range(4):
                body = {"prompt": f"Request {i}", "max_tokens": 4}
                assert httpx.post(f"{router.url}/v1/completions", json=body, timeout=30).status_code == 200
            assert time.monotonic() - start < 10

            metrics = scrape(router.url)
            labels = f'{{instance="{victim.url}",role="replica"}}'
            assert metrics[f"tachyon_router:instance_healthy{labels}"] == 0
            assert metrics[f'tachyon_router:instance_healthy{{instance="{replicas[0].url}",role="replica"}}'] == 1
            assert httpx.get(f"{router.url}/health").status_code == 200
