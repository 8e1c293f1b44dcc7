"""Clients that leave: their requests are aborted and every KV block is free again within moments."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.server.conftest import scrape

LONG = {"prompt": "Tell me a long story about a dragon.", "max_tokens": 500, "ignore_eos": True, "temperature": 0.8}


def _wait_idle(base_url: str, timeout: float = 5.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(base_url)
        idle = metrics["tachyon:num_requests_running"] == 0 and metrics["tachyon:num_requests_waiting"] == 0
        if (idle and metrics["tachyon:kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def test_closing_32_streams_aborts_them_and_frees_the_cache(base_url):
    num_clients = 32
    streaming = 0  # clients that have read two chunks and keep their stream open

    async def open_and_leave(http: httpx.AsyncClient, i: int, all_streaming, leave) -> int:
        nonlocal streaming
        body = {**LONG, "stream": True, "seed": i}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data: ")
                if chunks == 2:
                    streaming += 1
                    if streaming == num_clients:
                        all_streaming.set()
                    await leave.wait()
                    return chunks
        return chunks

    async def main() -> list[int]:
        all_streaming, leave = asyncio.Event(), asyncio.Event()
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            tasks = [asyncio.create_task(open_and_leave(http, i, all_streaming, leave)) for i in range(num_clients)]
            await asyncio.wait_for(all_streaming.wait(), timeout=60)
            # every stream is open and none can be done (500 tokens): all 32 are in the engine
            busy = scrape(base_url)
            assert busy["tachyon:num_requests_running"] + busy["tachyon:num_requests_waiting"] == num_clients
            leave.set()
            return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [2] * num_clients
    metrics = _wait_idle(base_url)
    assert metrics["tachyon:num_requests_running"] == 0 and metrics["tachyon:num_requests_waiting"] == 0
    assert metrics["tachyon:kv_cache_usage_perc"] == 0


def test_non_streaming_client_that_gives_up_is_aborted(base_url):
    try:
        httpx.post(f"{base_url}/v1/completions", json=LONG, timeout=1.5)
        raise AssertionError("500 tokens cannot finish in 1.5 s")
    except httpx.TimeoutException:
        pass
    metrics = _wait_idle(base_url)
    assert metrics["tachyon:num_requests_running"] == 0 and metrics["tachyon:kv_cache_usage_perc"] == 0
