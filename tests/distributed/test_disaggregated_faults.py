"""Disaggregated serving when instances fail, with real processes behind a real router: every request
ends (an error, or a success computed on the decode side) within bounded time, and no KV block stays
allocated on the instances that survive."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.router.conftest import start_instances, start_router
from tests.server.conftest import ServerProcess, scrape

PROMPT = "The history of the Roman Empire is long and complicated, and historians disagree. " * 4 + "In short,"
BODY = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
TTL = 2.0


@pytest.fixture(scope="module")
def pair(shallow_model_dir):
    flags = ("--kv-transfer-timeout", str(TTL))
    with start_instances(shallow_model_dir, 2, ("--role", "prefill", *flags), ("--role", "decode", *flags)) as both:
        yield both


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def no_blocks_held(server: ServerProcess) -> bool:
    metrics = scrape(server.url)
    return metrics["tachyon:kv_cache_usage_perc"] == 0 and metrics.get("tachyon:kv_parked_blocks", 0) == 0


def prefill(server: ServerProcess) -> dict:
    body = {**BODY, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["kv_transfer_params"]


def test_kv_no_decode_instance_fetches_is_freed_after_the_timeout(pair):
    prefill_server, _ = pair
    prefill(prefill_server)
    assert scrape(prefill_server.url)["tachyon:kv_parked_blocks"] > 0
    assert wait_for(lambda: no_blocks_held(prefill_server), timeout=TTL + 5)


def test_a_stalled_prefill_instance_fails_the_request_in_bounded_time(pair):
    prefill_server, decode_server = pair
    with start_router("--prefill", prefill_server.url, "--decode", decode_server.url, "--request-timeout", "3") as r:
        os.kill(prefill_server.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            response = httpx.post(f"{r.url}/v1/completions", json=BODY, timeout=60)
            assert time.monotonic() - start < 20
            assert response.status_code >= 500 and "error" in response.json()
        finally:
            os.kill(prefill_server.proc.pid, signal.SIGCONT)
    assert no_blocks_held(decode_server) and scrape(decode_server.url)["tachyon:num_requests_running"] == 0
    assert wait_for(lambda: no_blocks_held(prefill_server), timeout=TTL + 5)


def test_a_decode_instance_killed_mid_stream_ends_the_stream_and_leaks_nothing(pair):
    prefill_server, decode_server = pair
    with start_router("--prefill", prefill_server.url, "--decode", decode_server.url) as router:
        body = {**BODY, "max_tokens": 400, "ignore_eos": True, "stream": True}
        events, start = [], time.monotonic()
        with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        decode_server.proc.kill()
        assert time.monotonic() - start < 30
    assert "error" in events[-1] and len(events) < 400
    assert wait_for(lambda: no_blocks_held(prefill_server), timeout=TTL + 5)


def test_prefill_instance_gone_before_the_fetch_decode_computes_the_prompt(pair, shallow_model_dir):
    prefill_server, _ = pair
    with start_instances(shallow_model_dir, 1, ("--role", "decode")) as (decode_server,):
        expected = httpx.post(f"{prefill_server.url}/v1/completions", json=BODY, timeout=60).json()  # plain run
        params = prefill(prefill_server)
        prefill_server.proc.kill()
        prefill_server.proc.wait(30)
        body = {**BODY, "kv_transfer_params": {**params, "do_remote_prefill": True}}
        got = httpx.post(f"{decode_server.url}/v1/completions", json=body, timeout=60).json()
        assert got["choices"][0]["text"] == expected["choices"][0]["text"]
        assert scrape(decode_server.url)["tachyon:kv_transfer_failures_total"] == 1
        assert wait_for(lambda: no_blocks_held(decode_server), timeout=5)
